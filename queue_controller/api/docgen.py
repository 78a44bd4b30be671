"""Field tables for docs/api-reference.md, generated from the same schemas as the CRDs.

The reference's prose is hand-written; the blocks between `<!-- BEGIN FIELDS: Kind -->` and
`<!-- END FIELDS: Kind -->` are regenerated, so every field, type, default and rule stays exact.
Run `python -m queue_controller.api.docgen docs/api-reference.md` after changing a model.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from queue_controller.api.crdgen import KINDS, openapi_schema
from queue_controller.api.validation import PATTERN_WORDS

_BLOCK = re.compile(r"(<!-- BEGIN FIELDS: (?P<kind>\w+) -->\n).*?(<!-- END FIELDS: (?P=kind) -->)", re.S)


def _type(node: dict[str, Any]) -> str:
    if node.get("x-kubernetes-int-or-string"):
        return "quantity"
    if node.get("x-kubernetes-preserve-unknown-fields"):
        return "PodTemplateSpec"
    t = node.get("type", "")
    if t == "array":
        return f"[]{_type(node['items'])}"
    if t == "object" and isinstance(node.get("additionalProperties"), dict):
        return f"map[string]{_type(node['additionalProperties'])}"
    if t == "string" and node.get("format") == "date-time":
        return "time (RFC 3339)"
    return str(t)


def _rules(node: dict[str, Any], required: bool) -> list[str]:
    out: list[str] = []
    if required:
        out.append("required")
    if "enum" in node:
        out.append("one of " + ", ".join(f"`{v}`" for v in node["enum"]))
    for key, words in (("minimum", "≥"), ("maximum", "≤"), ("minItems", "items ≥"), ("maxItems", "items ≤"),
                       ("minLength", "length ≥"), ("maxLength", "length ≤"), ("maxProperties", "entries ≤")):
        if key in node and not (key == "maxLength" and node.get("x-kubernetes-int-or-string")):
            out.append(f"{words} {node[key]}")
    if node.get("x-kubernetes-list-type") == "map":
        out.append("unique " + "/".join(f"`{k}`" for k in node["x-kubernetes-list-map-keys"]))
    if node.get("x-kubernetes-list-type") == "set":
        out.append("unique entries")
    if node.get("x-kubernetes-int-or-string"):
        out.append("non-negative" if node["pattern"].startswith("^\\+?") else "may be negative")
    elif "pattern" in node:
        out.append(PATTERN_WORDS.get(node["pattern"], f"pattern `{node['pattern']}`"))
    rules = list(node.get("x-kubernetes-validations", []))
    if node.get("type") == "array":  # rules on each item are stated once, on the list
        rules += node["items"].get("x-kubernetes-validations", [])
    out.extend(f"rule: {r['message']}" for r in rules)
    return out


def _rows(node: dict[str, Any], path: str, required: bool) -> Iterator[tuple[str, dict[str, Any], bool]]:
    yield path, node, required
    target = node.get("items") if node.get("type") == "array" else node
    if not isinstance(target, dict):
        return
    suffix = "[]" if target is not node else ""
    req = set(target.get("required", []))
    for name, sub in target.get("properties", {}).items():
        yield from _rows(sub, f"{path}{suffix}.{name}", name in req)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def field_table(kind: type[Any]) -> str:
    """Markdown table of every field of a kind's spec and status."""
    schema = openapi_schema(kind)
    lines = ["| Field | Type | Default | Meaning and validation |", "|---|---|---|---|"]
    top_required = set(schema.get("required", []))
    for top in ("spec", "status"):
        if top not in schema["properties"]:
            continue
        for path, node, required in _rows(schema["properties"][top], top, top in top_required):
            default = f"`{json.dumps(node['default'])}`" if "default" in node else ""
            desc = node.get("description", "")
            rules = _rules(node, required)
            text = desc + (" *(" + "; ".join(rules) + ")*" if rules else "")
            lines.append(f"| `{path}` | {_cell(_type(node))} | {_cell(default)} | {_cell(text)} |")
    return "\n".join(lines) + "\n"


def update_reference(text: str) -> str:
    """Regenerate every field block in the reference text."""
    kinds = {k.KIND: k for k in KINDS}

    def repl(m: re.Match[str]) -> str:
        return m.group(1) + field_table(kinds[m.group("kind")]) + m.group(3)

    return _BLOCK.sub(repl, text)


def main(argv: list[str]) -> int:
    path = Path(argv[1] if len(argv) > 1 else "docs/api-reference.md")
    path.write_text(update_reference(path.read_text()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))

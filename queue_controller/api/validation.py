"""Offline validation of manifests: the same rules the API server applies, with field paths.

`validate_object` gives `ckq`, the simulator and tests the errors that `kubectl apply` would give,
without a cluster: schema checks and cross-field rules (from the pydantic models, which mirror the
CRDs' CEL rules), unknown fields (as `kubectl --validate=strict` reports them), and, when the previous
version is given, the immutability rules.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import ValidationError

from queue_controller.api.checkpoint import MSG_SPEC_IMMUTABLE, Checkpoint
from queue_controller.api.common import (
    API_VERSION,
    CONDITION_REASON_PATTERN,
    CONDITION_TYPE_PATTERN,
    DNS_LABEL_PATTERN,
    DNS_SUBDOMAIN_PATTERN,
    RESOURCE_NAME_PATTERN,
    KubeObject,
)
from queue_controller.api.crdgen import KINDS, structural_schema
from queue_controller.api.job import INTERVAL_PATTERN, SIGNAL_PATTERN
from queue_controller.api.queues import MSG_CLUSTER_QUEUE_IMMUTABLE, LocalQueue

KIND_MODELS: dict[str, type[KubeObject]] = {k.KIND: k for k in KINDS}

# What each pattern allows, in words, so an error says what to write instead.
PATTERN_WORDS = {
    DNS_LABEL_PATTERN: "a lowercase RFC 1123 label: a-z, 0-9 and '-', starting and ending alphanumeric",
    DNS_SUBDOMAIN_PATTERN: "a lowercase RFC 1123 name: a-z, 0-9, '-' and '.', starting and ending "
    "alphanumeric",
    RESOURCE_NAME_PATTERN: 'a resource name such as "cpu", "memory" or "nvidia.com/gpu"',
    INTERVAL_PATTERN: '"auto" or a duration such as "30m", "1h30m", "90s"',
    SIGNAL_PATTERN: 'a signal name such as "SIGUSR1", or its number',
    CONDITION_TYPE_PATTERN: 'a CamelCase name such as "Admitted", optionally prefixed by "domain/"',
    CONDITION_REASON_PATTERN: 'a CamelCase reason such as "QuotaReserved"',
}

FieldError = tuple[str, str]


class InvalidObject(ValueError):
    """A manifest that the API server would refuse; `errors` lists `(field_path, message)`."""

    def __init__(self, kind: str, name: str | None, errors: Sequence[FieldError]) -> None:
        self.kind = kind
        self.name = name
        self.errors = list(errors)
        what = f"{kind} {name!r}" if name else kind or "object"
        lines = "\n".join(f"  {path or '<root>'}: {msg}" for path, msg in self.errors)
        super().__init__(f"{what} is invalid:\n{lines}")


def format_path(loc: Sequence[int | str]) -> str:
    """`('spec', 'podSets', 0, 'count')` -> `spec.podSets[0].count`."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _join(base: str, sub: str) -> str:
    if not sub:
        return base
    if not base:
        return sub
    return f"{base}{sub}" if sub.startswith("[") else f"{base}.{sub}"


def _message(err: Mapping[str, Any]) -> str:
    kind = err["type"]
    ctx = err.get("ctx") or {}
    if kind == "missing":
        return "required"
    if kind == "string_pattern_mismatch" and ctx.get("pattern") in PATTERN_WORDS:
        return f"invalid value {err['input']!r}: must be {PATTERN_WORDS[ctx['pattern']]}"
    if kind == "value_error":
        return str(ctx.get("error", err["msg"]))
    return str(err["msg"])


def pydantic_errors(exc: ValidationError) -> list[FieldError]:
    """Flatten a pydantic ValidationError into `(field_path, message)` pairs with wire field names."""
    out: list[FieldError] = []
    for err in exc.errors(include_url=False):
        base = format_path(err["loc"])
        ctx = err.get("ctx") or {}
        if err["type"] == "ckq_rule":
            out.extend((_join(base, sub), msg) for sub, msg in ctx["violations"])
        else:
            out.append((base, _message(err)))
    return out


def describe_errors(exc: ValidationError, prefix: str = "spec", limit: int = 3) -> str:
    """One line naming each invalid field (`spec.podSets[0].count: ...`), for a status message: what
    pydantic's own first line ("1 validation error for X") does not say."""
    errors = [(_join(prefix, path), msg) for path, msg in pydantic_errors(exc)]
    text = "; ".join(f"{path}: {msg}" for path, msg in errors[:limit])
    return text + (f" (and {len(errors) - limit} more)" if len(errors) > limit else "")


@functools.cache
def _schema(kind: str) -> dict[str, Any]:
    return structural_schema(KIND_MODELS[kind])


def unknown_fields(value: Any, schema: Mapping[str, Any], path: str = "") -> list[FieldError]:
    """Fields the schema does not declare (the API server would silently drop them)."""
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return []
    out: list[FieldError] = []
    if isinstance(value, Mapping) and schema.get("type") == "object":
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        for key, sub in value.items():
            sub_path = _join(path, str(key))
            if props is not None and key in props:
                out.extend(unknown_fields(sub, props[key], sub_path))
            elif isinstance(extra, Mapping):
                out.extend(unknown_fields(sub, extra, sub_path))
            elif props is not None:
                out.append((sub_path, f"unknown field {key!r}; known fields: {', '.join(props)}"))
    elif isinstance(value, list) and isinstance(schema.get("items"), Mapping):
        for i, item in enumerate(value):
            out.extend(unknown_fields(item, schema["items"], f"{path}[{i}]"))
    return out


def transition_errors(new: KubeObject, old: KubeObject) -> list[FieldError]:
    """Immutability rules (the CRDs' `oldSelf` rules) between two versions of one object."""
    if (
        isinstance(new, LocalQueue)
        and isinstance(old, LocalQueue)
        and new.spec.cluster_queue != old.spec.cluster_queue
    ):
        return [("spec.clusterQueue", MSG_CLUSTER_QUEUE_IMMUTABLE)]
    if isinstance(new, Checkpoint) and isinstance(old, Checkpoint) and new.spec != old.spec:
        return [("spec", MSG_SPEC_IMMUTABLE)]
    return []


def validate_object(
    obj: Mapping[str, Any], old: Mapping[str, Any] | None = None, *, allow_unknown_fields: bool = False
) -> KubeObject:
    """Parse a manifest into its model, or raise `InvalidObject` listing every problem with its path.

    Dispatches on apiVersion/kind. `old` (the stored version) enables the immutability checks.
    Unknown fields are errors unless `allow_unknown_fields` (the API server would prune them).
    """
    if not isinstance(obj, Mapping):
        raise InvalidObject("", None, [("", f"expected a mapping (an object), got {type(obj).__name__}")])
    kind = obj.get("kind")
    meta = obj.get("metadata")
    name = meta.get("name") if isinstance(meta, Mapping) else None
    if obj.get("apiVersion") != API_VERSION:
        raise InvalidObject(str(kind or ""), name, [("apiVersion", f"must be {API_VERSION!r}, got "
                                                    f"{obj.get('apiVersion')!r}")])
    if kind not in KIND_MODELS:
        raise InvalidObject(str(kind or ""), name, [("kind", f"must be one of {', '.join(KIND_MODELS)}, "
                                                    f"got {kind!r}")])
    model = KIND_MODELS[kind]
    errors: list[FieldError] = []
    if not allow_unknown_fields:
        errors.extend(e for e in unknown_fields(obj, _schema(kind)) if not e[0].startswith("metadata"))
    try:
        parsed = model.model_validate(obj)
    except ValidationError as exc:
        raise InvalidObject(kind, name, errors + pydantic_errors(exc)) from None
    if old is not None:
        errors.extend(transition_errors(parsed, model.model_validate(old)))
    if errors:
        raise InvalidObject(kind, name, errors)
    return parsed


def validate_documents(docs: Sequence[Mapping[str, Any]]) -> list[KubeObject]:
    """Validate several manifests, reporting every invalid one (errors are prefixed by document index)."""
    parsed: list[KubeObject] = []
    errors: list[FieldError] = []
    for i, doc in enumerate(docs):
        try:
            parsed.append(validate_object(doc))
        except InvalidObject as e:
            label = f"[{i}] {e.kind}/{e.name}" if e.name else f"[{i}] {e.kind}"
            errors.extend((f"{label} {p}", m) for p, m in e.errors)
    if errors:
        raise InvalidObject("documents", None, errors)
    return parsed

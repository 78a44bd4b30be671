"""The CRDs in crds/ are exactly what the models generate, and are valid structural schemas."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from queue_controller.api.crdgen import KINDS, crd, crd_filename, render_all
from queue_controller.cli import app

pytestmark = pytest.mark.unit

CRDS = Path(__file__).resolve().parents[2] / "crds"


def test_crds_dir_matches_models() -> None:
    wanted = render_all()
    have = {p.name for p in CRDS.glob("*.yaml")}
    assert have == set(wanted), "run `ckq crds` to regenerate crds/"
    for name, text in wanted.items():
        assert (CRDS / name).read_text() == text, f"crds/{name} is stale: run `ckq crds`"


def test_chart_admission_policy_matches() -> None:
    from queue_controller.api import admission

    chart = CRDS.parent / "helm" / "ckq" / "templates" / admission.FILENAME
    assert chart.read_text() == admission.render(), f"{chart} is stale: run `ckq crds`"
    assert (CRDS / admission.FILENAME).read_text() == admission.render()


def test_cli_check_passes_on_repo_and_fails_on_drift(tmp_path: Path) -> None:
    runner = CliRunner()
    assert runner.invoke(app, ["crds", "--check", "--out", str(CRDS)]).exit_code == 0
    out = tmp_path / "crds"
    result = runner.invoke(app, ["crds", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == sorted(render_all())
    (out / "ckq.io_checkpoints.yaml").write_text("changed\n")
    (out / "ckq.io_localqueues.yaml").unlink()
    result = runner.invoke(app, ["crds", "--check", "--out", str(out)])
    assert result.exit_code == 1
    assert "differs:" in result.output and "missing:" in result.output


def test_one_crd_per_file_with_expected_names() -> None:
    assert crd_filename(KINDS[3]) == "ckq.io_checkpointablejobs.yaml"
    for kind in KINDS:
        docs = [d for d in yaml.safe_load_all(render_all()[crd_filename(kind)]) if d]
        assert len(docs) == 1
        names = docs[0]["spec"]["names"]
        assert docs[0]["metadata"]["name"] == f"{names['plural']}.ckq.io"
        assert docs[0]["spec"]["group"] == "ckq.io"
        assert docs[0]["spec"]["versions"][0]["name"] == "v1alpha1"
        assert "ckq" in names["categories"]


def test_short_names_and_scopes() -> None:
    by_kind = {k.KIND: crd(k)["spec"] for k in KINDS}
    assert "cjob" in by_kind["CheckpointableJob"]["names"]["shortNames"]
    assert "ckpt" in by_kind["Checkpoint"]["names"]["shortNames"]
    assert "cq" in by_kind["ClusterQueue"]["names"]["shortNames"]
    assert "lq" in by_kind["LocalQueue"]["names"]["shortNames"]
    assert "rf" in by_kind["ResourceFlavor"]["names"]["shortNames"]
    assert {k: s["scope"] for k, s in by_kind.items()} == {
        "ResourceFlavor": "Cluster", "ClusterQueue": "Cluster", "LocalQueue": "Namespaced",
        "CheckpointableJob": "Namespaced", "Checkpoint": "Namespaced",
    }


def test_cjob_printer_columns() -> None:
    version = crd(KINDS[3])["spec"]["versions"][0]
    default_cols = [c["name"] for c in version["additionalPrinterColumns"] if not c.get("priority")]
    assert default_cols == ["Queue", "Phase", "Priority", "Reason", "Checkpoints", "Age"]
    assert version["subresources"] == {"status": {}}


def test_every_kind_has_printer_columns_beyond_age() -> None:
    # `kubectl get cjob,ckpt,cq,lq,rf` is useful without the CLI: every kind shows more than its age.
    for kind in KINDS:
        cols = crd(kind)["spec"]["versions"][0]["additionalPrinterColumns"]
        assert [c["name"] for c in cols if not c.get("priority")][-1] == "Age", kind.KIND
        assert len([c for c in cols if not c.get("priority")]) >= 2, kind.KIND


def _schema_path_exists(schema: dict[str, Any], json_path: str) -> bool:
    node = schema
    for part in json_path.lstrip(".").split("."):
        if part == "metadata":
            return True  # metadata is the API server's; creationTimestamp always exists
        props = node.get("properties", {})
        if part not in props:
            return False
        node = props[part]
    return True


def test_printer_columns_point_at_schema_fields() -> None:
    for kind in KINDS:
        version = crd(kind)["spec"]["versions"][0]
        schema = version["schema"]["openAPIV3Schema"]
        for col in version.get("additionalPrinterColumns", []):
            assert col["jsonPath"].startswith("."), col
            assert _schema_path_exists(schema, col["jsonPath"]), (kind.KIND, col)
            assert col["type"] in {"integer", "number", "string", "boolean", "date"}


def _walk(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, node
    for name, sub in node.get("properties", {}).items():
        yield from _walk(sub, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from _walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _walk(node["additionalProperties"], f"{path}{{}}")


@pytest.mark.parametrize("kind", KINDS, ids=[k.KIND for k in KINDS])
def test_schema_is_structural(kind: Any) -> None:
    """The rules of https://kubernetes.io/docs/tasks/extend-kubernetes/custom-resources/
    custom-resource-definitions/#specifying-a-structural-schema that a pydantic schema could break."""
    schema = crd(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    assert schema["type"] == "object"
    assert schema["properties"]["metadata"] == {"type": "object"}
    for path, node in _walk(schema):
        for banned in ("$ref", "$defs", "oneOf", "allOf", "not", "title", "nullable", "const"):
            assert banned not in node, f"{path}: {banned}"
        if node.get("x-kubernetes-int-or-string"):
            assert node["anyOf"] == [{"type": "integer"}, {"type": "string"}], path
            assert "type" not in node and "pattern" in node, path
            continue
        assert "anyOf" not in node, path
        if node.get("x-kubernetes-preserve-unknown-fields"):
            assert node.get("type") == "object", path
            continue
        assert node.get("type") in {"object", "array", "string", "integer", "number", "boolean"}, path
        if node["type"] == "object" and path != ".metadata":
            assert not ("properties" in node and "additionalProperties" in node), path
            assert "properties" in node or isinstance(node.get("additionalProperties"), dict), path
            for req in node.get("required", []):
                assert req in node.get("properties", {}), f"{path}: required {req} undeclared"
        if node["type"] == "array":
            assert isinstance(node.get("items"), dict), path
        if "default" in node:
            assert isinstance(node["default"], str | int | float | bool), path
        if node.get("x-kubernetes-list-type") == "map":
            item = node["items"]
            for key in node["x-kubernetes-list-map-keys"]:
                # A map key must always be present: required, or defaulted.
                assert key in item.get("required", []) or "default" in item["properties"][key], path


@pytest.mark.parametrize("kind", KINDS, ids=[k.KIND for k in KINDS])
def test_lists_under_cel_rules_are_bounded(kind: Any) -> None:
    """The CEL cost estimator needs maxItems on every list and maxLength on every string a rule sees."""
    schema = crd(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for path, node in _walk(schema):
        if "x-kubernetes-validations" not in node:
            continue
        if path == "" and all(r["rule"].replace("self.metadata.name", "").find("self.") < 0
                              for r in node["x-kubernetes-validations"]):
            continue  # root rules on metadata.name alone: the estimator costs what a rule reads, O(1) here
        for sub_path, sub in _walk(node, path):
            if sub.get("type") == "array":
                assert "maxItems" in sub, sub_path
            if sub.get("type") == "string" and "enum" not in sub and "format" not in sub:
                assert "maxLength" in sub, sub_path


def test_cel_rules_have_messages() -> None:
    rules = 0
    for kind in KINDS:
        schema = crd(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        for path, node in _walk(schema):
            for rule in node.get("x-kubernetes-validations", []):
                rules += 1
                assert rule["rule"] and rule["message"], path
    assert rules >= 10


def test_quantity_rules_use_cel_quantity_library() -> None:
    text = str(crd(KINDS[1]))
    assert "quantity(string(self.lendingLimit)).compareTo(quantity(string(self.nominalQuota))) <= 0" in text

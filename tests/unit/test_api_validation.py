"""Every validation rule, offline (pydantic) — the same rules the CRDs state as schema and CEL.

`RULE_CASES` is plain data so the same cases can be replayed against a real API server's validators.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import yaml

from queue_controller.api import (
    Checkpoint,
    CheckpointableJob,
    ClusterQueue,
    InvalidObject,
    LocalQueue,
    ResourceFlavor,
    validate_documents,
    validate_object,
)

pytestmark = pytest.mark.unit

SAMPLES = Path(__file__).resolve().parents[2] / "config" / "samples"
V = "ckq.io/v1alpha1"


def cluster_queue(cohort: str | None = "ml") -> dict[str, Any]:
    spec: dict[str, Any] = {
        "resourceGroups": [
            {
                "coveredResources": ["cpu", "nvidia.com/gpu"],
                "flavors": [
                    {"name": "h100", "resources": [
                        {"name": "cpu", "nominalQuota": 64},
                        {"name": "nvidia.com/gpu", "nominalQuota": 8, "borrowingLimit": 4, "lendingLimit": 4},
                    ]},
                    {"name": "a100", "resources": [
                        {"name": "cpu", "nominalQuota": "32"},
                        {"name": "nvidia.com/gpu", "nominalQuota": "4"},
                    ]},
                ],
            },
            {"coveredResources": ["memory"], "flavors": [
                {"name": "default", "resources": [{"name": "memory", "nominalQuota": "512Gi"}]},
            ]},
        ]
    }
    if cohort:
        spec["cohort"] = cohort
    return {"apiVersion": V, "kind": "ClusterQueue", "metadata": {"name": "cq"}, "spec": spec}


def job() -> dict[str, Any]:
    return {
        "apiVersion": V, "kind": "CheckpointableJob", "metadata": {"name": "j", "namespace": "ns"},
        "spec": {
            "queueName": "team-a",
            "priority": 10,
            "checkpoint": {"mode": "CRIU", "interval": "30m"},
            "podSets": [
                {"name": "workers", "count": 2, "template": {"spec": {"containers": [
                    {"name": "c", "image": "img", "resources": {"requests": {"cpu": "1"}}}]}}},
                {"name": "driver", "template": {"spec": {"containers": [{"name": "c", "image": "img"}]}}},
            ],
        },
    }


def local_queue(cq: str = "cq") -> dict[str, Any]:
    return {"apiVersion": V, "kind": "LocalQueue", "metadata": {"name": "lq", "namespace": "ns"},
            "spec": {"clusterQueue": cq}}


def checkpoint(reason: str = "Periodic") -> dict[str, Any]:
    return {"apiVersion": V, "kind": "Checkpoint", "metadata": {"name": "c1", "namespace": "ns"},
            "spec": {"jobName": "j", "reason": reason}}


def flavor() -> dict[str, Any]:
    return {"apiVersion": V, "kind": "ResourceFlavor", "metadata": {"name": "h100"},
            "spec": {"nodeLabels": {"gpu": "h100"}}}


def edit(obj: dict[str, Any], fn: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    out = copy.deepcopy(obj)
    fn(out)
    return out


def _res(o: dict[str, Any], g: int = 0, f: int = 0) -> list[dict[str, Any]]:
    return o["spec"]["resourceGroups"][g]["flavors"][f]["resources"]  # type: ignore[no-any-return]


class Case(NamedTuple):
    obj: dict[str, Any]
    path: str
    fragment: str
    old: dict[str, Any] | None = None
    server_rejects: bool = True  # False: the API server prunes it silently (only offline is strict)


RULE_CASES: dict[str, Case] = {
    "borrowing-limit-needs-cohort": Case(
        cluster_queue(cohort=None) | {},
        "spec.resourceGroups[0].flavors[0].resources[1].borrowingLimit", "only when spec.cohort is set"),
    "lending-limit-needs-cohort": Case(
        edit(cluster_queue(cohort=None), lambda o: _res(o)[1].pop("borrowingLimit")),
        "spec.resourceGroups[0].flavors[0].resources[1].lendingLimit", "only when spec.cohort is set"),
    "lending-limit-le-nominal-quota": Case(
        edit(cluster_queue(), lambda o: _res(o)[1].update(lendingLimit="9")),
        "spec.resourceGroups[0].flavors[0].resources[1].lendingLimit", "less than or equal to nominalQuota"),
    "flavor-names-unique-in-group": Case(
        edit(cluster_queue(), lambda o: o["spec"]["resourceGroups"][0]["flavors"][1].update(name="h100")),
        "spec.resourceGroups[0].flavors[1].name", "unique"),
    "flavor-resources-match-covered": Case(
        edit(cluster_queue(), lambda o: _res(o, 0, 1).pop()),
        "spec.resourceGroups[0].flavors[1].resources", "exactly the resources in coveredResources"),
    "flavor-resource-not-covered": Case(
        edit(cluster_queue(), lambda o: _res(o, 0, 1)[1].update(name="memory")),
        "spec.resourceGroups[0].flavors[1].resources", "exactly the resources in coveredResources"),
    "resource-names-unique-in-flavor": Case(
        edit(cluster_queue(), lambda o: _res(o, 0, 1)[1].update(name="cpu")),
        "spec.resourceGroups[0].flavors[1].resources[1].name", "unique"),
    "covered-resource-in-one-group": Case(
        edit(cluster_queue(), lambda o: (o["spec"]["resourceGroups"][1]["coveredResources"].append("cpu"),
                                         _res(o, 1, 0).append({"name": "cpu", "nominalQuota": 1}))),
        "spec.resourceGroups[1].coveredResources[1]", "only one resource group"),
    "flavor-in-one-group": Case(
        edit(cluster_queue(), lambda o: o["spec"]["resourceGroups"][1]["flavors"][0].update(name="h100")),
        "spec.resourceGroups[1].flavors[0].name", "only one resource group"),
    "quantity-format": Case(
        edit(cluster_queue(), lambda o: _res(o)[0].update(nominalQuota="64 cores")),
        "spec.resourceGroups[0].flavors[0].resources[0].nominalQuota", "500m"),
    "quantity-nonnegative": Case(
        edit(cluster_queue(), lambda o: _res(o)[0].update(nominalQuota="-1")),
        "spec.resourceGroups[0].flavors[0].resources[0].nominalQuota", "negative"),
    "quantity-fractional-number": Case(
        edit(cluster_queue(), lambda o: _res(o)[0].update(nominalQuota=1.5)),
        "spec.resourceGroups[0].flavors[0].resources[0].nominalQuota", "as strings"),
    "queueing-strategy-enum": Case(
        edit(cluster_queue(), lambda o: o["spec"].update(queueingStrategy="FIFO")),
        "spec.queueingStrategy", "BestEffortFIFO"),
    "preemption-enum": Case(
        edit(cluster_queue(), lambda o: o["spec"].update(preemption={"withinClusterQueue": "Always"})),
        "spec.preemption.withinClusterQueue", "LowerPriority"),
    "cohort-name": Case(
        edit(cluster_queue(), lambda o: o["spec"].update(cohort="ML_Team")),
        "spec.cohort", "RFC 1123"),
    "local-queue-cluster-queue-required": Case(
        edit(local_queue(), lambda o: o["spec"].pop("clusterQueue")), "spec.clusterQueue", "required"),
    "local-queue-cluster-queue-immutable": Case(
        local_queue("other"), "spec.clusterQueue", "immutable", old=local_queue("cq")),
    "pod-set-names-unique": Case(
        edit(job(), lambda o: o["spec"]["podSets"][1].update(name="workers")),
        "spec.podSets[1].name", "unique"),
    "pod-set-count-at-least-one": Case(
        edit(job(), lambda o: o["spec"]["podSets"][0].update(count=0)), "spec.podSets[0].count", "1"),
    "pod-sets-required": Case(
        edit(job(), lambda o: o["spec"].update(podSets=[])), "spec.podSets", "1"),
    "queue-name-required": Case(edit(job(), lambda o: o["spec"].pop("queueName")), "spec.queueName", "required"),
    "priority-xor-priority-class": Case(
        edit(job(), lambda o: o["spec"].update(priorityClassName="high")), "spec.priority", "at most one"),
    "checkpoint-mode-enum": Case(
        edit(job(), lambda o: o["spec"]["checkpoint"].update(mode="Snapshot")),
        "spec.checkpoint.mode", "CRIU"),
    "checkpoint-interval-format": Case(
        edit(job(), lambda o: o["spec"]["checkpoint"].update(interval="30 minutes")),
        "spec.checkpoint.interval", '"30m"'),
    "checkpoint-interval-positive": Case(
        edit(job(), lambda o: o["spec"]["checkpoint"].update(interval="0m")),
        "spec.checkpoint.interval", "positive"),
    "checkpoint-interval-needs-mode": Case(
        edit(job(), lambda o: o["spec"]["checkpoint"].update(mode="None")),
        "spec.checkpoint.interval", "mode other than None"),
    "checkpoint-signal-needs-signal-mode": Case(
        edit(job(), lambda o: o["spec"]["checkpoint"].update(signal="SIGUSR1")),
        "spec.checkpoint.signal", "only when mode is Signal"),
    "checkpoint-retain-at-least-one": Case(
        edit(job(), lambda o: o["spec"]["checkpoint"].update(retain=0)), "spec.checkpoint.retain", "1"),
    "checkpoint-reason-enum": Case(checkpoint("Boredom"), "spec.reason", "Preemption"),
    "checkpoint-spec-immutable": Case(
        checkpoint("User"), "spec", "immutable", old=checkpoint("Periodic")),
    "flavor-node-labels-at-most-8": Case(
        edit(flavor(), lambda o: o["spec"].update(nodeLabels={f"k{i}": "v" for i in range(9)})),
        "spec.nodeLabels", "8"),
    "flavor-taint-effect-enum": Case(
        edit(flavor(), lambda o: o["spec"].update(nodeTaints=[{"key": "k", "effect": "Evict"}])),
        "spec.nodeTaints[0].effect", "NoSchedule"),
    "unknown-field": Case(
        edit(job(), lambda o: o["spec"].update(queue="x")), "spec.queue", "unknown field", server_rejects=False),
}


@pytest.mark.parametrize("rule", list(RULE_CASES))
def test_rule(rule: str) -> None:
    case = RULE_CASES[rule]
    with pytest.raises(InvalidObject) as info:
        validate_object(case.obj, old=case.old)
    paths = [p for p, _ in info.value.errors]
    assert case.path in paths, info.value
    message = dict(info.value.errors)[case.path]
    assert case.fragment in message, message


def test_base_objects_are_valid() -> None:
    assert isinstance(validate_object(cluster_queue()), ClusterQueue)
    assert isinstance(validate_object(job()), CheckpointableJob)
    assert isinstance(validate_object(local_queue(), old=local_queue()), LocalQueue)
    assert isinstance(validate_object(checkpoint(), old=checkpoint()), Checkpoint)
    assert isinstance(validate_object(flavor()), ResourceFlavor)


def test_error_string_names_kind_object_and_field() -> None:
    with pytest.raises(InvalidObject) as info:
        validate_object(RULE_CASES["lending-limit-le-nominal-quota"].obj)
    text = str(info.value)
    assert "ClusterQueue 'cq' is invalid" in text
    assert "spec.resourceGroups[0].flavors[0].resources[1].lendingLimit" in text


def test_wrong_api_version_and_kind() -> None:
    with pytest.raises(InvalidObject, match="apiVersion"):
        validate_object({**job(), "apiVersion": "batch/v1"})
    with pytest.raises(InvalidObject, match="must be one of"):
        validate_object({**job(), "kind": "Workload"})


def test_unknown_fields_may_be_allowed() -> None:
    obj = RULE_CASES["unknown-field"].obj
    assert validate_object(obj, allow_unknown_fields=True).spec.queue_name == "team-a"  # type: ignore[attr-defined]


def test_template_unknown_fields_are_kept() -> None:
    obj = edit(job(), lambda o: o["spec"]["podSets"][0]["template"]["spec"].update(
        volumes=[{"name": "v", "emptyDir": {}}], schedulerName="x"))
    parsed = validate_object(obj)
    wire = parsed.to_wire()
    assert wire["spec"]["podSets"][0]["template"] == obj["spec"]["podSets"][0]["template"]


def test_several_errors_are_all_reported() -> None:
    obj = edit(job(), lambda o: (o["spec"].update(priorityClassName="x"),
                                 o["spec"]["podSets"][1].update(name="workers")))
    with pytest.raises(InvalidObject) as info:
        validate_object(obj)
    assert {p for p, _ in info.value.errors} == {"spec.priority", "spec.podSets[1].name"}


def _sample_documents() -> list[tuple[str, dict[str, Any]]]:
    docs = []
    for path in sorted(SAMPLES.glob("*.yaml")):
        docs.extend((path.name, d) for d in yaml.safe_load_all(path.read_text()) if d)
    return docs


def test_samples_exist_for_every_kind() -> None:
    kinds = {d["kind"] for _, d in _sample_documents()}
    assert kinds == {"ResourceFlavor", "ClusterQueue", "LocalQueue", "CheckpointableJob", "Checkpoint"}


@pytest.mark.parametrize(("name", "doc"), _sample_documents(),
                         ids=[f"{n}:{d['metadata']['name']}" for n, d in _sample_documents()])
def test_sample_is_valid(name: str, doc: dict[str, Any]) -> None:
    validate_object(doc)


def test_samples_are_consistent() -> None:
    """LocalQueues point at sample ClusterQueues, jobs at sample LocalQueues, flavors exist."""
    objs = validate_documents([d for _, d in _sample_documents()])
    flavors = {o.metadata.name for o in objs if isinstance(o, ResourceFlavor)}
    cqs = {o.metadata.name: o for o in objs if isinstance(o, ClusterQueue)}
    lqs = {(o.metadata.namespace, o.metadata.name): o for o in objs if isinstance(o, LocalQueue)}
    for cq in cqs.values():
        for g in cq.spec.resource_groups:
            assert {f.name for f in g.flavors} <= flavors
    for lq in lqs.values():
        assert lq.spec.cluster_queue in cqs
    for o in objs:
        if isinstance(o, CheckpointableJob):
            assert (o.metadata.namespace, o.spec.queue_name) in lqs


def _quota_pair(nominal: object, lending: object) -> dict[str, Any]:
    return edit(cluster_queue(), lambda o: _res(o)[1].update(nominalQuota=nominal, lendingLimit=lending))


# Quantities compare by value across units and int/string forms, as CEL's quantity() does.
QUOTA_COMPARISONS: list[tuple[object, object, bool]] = [
    ("1Gi", "1024Mi", True), ("1Gi", "1025Mi", False), (8, "8", True), (8, "8001m", False),
    ("1e3", "1k", True), ("500m", "0.5", True), ("2", 3, False), (0, 0, True),
]


@pytest.mark.parametrize(("nominal", "lending", "ok"), QUOTA_COMPARISONS)
def test_lending_limit_compares_values_not_strings(nominal: object, lending: object, ok: bool) -> None:
    obj = _quota_pair(nominal, lending)
    if ok:
        validate_object(obj)
    else:
        with pytest.raises(InvalidObject, match="less than or equal to nominalQuota"):
            validate_object(obj)


def test_a_job_name_longer_than_a_label_value_is_refused() -> None:
    """Issue 14: names of 64+ characters were accepted, and only the job's pods (labelled with the name)
    failed later. The CRD's root CEL rule and the model say the same."""
    long = {**job(), "metadata": {**job()["metadata"], "name": "x" * 64}}
    with pytest.raises(InvalidObject, match=r"metadata\.name of a CheckpointableJob must be at most 63 characters"):
        validate_object(long)
    assert isinstance(validate_object({**job(), "metadata": {**job()["metadata"], "name": "x" * 63}}),
                      CheckpointableJob)
    from queue_controller.api.crdgen import openapi_schema
    (rule,) = openapi_schema(CheckpointableJob)["x-kubernetes-validations"]
    assert rule["rule"] == "!has(self.metadata.name) || size(self.metadata.name) <= 63"

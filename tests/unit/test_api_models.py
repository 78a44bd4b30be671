"""Model behaviour: wire format, pod resource accounting, conditions, selectors, tolerations."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from queue_controller.api import (
    CheckpointableJob,
    CheckpointPolicy,
    ClusterQueue,
    Condition,
    LabelSelector,
    PodSet,
    Taint,
    Toleration,
    find_condition,
    parse_duration,
    set_condition,
    to_milli,
    validate_object,
)

pytestmark = pytest.mark.unit


def pod_set(spec: dict[str, Any], count: int = 1) -> PodSet:
    return PodSet.model_validate({"name": "p", "count": count, "template": {"spec": spec}})


def c(name: str, requests: dict[str, Any] | None = None, limits: dict[str, Any] | None = None,
      **extra: Any) -> dict[str, Any]:
    res: dict[str, Any] = {}
    if requests is not None:
        res["requests"] = requests
    if limits is not None:
        res["limits"] = limits
    return {"name": name, "image": "img", "resources": res, **extra}


def test_pod_requests_sum_containers() -> None:
    ps = pod_set({"containers": [c("a", {"cpu": "500m", "memory": "1Gi"}), c("b", {"cpu": 1.5})]})
    assert ps.pod_requests_milli() == {"cpu": 2000, "memory": to_milli("1Gi")}


def test_pod_requests_limits_default_missing_requests() -> None:
    ps = pod_set({"containers": [c("a", {"cpu": "1"}, {"cpu": "4", "nvidia.com/gpu": 2})]})
    # The request wins where present; the limit stands in where the request is missing.
    assert ps.pod_requests_milli() == {"cpu": 1000, "nvidia.com/gpu": 2000}


def test_pod_requests_max_with_init_containers() -> None:
    ps = pod_set({
        "initContainers": [c("init", {"cpu": "4", "memory": "1Gi"})],
        "containers": [c("a", {"cpu": "1", "memory": "2Gi"})],
    })
    assert ps.pod_requests_milli() == {"cpu": 4000, "memory": to_milli("2Gi")}


def test_pod_requests_sidecars_run_beside_everything_after_them() -> None:
    ps = pod_set({
        "initContainers": [
            c("sidecar", {"cpu": "1"}, restartPolicy="Always"),
            c("init", {"cpu": "3"}),
        ],
        "containers": [c("a", {"cpu": "2"})],
    })
    # init peak = sidecar 1 + init 3 = 4; steady state = app 2 + sidecar 1 = 3.
    assert ps.pod_requests_milli() == {"cpu": 4000}


def test_pod_requests_init_before_sidecar_does_not_include_it() -> None:
    ps = pod_set({
        "initContainers": [c("init", {"cpu": "3"}), c("sidecar", {"cpu": "1"}, restartPolicy="Always")],
        "containers": [c("a", {"cpu": "1"})],
    })
    assert ps.pod_requests_milli() == {"cpu": 3000}


def test_pod_requests_overhead_added() -> None:
    ps = pod_set({"containers": [c("a", {"cpu": "1"})], "overhead": {"cpu": "250m", "memory": "120Mi"}})
    assert ps.pod_requests_milli() == {"cpu": 1250, "memory": to_milli("120Mi")}


def test_pod_level_resources_override_cpu_and_memory() -> None:
    ps = pod_set({
        "resources": {"requests": {"cpu": "8"}, "limits": {"memory": "4Gi"}},
        "containers": [c("a", {"cpu": "1", "memory": "1Gi", "nvidia.com/gpu": 1})],
    })
    assert ps.pod_requests_milli() == {"cpu": 8000, "memory": to_milli("4Gi"), "nvidia.com/gpu": 1000}


def test_total_requests_scale_with_count() -> None:
    ps = pod_set({"containers": [c("a", {"cpu": "100m"})]}, count=10)
    assert ps.total_requests_milli() == {"cpu": 1000}


def test_placement_fields_parsed_and_passed_through() -> None:
    affinity = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": []}}}
    ps = pod_set({
        "containers": [c("a")],
        "nodeSelector": {"gpu": "h100"},
        "tolerations": [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "affinity": affinity,
    })
    spec = ps.template.spec
    assert spec.node_selector == {"gpu": "h100"}
    assert spec.tolerations[0].tolerates(Taint(key="gpu", value="x", effect="NoSchedule"))
    assert spec.affinity == affinity


def test_template_needs_a_container() -> None:
    with pytest.raises(ValueError, match="containers"):
        pod_set({"containers": []})


def test_wire_format_is_camel_case_and_python_is_snake_case() -> None:
    job = CheckpointableJob.model_validate({
        "metadata": {"name": "j", "namespace": "n"},
        "spec": {"queueName": "q", "podSets": [{"template": {"spec": {"containers": [c("a")]}}}],
                 "runtimeEstimateSeconds": 60},
    })
    assert job.spec.queue_name == "q" and job.spec.runtime_estimate_seconds == 60
    assert job.spec.pod_sets[0].name == "main"  # Kueue's default pod set name
    wire = job.to_wire()
    assert wire["apiVersion"] == "ckq.io/v1alpha1" and wire["kind"] == "CheckpointableJob"
    assert wire["spec"]["queueName"] == "q" and "queue_name" not in wire["spec"]
    assert "status" not in wire
    # Empty metadata collections are left out so patches never wipe ownerReferences/finalizers.
    assert wire["metadata"] == {"name": "j", "namespace": "n"}
    # Python names are accepted too (populate_by_name).
    again = CheckpointableJob.model_validate({"metadata": {"name": "j"}, "spec": {
        "queue_name": "q", "pod_sets": [{"template": {"spec": {"containers": [c("a")]}}}]}})
    assert again.spec.queue_name == "q"


def test_round_trip_through_wire_is_stable() -> None:
    obj = {
        "apiVersion": "ckq.io/v1alpha1", "kind": "ClusterQueue", "metadata": {"name": "cq"},
        "spec": {"cohort": "ml", "resourceGroups": [{"coveredResources": ["cpu"], "flavors": [
            {"name": "f", "resources": [{"name": "cpu", "nominalQuota": "500m", "lendingLimit": 0}]}]}]},
        "status": {"pendingWorkloads": 2, "flavorsUsage": [
            {"name": "f", "resources": [{"name": "cpu", "total": "250m", "borrowed": 0}]}]},
    }
    cq = validate_object(obj)
    assert isinstance(cq, ClusterQueue)
    assert validate_object(cq.to_wire()).to_wire() == cq.to_wire()
    assert cq.to_wire()["spec"]["resourceGroups"][0]["flavors"][0]["resources"][0]["nominalQuota"] == "500m"


def test_time_is_utc_rfc3339_on_the_wire() -> None:
    t = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC) + timedelta(microseconds=7)
    cond = Condition(type="Admitted", status="True", reason="Admitted", last_transition_time=t)
    assert cond.to_wire()["lastTransitionTime"] == "2026-01-02T03:04:05Z"
    parsed = Condition.model_validate(cond.to_wire())
    assert parsed.last_transition_time.tzinfo is not None


def test_set_condition_moves_transition_time_only_on_status_change() -> None:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    t1 = t0 + timedelta(minutes=5)
    conds: list[Condition] = []
    assert set_condition(conds, "Admitted", "False", "Pending", "waiting", t0)
    assert not set_condition(conds, "Admitted", "False", "Pending", "waiting", t1)
    assert set_condition(conds, "Admitted", "False", "Pending", "still waiting", t1)
    assert conds[0].last_transition_time == t0
    assert set_condition(conds, "Admitted", "True", "QuotaReserved", "", t1)
    cond = find_condition(conds, "Admitted")
    assert cond is not None and cond.last_transition_time == t1 and len(conds) == 1
    assert find_condition(conds, "Finished") is None


@pytest.mark.parametrize(
    ("selector", "labels", "matches"),
    [
        ({}, {"a": "1"}, True),
        ({"matchLabels": {"a": "1"}}, {"a": "1", "b": "2"}, True),
        ({"matchLabels": {"a": "1"}}, {"a": "2"}, False),
        ({"matchExpressions": [{"key": "a", "operator": "In", "values": ["1", "2"]}]}, {"a": "2"}, True),
        ({"matchExpressions": [{"key": "a", "operator": "NotIn", "values": ["1"]}]}, {}, True),
        ({"matchExpressions": [{"key": "a", "operator": "Exists"}]}, {}, False),
        ({"matchExpressions": [{"key": "a", "operator": "DoesNotExist"}]}, {}, True),
    ],
)
def test_label_selector(selector: dict[str, Any], labels: dict[str, str], matches: bool) -> None:
    assert LabelSelector.model_validate(selector).matches(labels) is matches


@pytest.mark.parametrize(
    ("toleration", "taint", "tolerates"),
    [
        ({"operator": "Exists"}, {"key": "k", "effect": "NoExecute"}, True),
        ({"key": "k", "operator": "Exists"}, {"key": "k", "value": "v", "effect": "NoSchedule"}, True),
        ({"key": "k", "value": "v"}, {"key": "k", "value": "v", "effect": "NoSchedule"}, True),
        ({"key": "k", "value": "w"}, {"key": "k", "value": "v", "effect": "NoSchedule"}, False),
        ({"key": "k", "operator": "Exists", "effect": "NoExecute"}, {"key": "k", "effect": "NoSchedule"}, False),
    ],
)
def test_toleration(toleration: dict[str, Any], taint: dict[str, Any], tolerates: bool) -> None:
    assert Toleration.model_validate(toleration).tolerates(Taint.model_validate(taint)) is tolerates


def test_durations() -> None:
    assert parse_duration("1h30m") == 5400
    assert parse_duration("90s") == 90
    assert parse_duration("1.5h") == 5400
    assert parse_duration("250ms") == 0.25
    with pytest.raises(ValueError, match="30m"):
        parse_duration("30 minutes")
    assert CheckpointPolicy(interval="30m").interval_seconds() == 1800
    assert CheckpointPolicy(interval="auto").interval_seconds() == "auto"
    assert CheckpointPolicy().interval_seconds() is None


def test_checkpoint_policy_defaults() -> None:
    p = CheckpointPolicy()
    assert (p.mode, p.retain, p.timeout_seconds, p.signal) == ("CRIU", 3, 600, None)


def test_quota_helpers_in_milli_units() -> None:
    cq = ClusterQueue.model_validate({"metadata": {"name": "cq"}, "spec": {"cohort": "c", "resourceGroups": [
        {"coveredResources": ["cpu", "nvidia.com/gpu"], "flavors": [{"name": "h100", "resources": [
            {"name": "cpu", "nominalQuota": "1.5"},
            {"name": "nvidia.com/gpu", "nominalQuota": 8, "borrowingLimit": 2, "lendingLimit": "4"}]}]}]}})
    quotas = cq.spec.quotas()
    assert quotas["h100"]["cpu"].nominal_milli() == 1500
    gpu = quotas["h100"]["nvidia.com/gpu"]
    assert (gpu.nominal_milli(), gpu.borrowing_milli(), gpu.lending_milli()) == (8000, 2000, 4000)
    assert quotas["h100"]["cpu"].borrowing_milli() is None


def test_namespace_selector_semantics_follow_kueue() -> None:
    unset = ClusterQueue.model_validate({"metadata": {"name": "a"}, "spec": {}})
    everything = ClusterQueue.model_validate({"metadata": {"name": "b"}, "spec": {"namespaceSelector": {}}})
    assert not unset.spec.admits_namespace({"kubernetes.io/metadata.name": "x"})
    assert everything.spec.admits_namespace({"kubernetes.io/metadata.name": "x"})


def test_flavor_untolerated_taints() -> None:
    from queue_controller.api import ResourceFlavor

    rf = ResourceFlavor.model_validate({"metadata": {"name": "h100"}, "spec": {"nodeTaints": [
        {"key": "gpu", "effect": "NoSchedule"}, {"key": "soft", "effect": "PreferNoSchedule"}]}})
    assert [t.key for t in rf.spec.untolerated_taints([])] == ["gpu"]
    assert rf.spec.untolerated_taints([Toleration(key="gpu", operator="Exists")]) == []


def test_effective_priority() -> None:
    def spec(**kw: Any) -> CheckpointableJob:
        return CheckpointableJob.model_validate({"metadata": {"name": "j"}, "spec": {
            "queueName": "q", "podSets": [{"template": {"spec": {"containers": [c("a")]}}}], **kw}})

    assert spec(priority=7).spec.effective_priority({}) == 7
    assert spec(priorityClassName="high").spec.effective_priority({"high": 1000}) == 1000
    assert spec().spec.effective_priority({}) == 0
    with pytest.raises(KeyError):
        spec(priorityClassName="missing").spec.effective_priority({})


def test_owner_reference() -> None:
    job = CheckpointableJob.model_validate({"metadata": {"name": "j", "uid": "u-1"}, "spec": {
        "queueName": "q", "podSets": [{"template": {"spec": {"containers": [c("a")]}}}]}})
    assert job.owner_reference().to_wire() == {
        "apiVersion": "ckq.io/v1alpha1", "kind": "CheckpointableJob", "name": "j", "uid": "u-1",
        "controller": True, "blockOwnerDeletion": True,
    }
    job.metadata.uid = None
    with pytest.raises(ValueError, match="uid"):
        job.owner_reference()

"""The operator's cache and its conversion into engine snapshots, fed with Kubernetes-shaped bodies."""

from __future__ import annotations

from typing import Any

import pytest

from queue_controller.engine import GPU, JobState, ReclaimWithinCohort
from queue_controller.operator.cache import Cache
from queue_controller.operator.pods import build_pod
from queue_controller.operator.snapshot import build

pytestmark = pytest.mark.unit


def meta(name: str, ns: str | None = None, rv: int = 1, **extra: Any) -> dict[str, Any]:
    m = {"name": name, "uid": f"uid-{name}", "resourceVersion": str(rv),
         "creationTimestamp": "2026-11-23T10:00:00Z", **extra}
    if ns:
        m["namespace"] = ns
    return m


def node(name: str, ready: bool = True) -> dict[str, Any]:
    return {"metadata": meta(name, labels={"ckq.io/flavor": "h100"}),
            "status": {"allocatable": {"cpu": "64", "memory": "512Gi", GPU: "8", "pods": "110"},
                       "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}


def job(name: str, **spec: Any) -> dict[str, Any]:
    status = spec.pop("status", {})
    return {"metadata": meta(name, "team", annotations={"ckq.io/simulated-runtime-seconds": "100"}),
            "spec": {"queueName": "lq", "podSets": [{"name": "w", "count": 2, "template": {"spec": {
                "containers": [{"name": "c", "resources": {"requests": {"cpu": "500m", "memory": "1Gi"},
                                                           "limits": {GPU: "4"}}}]}}}], **spec},
            "status": status}


@pytest.fixture
def cache() -> Cache:
    c = Cache()
    c.upsert_node(node("n0"))
    c.upsert_node(node("n1", ready=False))
    c.upsert_flavor({"metadata": meta("h100"), "spec": {"nodeLabels": {"ckq.io/flavor": "h100"},
                                                        "tolerations": [{"key": "gpu", "operator": "Exists"}]}})
    c.upsert_cluster_queue({"metadata": meta("cq"), "spec": {
        "cohort": "ml", "preemption": {"reclaimWithinCohort": "Any"}, "namespaceSelector": {},
        "resourceGroups": [{"coveredResources": ["cpu", "memory", GPU], "flavors": [{"name": "h100", "resources": [
            {"name": "cpu", "nominalQuota": "16"}, {"name": "memory", "nominalQuota": "64Gi"},
            {"name": GPU, "nominalQuota": "8", "lendingLimit": "4"}]}]}]}})
    c.upsert_local_queue({"metadata": meta("lq", "team"), "spec": {"clusterQueue": "cq"}})
    return c


def estimate(_: Any) -> tuple[float, float]:
    return 5.0, 5.0


def test_jobs_queues_and_nodes_become_an_engine_snapshot(cache: Cache) -> None:
    cache.upsert_priority_class({"metadata": meta("urgent"), "value": 1000})
    cache.upsert_job(job("a", priorityClassName="urgent"))
    snap, unq = build(cache, estimate)
    (j,) = snap.jobs
    assert j.key == "team/a" and j.cluster_queue == "cq" and j.priority == 1000
    assert j.pod_sets[0].requests == {"cpu": 500, "memory": 2**30 * 1000, GPU: 4000}  # limit stands in
    assert j.state is JobState.PENDING and j.checkpointable
    (q,) = snap.cluster_queues
    assert q.cohort == "ml"
    assert q.resource_groups[0].flavors[0].resources[GPU].lending_limit == 4000
    # Only the fields the admin wrote refine the policy: reclaim yes, backfill not written.
    assert q.reclaim_within_cohort is ReclaimWithinCohort.ANY and q.backfill_enabled is None
    assert [n.ready for n in snap.nodes] == [True, False]
    assert unq.reasons == {}


def test_missing_local_queue_or_priority_class_is_reported_not_scheduled(cache: Cache) -> None:
    cache.upsert_job(job("b", queueName="nope"))
    cache.upsert_job(job("c", priorityClassName="ghost"))
    snap, unq = build(cache, estimate)
    assert snap.jobs == ()
    assert unq.reasons["team/b"][0] == "LocalQueueNotFound"
    assert unq.reasons["team/c"][0] == "PriorityClassNotFound"


def test_pods_of_others_count_as_node_usage_ours_through_the_admission(cache: Cache) -> None:
    admitted = job("d", status={"phase": "Running", "attempt": 1, "runStartTime": "2026-11-23T10:05:00Z",
                                "admission": {"clusterQueue": "cq", "podSetAssignments": [
                                    {"name": "w", "flavor": "h100", "nodes": ["n0", "n0"], "count": 2}]}})
    cache.upsert_job(admitted)
    ours = {"metadata": meta("d-1-w-0", "team", labels={"ckq.io/job-name": "d", "ckq.io/managed": "true",
                                                        "ckq.io/attempt": "1", "ckq.io/pod-set": "w"}),
            "spec": {"nodeName": "n0", "containers": [{"name": "c", "resources": {"requests": {GPU: "4"}}}]},
            "status": {"phase": "Running"}}
    theirs = {"metadata": meta("other", "kube-system"),
              "spec": {"nodeName": "n0", "containers": [{"name": "c", "resources": {"requests": {"cpu": "2"}}}]},
              "status": {"phase": "Running"}}
    cache.upsert_pod(ours)
    cache.upsert_pod(theirs)
    snap, _ = build(cache, estimate)
    (j,) = snap.jobs
    assert j.state is JobState.ADMITTED and j.placement[0].nodes == ("n0", "n0")
    assert j.started_at is not None
    n0 = next(n for n in snap.nodes if n.name == "n0")
    assert n0.other_usage == {"cpu": 2000}


def test_stale_watch_events_do_not_roll_the_cache_back(cache: Cache) -> None:
    newer = job("e", status={"phase": "Admitted"})
    newer["metadata"]["resourceVersion"] = "20"
    older = job("e", status={})
    older["metadata"]["resourceVersion"] = "10"
    assert cache.fresh("job", newer)
    cache.upsert_job(newer)
    assert not cache.fresh("job", older)
    assert cache.jobs["team/e"].phase == "Admitted"


def test_namespace_selector_decides_which_namespaces_may_use_a_queue(cache: Cache) -> None:
    cache.upsert_namespace({"metadata": meta("team", labels={"tier": "research"})})
    cache.upsert_job(job("h"))
    raw = {"metadata": meta("cq", rv=2), "spec": {
        "namespaceSelector": {"matchLabels": {"tier": "prod"}},
        "resourceGroups": [{"coveredResources": ["cpu"], "flavors": [{"name": "h100", "resources": [
            {"name": "cpu", "nominalQuota": "16"}]}]}]}}
    cache.upsert_cluster_queue(raw)
    snap, unq = build(cache, estimate)
    assert snap.jobs == () and unq.reasons["team/h"][0] == "NamespaceNotAllowed"
    del raw["spec"]["namespaceSelector"]  # Kueue: no selector admits no namespace
    cache.upsert_cluster_queue(raw)
    assert build(cache, estimate)[1].reasons["team/h"][0] == "NamespaceNotAllowed"
    raw["spec"]["namespaceSelector"] = {"matchLabels": {"tier": "research"}}
    cache.upsert_cluster_queue(raw)
    assert [j.key for j in build(cache, estimate)[0].jobs] == ["team/h"]


def test_invalid_job_spec_is_reported(cache: Cache) -> None:
    bad = job("f")
    bad["spec"]["podSets"][0]["count"] = 0
    cache.upsert_job(bad)
    _, unq = build(cache, estimate)
    assert unq.reasons["team/f"][0] == "InvalidSpec"
    # The message names the field (found by the fuzz tier: it once said only "1 validation error for ...").
    assert unq.reasons["team/f"][1].startswith("spec.podSets[0].count: "), unq.reasons["team/f"]
    del bad["spec"]["podSets"][0]["template"]["spec"]["containers"]
    bad["spec"]["podSets"][0]["count"] = 1
    bad["metadata"]["resourceVersion"] = "2"
    cache.upsert_job(bad)
    assert build(cache, estimate)[1].reasons["team/f"] == (
        "InvalidSpec", "spec.podSets[0].template.spec.containers: required")


def test_invalid_cluster_queue_is_reported_by_its_active_condition(cache: Cache) -> None:
    from queue_controller.operator.waiting import queue_active

    raw = {"metadata": {"name": "q"}, "spec": {"resourceGroups": [{"coveredResources": ["cpu"], "flavors": [
        {"name": "f", "resources": [{"name": "cpu", "nominalQuota": "1e999"}]}]}]}}
    cache.upsert_cluster_queue(raw)
    status, reason, message = queue_active(cache.cluster_queues["q"])["Active"]
    assert (status, reason) == ("False", "InvalidSpec")
    assert message.startswith("spec.resourceGroups[0].flavors[0].resources[0].nominalQuota: invalid quantity"), message
    raw["spec"]["resourceGroups"][0]["flavors"][0]["resources"][0]["nominalQuota"] = "8"
    cache.upsert_cluster_queue(raw)
    assert queue_active(cache.cluster_queues["q"])["Active"][:2] == ("True", "Ready")


def test_pods_are_pinned_to_the_engines_node_and_carry_flavor_and_restore_info(cache: Cache) -> None:
    from queue_controller.checkpoint.base import LaunchRequest, PodRef, RestoreSource
    from queue_controller.checkpoint.simulated import SimulatedBackend

    rec = cache.upsert_job(job("g"))
    assert rec.spec is not None
    # The backend adds the restore reference and, on kwok nodes, the run time left (100 s needed).
    ref = PodRef("g-3-w-1", "w", 1, "n0", ("c",), 2**30)
    info = SimulatedBackend().pod_info(LaunchRequest("team", "g", ref, rec.spec.checkpoint, 57.6, rec.annotations,
                                                     RestoreSource("g-ckpt")))
    pod = build_pod(rec, "w", 1, 3, "n0", cache.flavors["h100"], info)
    assert pod["metadata"]["name"] == "g-3-w-1"
    assert pod["metadata"]["labels"]["ckq.io/attempt"] == "3"
    assert pod["metadata"]["ownerReferences"][0]["uid"] == "uid-g"
    assert pod["metadata"]["annotations"]["ckq.io/restore-from"] == "g-ckpt"
    assert pod["metadata"]["annotations"]["kwok.ckq.io/run-seconds"] == "42.4"  # to the millisecond
    terms = pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert terms["nodeSelectorTerms"][0]["matchFields"][0]["values"] == ["n0"]
    assert pod["spec"]["nodeSelector"] == {"ckq.io/flavor": "h100"}
    assert {"key": "gpu", "operator": "Exists"} in pod["spec"]["tolerations"]
    env = {e["name"]: e["value"] for e in pod["spec"]["containers"][0]["env"]}
    assert env["CKQ_RESTORE_ID"] == "g-ckpt"


def test_jobs_with_equal_specs_share_one_parsed_spec_until_the_last_goes() -> None:
    """A sweep of jobs that differ only in name keeps one parsed spec (memory at 15,000 jobs), and a job
    whose spec changes gets its own; the pool lets a spec go with its last job."""
    cache = Cache()

    def body(name: str, gpus: str = "8", generation: int = 1) -> dict[str, object]:
        return {"metadata": {"name": name, "namespace": "team", "uid": f"u-{name}", "generation": generation},
                "spec": {"queueName": "main", "podSets": [{"name": "w", "count": 1, "template": {"spec": {
                    "containers": [{"name": "c", "image": "x", "command": ["run"],
                                    "resources": {"requests": {"nvidia.com/gpu": gpus}}}]}}}]}}

    a, b = cache.upsert_job(body("a")), cache.upsert_job(body("b"))
    assert a.spec is b.spec and a.templates is b.templates and a.requests is b.requests
    b2 = cache.upsert_job(body("b", gpus="4", generation=2))
    assert b2.spec is not a.spec and b2.requests["w"]["nvidia.com/gpu"] == 4000
    assert a.requests["w"]["nvidia.com/gpu"] == 8000  # the other job's spec is untouched
    cache.delete_job("team", "a")
    cache.delete_job("team", "b")
    assert cache._specs == {} and cache._spec_of == {}

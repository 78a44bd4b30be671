"""The controller against the real control plane (kwok nodes): admission, quotas, gangs, preemption by
checkpoint and by kill, backfill, periodic checkpoints, failures, suspend/resume, restarts."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
from kubernetes.client.rest import ApiException

from tests.integration.conftest import Kube, cjob, cluster_queue, local_queue

pytestmark = pytest.mark.integration


@pytest.fixture
def queues(kube: Kube, namespace: str) -> Any:
    """Create ClusterQueues (named uniquely per test) with a LocalQueue each in the test namespace."""
    made: list[str] = []

    def make(gpus: int, cohort: str | None = None, lq: str = "main", **spec: Any) -> str:
        name = f"{namespace}-{lq}"
        kube.create("clusterqueues", cluster_queue(name, gpus, cohort, **spec))
        made.append(name)
        kube.create("localqueues", local_queue(lq, namespace, name), namespace)
        return lq

    yield make
    for name in made:
        kube.delete("clusterqueues", name)


def status(kube: Kube, ns: str, name: str) -> dict[str, Any]:
    return kube.job(ns, name).get("status") or {}


def running_pods(kube: Kube, ns: str, job: str) -> list[Any]:
    return [p for p in kube.pods(ns, job) if p.status.phase == "Running" and not p.metadata.deletion_timestamp]


def test_priority_order_within_quota(kube: Kube, namespace: str, queues: Any, run_controller: Any) -> None:
    q = queues(gpus=8)
    kube.create("checkpointablejobs", cjob("low", q, priority=1, runtime_s=600), namespace)
    kube.create("checkpointablejobs", cjob("high", q, priority=10, runtime_s=600), namespace)
    run_controller("kueue")
    kube.wait_phase(namespace, "high", "Running")
    low = status(kube, namespace, "low")
    assert low.get("phase") == "Pending"
    assert low.get("pendingReason") == "InsufficientQuota"
    assert low.get("queuePosition") == 1
    pods = running_pods(kube, namespace, "high")
    assert len(pods) == 1 and pods[0].spec.node_name  # bound by the real kube-scheduler
    assert pods[0].spec.node_name == status(kube, namespace, "high")["admission"]["podSetAssignments"][0]["nodes"][0]


def test_gang_all_or_nothing(kube: Kube, namespace: str, queues: Any, run_controller: Any) -> None:
    q = queues(gpus=64)
    # 4 h100 nodes of 8 GPUs: a gang of 5 whole-node pods can never start; one of 4 can.
    kube.create("checkpointablejobs", cjob("too-big", q, gpus=8, pods=5, runtime_s=600), namespace)
    kube.create("checkpointablejobs", cjob("fits", q, gpus=8, pods=4, runtime_s=600), namespace)
    run_controller("kueue")
    kube.wait_phase(namespace, "fits", "Running")
    assert len(running_pods(kube, namespace, "fits")) == 4
    assert kube.pods(namespace, "too-big") == []
    assert status(kube, namespace, "too-big").get("pendingReason") in ("InsufficientCapacity", "NeverFits",
                                                                        "InsufficientQuota")


def test_cohort_borrowing_and_reclaim(kube: Kube, namespace: str, queues: Any, run_controller: Any) -> None:
    cohort = f"c-{uuid.uuid4().hex[:6]}"
    research = queues(gpus=8, cohort=cohort, lq="research",
                      preemption={"withinClusterQueue": "LowerPriority", "reclaimWithinCohort": "Any"})
    prod = queues(gpus=8, cohort=cohort, lq="prod",
                  preemption={"withinClusterQueue": "LowerPriority", "reclaimWithinCohort": "Any"})
    kube.create("checkpointablejobs", cjob("borrower", research, gpus=8, pods=2, runtime_s=600), namespace)
    run_controller("iass")
    kube.wait_phase(namespace, "borrower", "Running")  # 16 GPUs: 8 of its own, 8 borrowed from prod
    kube.create("checkpointablejobs", cjob("owner", prod, gpus=8, runtime_s=600), namespace)
    kube.wait_phase(namespace, "owner", "Running", timeout=60)
    b = status(kube, namespace, "borrower")
    assert b["phase"] in ("Suspended", "Pending", "Checkpointing")
    assert b["preemptions"] == 1
    cond = {c["type"]: c for c in b["conditions"]}
    assert cond["Preempted"]["reason"] == "InCohortReclamation"


def test_checkpoint_preemption_and_resume_lose_no_progress(kube: Kube, namespace: str, queues: Any,
                                                          run_controller: Any) -> None:
    q = queues(gpus=32, preemption={"withinClusterQueue": "LowerPriority"})
    needed = 40
    kube.create("checkpointablejobs", cjob("train", q, gpus=8, pods=4, runtime_s=needed), namespace)
    ctl = run_controller("iass")
    kube.wait_phase(namespace, "train", "Running")
    time.sleep(10)
    kube.create("checkpointablejobs", cjob("urgent", q, gpus=8, pods=1, priority=100, runtime_s=8), namespace)
    suspended = kube.wait_phase(namespace, "train", ("Suspended",), timeout=60)
    st = suspended["status"]
    assert st["preemptions"] == 1 and st["lastCheckpoint"]["name"]
    kept = st["runTimeSeconds"]
    assert 8 <= kept <= 20, kept
    ckpt = kube.get("checkpoints", st["lastCheckpoint"]["name"], namespace)
    assert ckpt["spec"]["reason"] == "Preemption" and ckpt["status"]["phase"] == "Completed"
    assert ckpt["status"]["artifacts"] and ckpt["status"]["sizeBytes"] > 0
    kube.wait_phase(namespace, "urgent", "Succeeded", timeout=60)
    kube.wait_phase(namespace, "train", ("Restoring", "Running"), timeout=60)
    pods = kube.pods(namespace, "train")
    restored = [p for p in pods if p.metadata.annotations.get("ckq.io/restore-from") == ckpt["metadata"]["name"]]
    assert restored, "resumed pods carry the restore reference"
    done = kube.wait_phase(namespace, "train", "Succeeded", timeout=90)["status"]
    # No progress lost: total run time is what the job needed (within scheduling jitter).
    assert abs(done["runTimeSeconds"] - needed) <= 4, done["runTimeSeconds"]
    assert done.get("lostRunTimeSeconds", 0) == 0
    assert "ckq_preemptions_total{" in ctl.metrics()


def test_kill_preemption_under_kueue_loses_progress(kube: Kube, namespace: str, queues: Any,
                                                   run_controller: Any) -> None:
    q = queues(gpus=8, preemption={"withinClusterQueue": "LowerPriority"})
    kube.create("checkpointablejobs", cjob("victim", q, gpus=8, runtime_s=30), namespace)
    run_controller("kueue")
    kube.wait_phase(namespace, "victim", "Running")
    time.sleep(8)
    kube.create("checkpointablejobs", cjob("urgent", q, gpus=8, priority=100, runtime_s=5), namespace)
    kube.wait_phase(namespace, "urgent", ("Running", "Succeeded"), timeout=60)
    v = status(kube, namespace, "victim")
    assert v["preemptions"] == 1
    assert v["lostRunTimeSeconds"] >= 6  # everything since it started: no checkpoint under kueue
    assert v["runTimeSeconds"] == 0
    done = kube.wait_phase(namespace, "victim", "Succeeded", timeout=120)["status"]
    assert done["runTimeSeconds"] >= 29  # it had to run the whole 30 s again


def test_backfill_fills_idle_gpus_and_is_vacated_when_the_reservation_is_due(
        kube: Kube, namespace: str, queues: Any, run_controller: Any) -> None:
    q = queues(gpus=64)  # quota is not the limit here: the four h100 nodes are
    # Three nodes busy until ~t+20; one idle. "big" needs all four nodes: it gets a reservation.
    kube.create("checkpointablejobs", cjob("busy", q, gpus=8, pods=3, runtime_s=20,
                                           runtimeEstimateSeconds=20), namespace)
    run_controller("iass")
    kube.wait_phase(namespace, "busy", "Running")
    kube.create("checkpointablejobs", cjob("big", q, gpus=8, pods=4, runtime_s=10, runtimeEstimateSeconds=10),
                namespace)
    kube.wait("big reserved", lambda: status(kube, namespace, "big").get("pendingReason") == "ReservedStart")
    # A long checkpointable job backfills the idle node although it would overlap the reservation.
    kube.create("checkpointablejobs", cjob("filler", q, gpus=8, runtime_s=600, runtimeEstimateSeconds=600),
                namespace)
    filler = kube.wait_phase(namespace, "filler", "Running")
    assert filler["status"]["admission"]["backfill"] is True
    # When "busy" ends, the reservation is due: the filler is checkpointed out and big starts.
    kube.wait_phase(namespace, "big", ("Running", "Succeeded"), timeout=90)
    f = status(kube, namespace, "filler")
    assert f["preemptions"] == 1
    assert {c["type"]: c for c in f["conditions"]}["Preempted"]["reason"] == "ReservationDue"
    assert f.get("lostRunTimeSeconds", 0) == 0


def test_periodic_checkpoints_cadence_and_retention(kube: Kube, namespace: str, queues: Any,
                                                    run_controller: Any) -> None:
    q = queues(gpus=8)
    # 1 GiB at 1 GiB/s: each checkpoint takes about 2 s, every 4 s.
    kube.create("checkpointablejobs", cjob("periodic", q, gpus=8, runtime_s=600, memory="1Gi",
                                           checkpoint={"interval": "4s", "retain": 2}), namespace)
    run_controller("iass")
    kube.wait_phase(namespace, "periodic", "Running")
    started = time.time()
    kube.wait("four periodic checkpoints", lambda: (status(kube, namespace, "periodic").get("checkpoints") or 0) >= 4,
              timeout=60)
    # Cadence: never more often than the interval (4 checkpoints need at least 3 intervals after the first).
    assert time.time() - started >= 3 * 4
    ckpts = [c for c in kube.list("checkpoints", namespace) if c["spec"]["jobName"] == "periodic"]
    completed = [c for c in ckpts if (c.get("status") or {}).get("phase") == "Completed"]
    assert len(completed) <= 2  # retain: older ones pruned
    assert all(c["spec"]["reason"] == "Periodic" and c["spec"]["leaveRunning"] for c in ckpts)
    assert status(kube, namespace, "periodic")["phase"] == "Running"


def test_node_not_ready_restores_elsewhere_from_the_last_checkpoint(
        kube: Kube, kube_cluster: Any, namespace: str, queues: Any, run_controller: Any) -> None:
    q = queues(gpus=8)
    kube.create("checkpointablejobs", cjob("fragile", q, gpus=8, runtime_s=600,
                                           checkpoint={"interval": "3s"}), namespace)
    run_controller("iass")
    kube.wait_phase(namespace, "fragile", "Running")
    kube.wait("a checkpoint", lambda: status(kube, namespace, "fragile").get("lastCheckpoint"), timeout=30)
    node = status(kube, namespace, "fragile")["admission"]["podSetAssignments"][0]["nodes"][0]
    kube_cluster.set_node_ready(node, False)
    try:
        def moved() -> bool:
            st = status(kube, namespace, "fragile")
            nodes = ((st.get("admission") or {}).get("podSetAssignments") or [{}])[0].get("nodes") or []
            return st.get("phase") in ("Restoring", "Running") and st.get("restarts") == 1 and node not in nodes

        kube.wait("restored on another node", moved, timeout=90)
        st = status(kube, namespace, "fragile")
        assert st["runTimeSeconds"] > 0  # restored from the checkpoint, not from zero
    finally:
        kube_cluster.set_node_ready(node, True)


def test_user_suspend_and_resume(kube: Kube, namespace: str, queues: Any, run_controller: Any) -> None:
    q = queues(gpus=8)
    kube.create("checkpointablejobs", cjob("pausable", q, gpus=8, runtime_s=600), namespace)
    run_controller("iass")
    kube.wait_phase(namespace, "pausable", "Running")
    time.sleep(3)
    kube.patch("checkpointablejobs", "pausable", {"spec": {"suspend": True}}, namespace)
    st = kube.wait_phase(namespace, "pausable", "Suspended", timeout=60)["status"]
    assert st["lastCheckpoint"] and st["runTimeSeconds"] > 0
    kube.wait("pods gone", lambda: not running_pods(kube, namespace, "pausable"), timeout=30)
    time.sleep(2)
    assert status(kube, namespace, "pausable")["phase"] == "Suspended"  # stays suspended
    kube.patch("checkpointablejobs", "pausable", {"spec": {"suspend": False}}, namespace)
    kube.wait_phase(namespace, "pausable", ("Restoring", "Running"), timeout=60)


def test_controller_killed_during_checkpoint_recovers(kube: Kube, namespace: str, queues: Any,
                                                      run_controller: Any) -> None:
    q = queues(gpus=8, preemption={"withinClusterQueue": "LowerPriority"})
    # 64 GiB per pod at 1 GiB/s: the checkpoint takes ~1 minute, long enough to kill the controller in it.
    body = cjob("big-state", q, gpus=8, runtime_s=30)
    body["spec"]["podSets"][0]["template"]["spec"]["containers"][0]["resources"]["requests"]["memory"] = "64Gi"
    kube.create("checkpointablejobs", body, namespace)
    ctl = run_controller("iass")
    kube.wait_phase(namespace, "big-state", "Running")
    kube.create("checkpointablejobs", cjob("urgent", q, gpus=8, priority=100, runtime_s=5), namespace)
    kube.wait_phase(namespace, "big-state", "Checkpointing", timeout=30)
    ctl.kill()
    time.sleep(2)
    run_controller("iass")
    kube.wait_phase(namespace, "big-state", "Suspended", timeout=120)
    kube.wait_phase(namespace, "urgent", "Succeeded", timeout=60)
    kube.wait_phase(namespace, "big-state", "Succeeded", timeout=120)
    # No duplicate pods: one attempt at a time, each pod name unique.
    ckpts = [c for c in kube.list("checkpoints", namespace) if c["spec"]["reason"] == "Preemption"]
    assert len(ckpts) == 1, [c["metadata"]["name"] for c in ckpts]
    st = status(kube, namespace, "big-state")
    assert st["preemptions"] == 1 and st["attempt"] == 2


def test_invalid_objects_are_refused_with_the_field_named(kube: Kube, namespace: str) -> None:
    bad_cq = cluster_queue(f"{namespace}-bad", 8)
    bad_cq["spec"]["resourceGroups"][0]["flavors"][0]["resources"][2]["lendingLimit"] = "4"
    with pytest.raises(ApiException) as e:
        kube.create("clusterqueues", bad_cq)
    assert e.value.status == 422 and "lendingLimit" in e.value.body
    bad_job = cjob("bad", "main")
    bad_job["spec"]["podSets"][0]["count"] = 0
    with pytest.raises(ApiException) as e2:
        kube.create("checkpointablejobs", bad_job, namespace)
    assert e2.value.status == 422 and "count" in e2.value.body
    bad_interval = cjob("bad2", "main", checkpoint={"interval": "soon"})
    with pytest.raises(ApiException) as e3:
        kube.create("checkpointablejobs", bad_interval, namespace)
    assert "interval" in e3.value.body

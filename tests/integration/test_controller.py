"""The controller against the real control plane (kwok nodes): admission, quotas, gangs, preemption by
checkpoint and by kill, backfill, periodic checkpoints, user suspend/resume, invalid objects.
Whole scenarios (resume without loss, node loss, controller restart) are in tests/e2e."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
from kubernetes.client.rest import ApiException

from tests.plugins.controller import Kube, cjob, cluster_queue, job_status, running_pods

pytestmark = pytest.mark.integration


def test_priority_order_within_quota(kube: Kube, namespace: str, queues: Any, run_controller: Any) -> None:
    q = queues(gpus=8)
    kube.create("checkpointablejobs", cjob("low", q, priority=1, runtime_s=600), namespace)
    kube.create("checkpointablejobs", cjob("high", q, priority=10, runtime_s=600), namespace)
    run_controller("kueue")
    kube.wait_phase(namespace, "high", "Running")
    low = job_status(kube, namespace, "low")
    assert low.get("phase") == "Pending"
    assert low.get("pendingReason") == "InsufficientQuota"
    pods = running_pods(kube, namespace, "high")
    assert len(pods) == 1 and pods[0].spec.node_name  # bound by the real kube-scheduler
    assignment = job_status(kube, namespace, "high")["admission"]["podSetAssignments"][0]
    assert pods[0].spec.node_name == assignment["nodes"][0]
    # Queue status: counts and usage on the ClusterQueue and the LocalQueue.
    cq = kube.wait("ClusterQueue status", lambda: (kube.get("clusterqueues", f"{namespace}-main").get("status") or {})
                   if (kube.get("clusterqueues", f"{namespace}-main").get("status") or {}).get("admittedWorkloads")
                   else None)
    assert cq["pendingWorkloads"] == 1 and cq["admittedWorkloads"] == 1
    # Positions are served on demand; the head of the queue is in its status.
    assert [(j["name"], j["position"], j["reason"]) for j in cq["pendingJobs"]] == [("low", 1, "InsufficientQuota")]
    gpu = {r["name"]: r["total"] for r in cq["flavorsUsage"][0]["resources"]}["nvidia.com/gpu"]
    assert gpu == "8"
    lq = kube.get("localqueues", "main", namespace).get("status") or {}
    assert lq.get("admittedWorkloads") == 1 and lq.get("pendingWorkloads") == 1


def test_gang_all_or_nothing(kube: Kube, namespace: str, queues: Any, run_controller: Any) -> None:
    q = queues(gpus=64)
    # 4 h100 nodes of 8 GPUs: a gang of 5 whole-node pods can never start; one of 4 can.
    kube.create("checkpointablejobs", cjob("too-big", q, gpus=8, pods=5, runtime_s=600), namespace)
    kube.create("checkpointablejobs", cjob("fits", q, gpus=8, pods=4, runtime_s=600), namespace)
    run_controller("kueue")
    kube.wait_phase(namespace, "fits", "Running")
    assert len(running_pods(kube, namespace, "fits")) == 4
    assert kube.pods(namespace, "too-big") == []
    assert job_status(kube, namespace, "too-big").get("pendingReason") in ("InsufficientCapacity", "NeverFits",
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
    b = job_status(kube, namespace, "borrower")
    assert b["phase"] in ("Suspended", "Pending", "Checkpointing")
    assert b["preemptions"] == 1
    cond = {c["type"]: c for c in b["conditions"]}
    assert cond["Preempted"]["reason"] == "InCohortReclamation"


def test_kill_preemption_under_kueue_loses_progress(kube: Kube, namespace: str, queues: Any,
                                                   run_controller: Any) -> None:
    q = queues(gpus=8, preemption={"withinClusterQueue": "LowerPriority"})
    kube.create("checkpointablejobs", cjob("victim", q, gpus=8, runtime_s=30), namespace)
    run_controller("kueue")
    kube.wait_phase(namespace, "victim", "Running")
    time.sleep(8)
    kube.create("checkpointablejobs", cjob("urgent", q, gpus=8, priority=100, runtime_s=5), namespace)
    kube.wait_phase(namespace, "urgent", ("Running", "Succeeded"), timeout=60)
    v = job_status(kube, namespace, "victim")
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
    # Its estimate asks for more work than the filler's, so that iass's credit for requested work
    # (ordering.workCreditSecondsPerGpuHour) keeps big ahead of the filler that arrives after it.
    kube.create("checkpointablejobs", cjob("big", q, gpus=8, pods=4, runtime_s=10, runtimeEstimateSeconds=600),
                namespace)
    kube.wait("big reserved", lambda: job_status(kube, namespace, "big").get("pendingReason") == "ReservedStart")
    # A long checkpointable job backfills the idle node although it would overlap the reservation.
    kube.create("checkpointablejobs", cjob("filler", q, gpus=8, runtime_s=600, runtimeEstimateSeconds=600),
                namespace)
    filler = kube.wait_phase(namespace, "filler", "Running")
    assert filler["status"]["admission"]["backfill"] is True
    # When "busy" ends, the reservation is due: the filler is checkpointed out and big starts.
    kube.wait_phase(namespace, "big", ("Running", "Succeeded"), timeout=90)
    f = job_status(kube, namespace, "filler")
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
    kube.wait("four periodic checkpoints",
              lambda: (job_status(kube, namespace, "periodic").get("checkpoints") or 0) >= 4,
              timeout=60)
    # Cadence: never more often than the interval (4 checkpoints need at least 3 intervals after the first).
    assert time.time() - started >= 3 * 4
    def completed() -> list[dict[str, Any]]:
        return [c for c in kube.list("checkpoints", namespace) if c["spec"]["jobName"] == "periodic"
                and (c.get("status") or {}).get("phase") == "Completed"]

    # retain 2: older ones pruned. The prune follows the job's status write, so for a moment a third
    # Completed one may still be listed: wait for the prune rather than race it.
    kube.wait("retention to prune the older checkpoints", lambda: len(completed()) <= 2, timeout=30)
    ckpts = [c for c in kube.list("checkpoints", namespace) if c["spec"]["jobName"] == "periodic"]
    assert len(ckpts) <= 4  # pruned, not piling up (2 kept, at most one in flight, one just completed)
    assert all(c["spec"]["reason"] == "Periodic" and c["spec"]["leaveRunning"] for c in ckpts)
    assert job_status(kube, namespace, "periodic")["phase"] == "Running"


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
    assert job_status(kube, namespace, "pausable")["phase"] == "Suspended"  # stays suspended
    kube.patch("checkpointablejobs", "pausable", {"spec": {"suspend": False}}, namespace)
    kube.wait_phase(namespace, "pausable", ("Restoring", "Running"), timeout=60)


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
    # Issue 14: a name the job's pods cannot carry as a label value is refused up front, not later.
    with pytest.raises(ApiException) as e4:
        kube.create("checkpointablejobs", cjob("x" * 64, "main"), namespace)
    assert e4.value.status == 422 and "metadata.name of a CheckpointableJob must be at most 63" in e4.value.body
    kube.create("checkpointablejobs", cjob("x" * 63, "main"), namespace)  # the longest allowed

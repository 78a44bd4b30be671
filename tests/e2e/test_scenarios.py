"""Whole scenarios on the real control plane: preemption by checkpoint and resume with no progress lost,
node loss with restore elsewhere, and a controller killed in the middle of a checkpoint."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.plugins.controller import Kube, cjob, job_status

pytestmark = pytest.mark.e2e


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
    restored = kube.wait("resumed pods carrying the restore reference", lambda: [
        p for p in kube.pods(namespace, "train")
        if (p.metadata.annotations or {}).get("ckq.io/restore-from") == ckpt["metadata"]["name"]])
    assert len(restored) == 4 and all(p.metadata.labels["ckq.io/attempt"] == "2" for p in restored)
    done = kube.wait_phase(namespace, "train", "Succeeded", timeout=90)["status"]
    # No progress lost: total run time is what the job needed (within scheduling jitter).
    assert abs(done["runTimeSeconds"] - needed) <= 4, done["runTimeSeconds"]
    assert done.get("lostRunTimeSeconds", 0) == 0
    assert "ckq_preemptions_total{" in ctl.metrics()


def test_node_not_ready_restores_elsewhere_from_the_last_checkpoint(
        kube: Kube, kube_cluster: Any, namespace: str, queues: Any, run_controller: Any) -> None:
    q = queues(gpus=8)
    kube.create("checkpointablejobs", cjob("fragile", q, gpus=8, runtime_s=600,
                                           checkpoint={"interval": "3s"}), namespace)
    run_controller("iass")
    kube.wait_phase(namespace, "fragile", "Running")
    kube.wait("a checkpoint", lambda: job_status(kube, namespace, "fragile").get("lastCheckpoint"), timeout=30)
    node = job_status(kube, namespace, "fragile")["admission"]["podSetAssignments"][0]["nodes"][0]
    kube_cluster.set_node_ready(node, False)
    try:
        def moved() -> bool:
            st = job_status(kube, namespace, "fragile")
            nodes = ((st.get("admission") or {}).get("podSetAssignments") or [{}])[0].get("nodes") or []
            return st.get("phase") in ("Restoring", "Running") and st.get("restarts") == 1 and node not in nodes

        kube.wait("restored on another node", moved, timeout=90)
        st = job_status(kube, namespace, "fragile")
        assert st["runTimeSeconds"] > 0  # restored from the checkpoint, not from zero
    finally:
        kube_cluster.set_node_ready(node, True)


def test_controller_killed_during_checkpoint_recovers(kube: Kube, namespace: str, queues: Any,
                                                      run_controller: Any) -> None:
    q = queues(gpus=8, preemption={"withinClusterQueue": "LowerPriority"})
    # 64 GiB per pod at 1 GiB/s: the checkpoint takes ~1 minute, long enough to kill the controller in it.
    # kwok's pods go on running meanwhile, so the job runs longer than that: pods that finish during the
    # checkpoint would finish the job instead (completion wins over a pending preemption, issue 14).
    body = cjob("big-state", q, gpus=8, runtime_s=100)
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
    kube.wait_phase(namespace, "big-state", "Succeeded", timeout=180)
    # No duplicate pods: one attempt at a time, each pod name unique.
    ckpts = [c for c in kube.list("checkpoints", namespace) if c["spec"]["reason"] == "Preemption"]
    assert len(ckpts) == 1, [c["metadata"]["name"] for c in ckpts]
    st = job_status(kube, namespace, "big-state")
    assert st["preemptions"] == 1 and st["attempt"] == 2

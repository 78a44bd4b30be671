"""The node agent's pure decisions: pods, attempts, restore constraints, and status merges."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from queue_controller import wire
from queue_controller.agent import plan
from queue_controller.agent.plan import PodInfo
from queue_controller.api.checkpoint import Artifact, Checkpoint, CheckpointSpec, CheckpointStatus, FrozenContainer
from queue_controller.api.common import ObjectMeta
from queue_controller.runtime.manifest import Manifest

pytestmark = pytest.mark.unit

T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
T1 = datetime(2026, 1, 2, 3, 5, 0, tzinfo=UTC)


def pod(name: str = "train-1-worker-0", *, ns: str = "team-a", job: str = "train", pod_set: str = "worker",
        index: int = 0, attempt: int = 1, node: str = "real-0", phase: str = "Running",
        containers: tuple[str, ...] = ("main",), gpu: bool = False, deleting: bool = False,
        managed: bool = True) -> dict[str, Any]:
    labels = {wire.JOB_LABEL: job, wire.POD_SET_LABEL: pod_set, wire.POD_INDEX_LABEL: str(index),
              wire.ATTEMPT_LABEL: str(attempt)}
    if managed:
        labels[wire.MANAGED_LABEL] = "true"
    meta: dict[str, Any] = {"name": name, "namespace": ns, "labels": labels, "uid": f"uid-{name}"}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-02T03:04:05Z"
    res = {"limits": {"nvidia.com/gpu": 1}} if gpu else {"requests": {"cpu": "1"}}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta,
            "spec": {"nodeName": node, "containers": [{"name": c, "image": "x", "resources": res} for c in containers]},
            "status": {"phase": phase}}


def checkpoint(phase: str | None = "Pending", *, job: str = "train", ns: str = "team-a", **status: Any) -> Checkpoint:
    st = CheckpointStatus(phase=phase, **status) if phase or status else None
    return Checkpoint(metadata=ObjectMeta(name=f"{job}-1-preemption-1", namespace=ns, uid="ck-uid"),
                      spec=CheckpointSpec(job_name=job, reason="Preemption"), status=st)


def manifest(ckpt_id: str = "20260102-030405-aaaaaa", size: int = 1000, duration: float = 1.5) -> Manifest:
    return Manifest(id=ckpt_id, created="2026-01-02T03:04:05Z", sizeBytes=size, sha256="a" * 64, criuVersion="4.1",
                    kernel="6", durationSeconds=duration, leaveRunning=False, parent=None)


def test_pod_info_reads_the_controllers_labels() -> None:
    info = PodInfo.from_dict(pod(containers=("main", "side"), gpu=True, attempt=3, index=2))
    assert info is not None
    assert (info.namespace, info.job, info.pod_set, info.index, info.attempt, info.node) == (
        "team-a", "train", "worker", 2, 3, "real-0")
    assert info.containers == ("main", "side") and info.gpu and info.running
    assert PodInfo.from_dict(pod(managed=False)) is None
    broken = pod()
    broken["metadata"]["labels"][wire.POD_INDEX_LABEL] = "x"
    assert PodInfo.from_dict(broken) is None
    deleting = PodInfo.from_dict(pod(deleting=True))
    assert deleting is not None and not deleting.running
    pending = PodInfo.from_dict(pod(phase="Pending"))
    assert pending is not None and not pending.running and not pending.gpu


def test_acts_on_pending_and_running_only() -> None:
    assert plan.acts_on(checkpoint(None))
    assert plan.acts_on(checkpoint("Pending"))
    assert plan.acts_on(checkpoint("Running"))
    assert not plan.acts_on(checkpoint("Completed"))
    assert not plan.acts_on(checkpoint("Failed"))


def test_local_pods_and_current_attempt() -> None:
    infos = [PodInfo.from_dict(p) for p in (
        pod("a", attempt=1), pod("b", attempt=2, index=1), pod("c", job="other"), pod("d", ns="team-b"),
        pod("e", attempt=2, index=0))]
    mine = plan.local_pods(checkpoint(), [i for i in infos if i])
    assert [p.name for p in mine] == ["a", "e", "b"]  # by (podSet, index)
    assert plan.current_attempt(mine) == 2
    assert [p.name for p in plan.local_pods(checkpoint(), [i for i in infos if i], attempt=2)] == ["e", "b"]
    assert plan.current_attempt([]) is None


def test_node_constraints_arch_cpu_and_gpu_only_for_gpu_jobs() -> None:
    labels = {"kubernetes.io/arch": "amd64", "kubernetes.io/hostname": "real-0",
              "feature.node.kubernetes.io/cpu-model.vendor_id": "Intel",
              "nvidia.com/gpu.product": "NVIDIA-H200", "nvidia.com/cuda.driver.major": "580",
              "nvidia.com/cuda.driver-version.full": "580.65.06", "nvidia.com/gpu.count": "8"}
    assert plan.node_constraints(labels, gpu=False) == {
        "kubernetes.io/arch": "amd64", "feature.node.kubernetes.io/cpu-model.vendor_id": "Intel"}
    assert plan.node_constraints(labels, gpu=True) == {
        "kubernetes.io/arch": "amd64", "feature.node.kubernetes.io/cpu-model.vendor_id": "Intel",
        "nvidia.com/gpu.product": "NVIDIA-H200", "nvidia.com/cuda.driver.major": "580",
        "nvidia.com/cuda.driver-version.full": "580.65.06"}
    assert plan.node_constraints({}, gpu=True) == {}


def test_merge_constraints_adds_and_never_clobbers() -> None:
    c = checkpoint("Running")
    changed, conflicts = plan.merge_constraints(c, {"kubernetes.io/arch": "amd64"})
    assert changed and not conflicts
    changed, conflicts = plan.merge_constraints(c, {"kubernetes.io/arch": "amd64"})
    assert not changed and not conflicts
    changed, conflicts = plan.merge_constraints(c, {"kubernetes.io/arch": "arm64", "nvidia.com/gpu.product": "H200"})
    assert changed and conflicts == ["kubernetes.io/arch"]
    assert c.status is not None and c.status.restore_constraints is not None
    assert c.status.restore_constraints.node_labels == {"kubernetes.io/arch": "amd64", "nvidia.com/gpu.product": "H200"}
    empty = checkpoint("Running")
    assert plan.merge_constraints(empty, {}) == (True, [])  # records that none apply
    assert plan.merge_constraints(empty, {}) == (False, [])


def test_mark_running_sets_start_once_and_never_reopens() -> None:
    c = checkpoint("Pending")
    assert plan.mark_running(c, T0)
    assert c.status is not None and (c.status.phase, c.status.start_time) == ("Running", T0)
    assert not plan.mark_running(c, T1)
    assert c.status.start_time == T0
    none = checkpoint(None)
    assert plan.mark_running(none, T0) and none.status is not None and none.status.phase == "Running"
    for final in ("Completed", "Failed"):
        f = checkpoint(final)
        assert not plan.mark_running(f, T1)
        assert f.status is not None and f.status.phase == final and f.status.start_time is None


def test_add_artifact_is_idempotent_and_sums() -> None:
    c = checkpoint("Running")
    info = PodInfo.from_dict(pod())
    assert info is not None
    a1 = plan.artifact_for(info, "main", "real-0", "file:///s/x/checkpoints/1", manifest(size=1000, duration=1.5))
    assert (a1.pod_set, a1.index, a1.container, a1.node, a1.sha256, a1.size_bytes) == (
        "worker", 0, "main", "real-0", "a" * 64, 1000)
    assert plan.add_artifact(c, a1, 1.5)
    assert not plan.add_artifact(c, a1, 9.0)
    a2 = Artifact(pod_set="worker", index=1, container="main", node="real-1", uri="file:///s/y/checkpoints/2",
                  sha256="b" * 64, size_bytes=500)
    assert plan.add_artifact(c, a2, 0.7)
    assert c.status is not None
    assert (c.status.size_bytes, c.status.duration_seconds) == (1500, 1.5)
    assert plan.recorded(c.status) == {("worker", 0, "main"), ("worker", 1, "main")}
    assert c.status.to_wire()["artifacts"][0] == {
        "podSet": "worker", "index": 0, "container": "main", "node": "real-0", "uri": "file:///s/x/checkpoints/1",
        "sha256": "a" * 64, "sizeBytes": 1000}


def test_mark_failed_keeps_the_first_end() -> None:
    c = checkpoint("Running")
    assert plan.mark_failed(c, "pod x container y: criu dump failed", T1)
    assert c.status is not None and (c.status.phase, c.status.message, c.status.completion_time) == (
        "Failed", "pod x container y: criu dump failed", None)
    assert not plan.mark_failed(c, "another", T1)
    assert c.status.message == "pod x container y: criu dump failed"
    done = checkpoint("Completed")
    assert not plan.mark_failed(done, "late", T1)
    assert done.status is not None and done.status.phase == "Completed"


# ---- the gang barrier -------------------------------------------------------------------------------

T0 = datetime(2026, 1, 2, 3, 4, 0, tzinfo=UTC)
A, B, C = ("worker", 0, "main"), ("worker", 1, "main"), ("worker", 2, "main")


def frozen_at(*ms: tuple[str, int, str], node: str = "real-0", at: datetime = T0) -> list[FrozenContainer]:
    return [FrozenContainer(pod_set=ps, index=i, container=c, node=node, frozen_at=at) for ps, i, c in ms]


def art(m: tuple[str, int, str], node: str) -> Artifact:
    return Artifact(pod_set=m[0], index=m[1], container=m[2], node=node, uri=f"file:///s/{m[1]}")


def with_leave(ckpt: Checkpoint, leave: bool) -> Checkpoint:
    ckpt.spec = CheckpointSpec(job_name=ckpt.spec.job_name, reason="Preemption", leave_running=leave)
    return ckpt


def test_members_are_every_container_of_every_pod_of_the_run() -> None:
    pods = [PodInfo.from_dict(p) for p in (pod("a", index=0, containers=("main", "side")),
                                           pod("b", index=1, node="real-1"), pod("old", index=2, attempt=0))]
    assert plan.members([p for p in pods if p is not None], 1) == {
        ("worker", 0, "main"), ("worker", 0, "side"), ("worker", 1, "main")}


def test_barrier_freezes_first_and_dumps_only_once_the_whole_gang_is_frozen() -> None:
    gang = {A, B, C}
    ck = checkpoint("Running")
    assert plan.next_step(ck, "real-0", {A}, gang, T0, 60) == plan.Step(freeze=[A])
    ck.status.frozen = frozen_at(A)  # type: ignore[union-attr]
    assert not plan.next_step(ck, "real-0", {A}, gang, T0, 60)  # waiting for B and C
    ck.status.frozen += frozen_at(B, C, node="real-1")  # type: ignore[union-attr]
    assert plan.next_step(ck, "real-0", {A}, gang, T0, 60) == plan.Step(dump=[A])
    ck.status.artifacts = [art(A, "real-0")]  # type: ignore[union-attr]
    assert not plan.next_step(ck, "real-0", {A}, gang, T0, 60)  # recorded: nothing left here


def test_a_barrier_not_reached_in_time_fails_naming_the_missing_containers() -> None:
    ck = checkpoint("Running", frozen=frozen_at(A))
    assert not plan.next_step(ck, "real-0", {A}, {A, B, C}, T0 + timedelta(seconds=60), 60)
    step = plan.next_step(ck, "real-0", {A}, {A, B, C}, T0 + timedelta(seconds=61), 60)
    assert step.fail == ("freeze barrier not reached within 60s: 1 of 3 containers frozen; not frozen: worker-1/main, "
                         "worker-2/main (not running under ckq-run, or their node's agent is not acting)")
    assert not step.dump


def test_an_ended_checkpoint_is_released_once_by_each_node_that_froze_for_it() -> None:
    done = with_leave(checkpoint("Completed", frozen=frozen_at(A) + frozen_at(B, node="real-1")), False)
    assert plan.next_step(done, "real-0", set(), set(), T0, 60) == plan.Step(release="stop")
    assert plan.next_step(with_leave(done, True), "real-0", set(), set(), T0, 60) == plan.Step(release="thaw")
    failed = checkpoint("Failed", frozen=frozen_at(A), artifacts=[art(A, "real-0")])
    assert plan.next_step(failed, "real-0", set(), set(), T0, 60) == plan.Step(release="thaw", discard=True)
    assert not plan.next_step(failed, "real-2", set(), set(), T0, 60)  # froze nothing, dumped nothing
    assert plan.mark_released(failed, "real-0", discarded=True)
    assert failed.status is not None and failed.status.artifacts == [] and failed.status.released == ["real-0"]
    assert not plan.mark_released(failed, "real-0", discarded=True)  # idempotent
    assert not plan.next_step(failed, "real-0", set(), set(), T0, 60)


def test_add_frozen_is_a_merge_that_keeps_the_first_record() -> None:
    ck = checkpoint("Running")
    assert plan.add_frozen(ck, frozen_at(A), 3)
    assert not plan.add_frozen(ck, frozen_at(A, at=T0 + timedelta(seconds=5)), 3)  # a restarted agent, again
    assert ck.status is not None and [f.frozen_at for f in ck.status.frozen] == [T0] and ck.status.members == 3

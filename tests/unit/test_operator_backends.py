"""The checkpoint backend seam as the controller uses it: every call carries the job's checkpoint
policy and the controller's API client, restored pods get their own artifacts, and a checkpoint the
controller gives up on is cancelled."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from queue_controller.checkpoint.base import (
    ApiClient,
    CheckpointRequest,
    CheckpointResult,
    LaunchRequest,
    PodInfo,
)
from queue_controller.checkpoint.simulated import SimulatedBackend
from tests.unit.operator_world import GIB, World, make_world

pytestmark = pytest.mark.unit


class SpyBackend(SimulatedBackend):
    """The Simulated backend, recording what it is given; `stuck` never finishes a checkpoint."""

    def __init__(self, stuck: bool = False) -> None:
        super().__init__(bandwidth_bytes_per_s=GIB, fixed_overhead_s=1.0)
        self.stuck = stuck
        self.calls: list[tuple[str, Any, ApiClient | None]] = []

    async def begin(self, request: CheckpointRequest, *, api: ApiClient | None = None) -> None:
        self.calls.append(("begin", request, api))

    async def progress(self, request: CheckpointRequest, now: float, *,
                       api: ApiClient | None = None) -> CheckpointResult | None:
        self.calls.append(("progress", request, api))
        return None if self.stuck else await super().progress(request, now, api=api)

    async def cancel(self, request: CheckpointRequest, *, api: ApiClient | None = None) -> None:
        self.calls.append(("cancel", request, api))

    def pod_info(self, request: LaunchRequest) -> PodInfo:
        self.calls.append(("pod_info", request, None))
        return super().pod_info(request)

    def named(self, name: str) -> list[Any]:
        return [req for n, req, _ in self.calls if n == name]


async def running(w: World, job: str) -> None:
    await w.cycle()
    w.server.run_pods(job)
    await w.cycle()  # the controller first sees the pods running
    await w.cycle(1)
    assert w.phase(job) == "Running"


def test_backends_get_the_policy_the_client_the_real_pods_and_on_restore_their_artifacts() -> None:
    async def scenario() -> None:
        spy = SpyBackend()
        w = make_world("iass", backend=spy)
        w.submit("train", pods=1, checkpoint={"timeoutSeconds": 120, "retain": 2})
        await running(w, "train")
        w.submit("urgent", priority=100)
        await w.cycle(10)
        await w.cycle(5)
        assert w.phase("train") == "Suspended"
        for name in ("begin", "progress"):
            for req in spy.named(name):
                assert req.policy.timeout_seconds == 120 and req.policy.retain == 2 and req.timeout_s == 120
                assert [p.name for p in req.pods] == ["train-1-worker-0"]  # the pod's real name
        assert all(api is w.kube for n, _, api in spy.calls if n != "pod_info")
        first = spy.named("pod_info")[0]
        assert first.restore is None and first.pod.name == "train-1-worker-0" and first.run_time_s == 0.0
        await running(w, "urgent")
        w.server.finish_pods("urgent")
        await w.cycle(1)
        assert w.phase("train") == "Restoring"
        resumed = spy.named("pod_info")[-1]
        assert resumed.pod.name == "train-2-worker-0" and resumed.run_time_s == 11.0
        assert resumed.restore.checkpoint == "train-1-preemption-1"
        (art,) = resumed.restore.artifacts
        stored = w.server.get("checkpoints", "train-1-preemption-1")["status"]["artifacts"][0]
        assert (art.pod_set, art.index, art.container, art.uri, art.sha256) == (
            "worker", 0, "train", stored["uri"], stored["sha256"])
        assert spy.named("cancel") == []

    asyncio.run(scenario())


def test_a_checkpoint_whose_job_stopped_running_is_failed_and_cancelled() -> None:
    async def scenario() -> None:
        spy = SpyBackend()
        w = make_world("iass", backend=spy)
        w.submit("fragile", memory="64Gi", checkpoint={"interval": "10s"})  # 65 s to checkpoint
        await running(w, "fragile")
        await w.cycle(10)
        (ckpt,) = w.server.checkpoints("fragile")
        assert ckpt["status"]["phase"] == "Running" and ckpt["spec"]["leaveRunning"]
        w.server.objects[("nodes", "", "n0")]["status"]["conditions"][0]["status"] = "False"
        w.server._changed("MODIFIED", "nodes", w.server.objects[("nodes", "", "n0")])
        await w.cycle(1)  # requeued: its only node is gone
        assert w.phase("fragile") == "Pending"
        await w.cycle(1)
        ckpt = w.server.get("checkpoints", ckpt["metadata"]["name"])
        assert ckpt["status"]["phase"] == "Failed"
        assert ckpt["status"]["message"] == "job is Pending: nothing to checkpoint"
        (cancelled,) = spy.named("cancel")
        assert cancelled.checkpoint == ckpt["metadata"]["name"] and cancelled.job == "fragile"

    asyncio.run(scenario())


def test_a_checkpoint_past_its_timeout_is_cancelled_and_fails_like_any_failure() -> None:
    async def scenario() -> None:
        spy = SpyBackend(stuck=True)
        w = make_world("iass", backend=spy)
        w.submit("victim", checkpoint={"timeoutSeconds": 30})
        await running(w, "victim")
        w.submit("urgent", priority=100)
        await w.cycle(9)
        assert w.phase("victim") == "Checkpointing"
        await w.cycle(29)
        assert w.phase("victim") == "Checkpointing" and spy.named("cancel") == []
        await w.cycle(1)
        (ckpt,) = w.server.checkpoints("victim")
        assert ckpt["status"]["phase"] == "Failed" and ckpt["status"]["message"] == "timed out after 30s"
        assert [c.checkpoint for c in spy.named("cancel")] == ["victim-1-preemption-1"]
        st = w.server.status("victim")  # iass: onCheckpointFailure Kill
        assert st["phase"] == "Pending" and st["checkpointFailures"] == 1 and st["lostRunTimeSeconds"] == 40.0

    asyncio.run(scenario())


@pytest.mark.parametrize(("timeout", "ack"), [(600, 570.0), (60, 30.0), (20, 10.0), (1, 0.5)])
def test_ckq_run_gives_up_on_a_signal_ack_before_the_controllers_timeout(timeout: int, ack: float) -> None:
    """So that the agent records ckq-run's reason (which signal, how long) before the controller's generic
    "timed out" would (30 s of margin at most; half the timeout when it is short)."""
    from queue_controller.checkpoint.signal_backend import ack_timeout_s

    assert ack_timeout_s(timeout) == ack

"""The Simulated checkpoint backend: duration from memory and bandwidth, artifacts, failure modes."""

from __future__ import annotations

import asyncio

import pytest

from queue_controller.checkpoint.base import CheckpointRequest, PodRef
from queue_controller.checkpoint.simulated import SimulatedBackend

pytestmark = pytest.mark.unit

GIB = 2**30


def request(job: str = "j", memory: int = 4 * GIB, timeout: float = 600.0) -> CheckpointRequest:
    pods = (PodRef("j-0", "w", 0, "n0", ("a", "b"), memory), PodRef("j-1", "w", 1, "n1", ("a", "b"), memory // 2))
    return CheckpointRequest("ns", job, "j-1-preemption-1", "Preemption", False, pods, 1000.0, timeout)


def test_duration_follows_the_largest_pod_and_the_bandwidth() -> None:
    backend = SimulatedBackend(bandwidth_bytes_per_s=GIB, fixed_overhead_s=1.0)
    assert backend.estimate(request().pods) == (5.0, 5.0)
    assert asyncio.run(backend.progress(request(), 1004.9)) is None
    done = asyncio.run(backend.progress(request(), 1005.0))
    assert done is not None and done.ok and done.duration_s == 5.0
    assert len(done.artifacts) == 4  # one per container of every pod
    assert done.size_bytes == 4 * GIB + 2 * GIB
    assert {a.node for a in done.artifacts} == {"n0", "n1"}
    # Deterministic: the same checkpoint always gives the same digests (restart-safe).
    again = asyncio.run(backend.progress(request(), 2000.0))
    assert again is not None and [a.sha256 for a in again.artifacts] == [a.sha256 for a in done.artifacts]


def test_timeout_and_injected_failure() -> None:
    backend = SimulatedBackend(bandwidth_bytes_per_s=GIB)
    slow = request(memory=100 * GIB, timeout=30.0)
    assert asyncio.run(backend.progress(slow, 1029.0)) is None
    failed = asyncio.run(backend.progress(slow, 1030.0))
    assert failed is not None and not failed.ok and "timed out" in failed.message
    broken = SimulatedBackend(bandwidth_bytes_per_s=GIB, fail_jobs=frozenset({"ns/j"}))
    result = asyncio.run(broken.progress(request(), 1010.0))
    assert result is not None and not result.ok


def test_restore_info_names_the_checkpoint() -> None:
    info = SimulatedBackend().restore_info("ns", "j", "j-ckpt", "w", 0)
    assert info.annotations["ckq.io/restore-from"] == "j-ckpt"
    assert info.env["CKQ_RESTORE_ID"] == "j-ckpt"


def test_the_backend_and_the_simulator_share_one_cost_model() -> None:
    from queue_controller.checkpoint.cost import CheckpointCostModel
    from queue_controller.sim.cluster import CheckpointModel
    from queue_controller.sim.trace import TraceJob

    backend = SimulatedBackend(bandwidth_bytes_per_s=GIB, fixed_overhead_s=1.0)
    sim = CheckpointModel(latency_s=1.0, bandwidth_gib_s=1.0, restore_latency_s=1.0, restore_bandwidth_gib_s=1.0)
    assert backend.cost == sim.cost == CheckpointCostModel(1.0, GIB, 1.0, GIB)
    # 8 GiB over two pods: each writes 4 GiB; the backend sees two 4 GiB pods.
    job = TraceJob(id="j", submit_s=0.0, runtime_s=60.0, estimate_s=None, cpu=1.0, memory_gib=8.0, gpus=0, pods=2,
                   priority=0, queue="q", checkpointable=True, checkpoint_gib=None)
    pods = [PodRef(f"j-{i}", "w", i, "n", ("c",), 4 * GIB) for i in range(2)]
    assert sim.checkpoint_s(job) == backend.estimate(pods)[0] == 5.0
    assert sim.restore_s(job) == backend.estimate(pods)[1] == 5.0


def test_remaining_run_time_keeps_sub_second_jobs_exact() -> None:
    from queue_controller.checkpoint.simulated import remaining_run_time

    def left(declared: str, ran: float = 0.0) -> float | None:
        return remaining_run_time({"ckq.io/simulated-runtime-seconds": declared}, ran)

    assert left("0.2") == 0.2  # not rounded up to a second
    assert left("100", 31.0) == 69.0
    assert left("100", 99.5) == 1.0  # a resumed run still does at least a second of work
    assert left("0.5", 0.4) == 0.5  # ... or its whole declared time when that is shorter
    assert left("0") == 0.001  # the finest resolution kwok honours, never zero
    assert left("soon") is None and left("nan") is None
    assert remaining_run_time({}, 0.0) is None


def test_run_seconds_annotation_is_written_to_the_millisecond() -> None:
    from queue_controller.checkpoint.simulated import format_run_seconds

    assert format_run_seconds(42.0) == "42"  # whole seconds read as before
    assert format_run_seconds(69.0) == "69"
    assert format_run_seconds(0.2) == "0.2"
    assert format_run_seconds(1.25) == "1.25"
    assert format_run_seconds(68.6004) == "68.6"
    assert format_run_seconds(0.0001) == "0.001"  # never "0": the pod always runs


def test_pods_get_the_exact_sub_second_run_time() -> None:
    from queue_controller.api.job import CheckpointPolicy
    from queue_controller.checkpoint.base import LaunchRequest

    pod = PodRef("j-1-main-0", "main", 0, "n0", ("c",), GIB)
    policy = CheckpointPolicy.model_validate({"mode": "Simulated"})

    def annotation(declared: str, ran: float) -> str:
        request = LaunchRequest("ns", "j", pod, policy, ran, {"ckq.io/simulated-runtime-seconds": declared})
        return SimulatedBackend().pod_info(request).annotations["kwok.ckq.io/run-seconds"]

    assert annotation("0.2", 0.0) == "0.2"
    assert annotation("100", 31.0) == "69"
    assert annotation("100", 31.4) == "68.6"

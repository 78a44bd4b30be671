"""The work credit in queue order (ordering.py, `OrderingSettings`): within a priority, a job is ordered as
if it had arrived earlier by the policy's credit per requested GPU-hour, at most the policy's cap.

Small scenarios whose right answer can be worked out by hand, and a replay in the simulator showing that
the cap bounds how long a job can be passed over: every job is reached."""

from __future__ import annotations

import pytest

from queue_controller.engine import decide
from queue_controller.engine.ordering import credited, work_credit
from queue_controller.engine.policy import OrderingSettings, Policy
from queue_controller.sim.cluster import ClusterSpec
from queue_controller.sim.simulator import SimConfig, simulate
from queue_controller.sim.trace import TraceJob
from tests.unit.engine_factory import EASY, FIFO, IASS, KUEUE, admitted, job, node, queue, running, snapshot

pytestmark = pytest.mark.unit

H = 3600.0


def with_ordering(policy: Policy, rate: float, cap: float = 24 * H) -> Policy:
    ordering = OrderingSettings(work_credit_seconds_per_gpu_hour=rate, max_work_credit_seconds=cap)
    return policy.model_copy(update={"ordering": ordering})


def test_only_iass_credits_work() -> None:
    # fifo, kueue and easy order by arrival alone: the snapshot goes to the rules untouched.
    for policy in (FIFO, KUEUE, EASY):
        assert policy.ordering.work_credit_seconds_per_gpu_hour == 0
        snap = snapshot([node("n0")], [queue(gpus=8)], [job("a", t=5, runtime_estimate_s=H)])
        assert credited(snap, policy.ordering) is snap
    assert IASS.ordering.work_credit_seconds_per_gpu_hour > 0


def test_credit_is_gpu_hours_times_rate_and_capped() -> None:
    ordering = OrderingSettings(work_credit_seconds_per_gpu_hour=20, max_work_credit_seconds=4 * H)
    # 2 pods x 8 GPUs for 10 h: 160 GPU-hours, 3,200 s.
    assert work_credit(job("g", gpus=8, pods=2, runtime_estimate_s=10 * H), ordering) == 3200.0
    assert work_credit(job("huge", gpus=8, pods=8, runtime_estimate_s=1000 * H), ordering) == 4 * H
    # No estimate, or no GPUs: no credit (nothing to weigh).
    assert work_credit(job("unknown", gpus=8), ordering) == 0.0
    assert work_credit(job("cpu", gpus=0, runtime_estimate_s=10 * H), ordering) == 0.0


def test_a_large_long_gang_goes_before_smaller_work_that_arrived_a_little_earlier() -> None:
    # One free node. "short" (8 GPUs, 1 h) arrived 10 minutes before "long" (a 2-node gang of 8 GPUs each,
    # 40 h: 640 GPU-hours). By arrival "short" is first and takes the node; with a credit of 20 s per
    # GPU-hour "long" is ordered 12,800 s earlier than its arrival, ahead of "short".
    nodes = [node("n0"), node("n1")]
    jobs = [job("short", gpus=8, t=0, runtime_estimate_s=H),
            job("long", gpus=8, pods=2, t=600, runtime_estimate_s=40 * H),
            job("blocker", gpus=8, t=-10, runtime_estimate_s=H)]
    jobs[2] = running(jobs[2], ["n1"], started_at=-10)
    by_arrival = decide(snapshot(nodes, [queue(gpus=16)], jobs), 700, KUEUE)
    assert admitted(by_arrival) == ["ns/short"]
    credit = with_ordering(KUEUE, 20)
    by_credit = decide(snapshot(nodes, [queue(gpus=16)], jobs), 700, credit)
    # "long" is first and does not fit (n1 is busy); "short" still fits beside it (kueue has no
    # reservations), but now it is second in line.
    assert by_credit.waiting["ns/long"].position == 1
    assert admitted(by_credit) == ["ns/short"]
    # With reservations (easy), "long" reserves the two nodes at the blocker's end and "short" (1 h)
    # would delay it: it waits behind the gang.
    easy = decide(snapshot(nodes, [queue(gpus=16)], jobs), 700, with_ordering(EASY, 20))
    assert easy.waiting["ns/long"].reserved_start is not None
    assert admitted(easy) == []
    assert admitted(decide(snapshot(nodes, [queue(gpus=16)], jobs), 700, EASY)) == ["ns/short"]


def test_the_credit_does_not_cross_priorities() -> None:
    # A huge credit still orders only within a priority: the higher-priority job goes first.
    snap = snapshot([node("n0")], [queue(gpus=8)],
                    [job("big", gpus=8, priority=0, t=0, runtime_estimate_s=1000 * H),
                     job("urgent", gpus=8, priority=5, t=100, runtime_estimate_s=H)])
    assert admitted(decide(snap, 200, with_ordering(KUEUE, 1000))) == ["ns/urgent"]


def _trace() -> list[TraceJob]:
    """One 8-GPU node. A 1-GPU job arrives at t=60 behind a running one; then whole-node jobs arrive every
    30 minutes for two days, as fast as they run, each asking for far more than the cap's worth of credit."""
    def tj(i: str, submit: float, gpus: int, runtime: float, estimate: float) -> TraceJob:
        return TraceJob(i, submit, runtime, estimate, 1.0, 8.0, gpus, 1, 0, "q", False, None)
    out = [tj("first", 0.0, 8, H, 2 * H), tj("small", 60.0, 1, 600.0, 1200.0)]
    out += [tj(f"big{n:03d}", 120.0 + n * 1800.0, 8, 1800.0, 100 * H) for n in range(96)]
    return out


def _replay(cap: float) -> dict[str, float]:
    res = simulate(_trace(), with_ordering(KUEUE, 3600.0, cap), ClusterSpec.uniform(1), None,
                   SimConfig(sched_interval_s=0, record_segments=False))
    assert all(sj.end is not None for sj in res.jobs)  # every job completes
    return {sj.trace.id: sj.first_start for sj in res.jobs if sj.first_start is not None}


def test_no_job_waits_for_ever_behind_larger_ones() -> None:
    # Each big job's credit (8 GPUs x 100 h x 3,600 s per GPU-hour) is far above the 3-hour cap, so each is
    # ordered 3 h before its arrival; the small job's is 1,200 s (1 GPU x 1/3 h). So the small job is
    # passed over by the bigs that arrive less than 3 h - 1,200 s after it (big000-big005: t=120 to
    # t=9,120), and by no later one: it starts when big005 ends (first ends at 1 h, then six bigs of 30
    # minutes: t=14,400), before big006 (t=10,920) and every later big.
    cap = 3 * H
    start = _replay(cap)
    assert start["small"] == 14400.0
    passed = sorted(k for k, t in start.items() if k.startswith("big") and t < start["small"])
    assert passed == [f"big{n:03d}" for n in range(6)]
    # Without a cap that binds, every big is ordered ahead of the small job (100 h of credit each): it
    # waits until the arrivals stop, behind all 96.
    unbounded = _replay(1000 * H)
    assert all(unbounded["small"] > t for k, t in unbounded.items() if k.startswith("big"))


def test_the_same_job_under_two_rates_is_credited_by_each() -> None:
    # The credited copies are cached per job object; a second policy must not get the first one's copy.
    jobs = [job("short", gpus=8, t=0, runtime_estimate_s=H), job("long", gpus=8, t=600, runtime_estimate_s=10 * H)]
    snap = snapshot([node("n0")], [queue(gpus=8)], jobs)
    assert admitted(decide(snap, 700, with_ordering(KUEUE, 20))) == ["ns/long"]  # 1,600 s of credit
    assert admitted(decide(snap, 700, with_ordering(KUEUE, 1))) == ["ns/short"]  # 80 s: by arrival
    assert admitted(decide(snap, 700, with_ordering(KUEUE, 20))) == ["ns/long"]

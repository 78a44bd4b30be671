"""The minimal victim set (preemption/victim_set.py): as few victims as needed, room held for the
preemptor, victims already leaving counted once.

Small scenarios whose right answer can be worked out by hand."""

from __future__ import annotations

import pytest

from queue_controller.engine import PendingReason, Preempt, PreemptMode, PreemptReason, decide
from queue_controller.engine.policy import KillFor
from queue_controller.engine.preemption.victim_set import candidates
from queue_controller.engine.workspace import Workspace
from tests.unit.engine_factory import EASY, IASS, KUEUE, admitted, job, node, queue, running, snapshot

pytestmark = pytest.mark.unit


def test_only_as_many_victims_as_needed() -> None:
    # Greedy by cost lifts a (cheap, but its node keeps c) and then b; the reverse walk drops a again.
    a = running(job("a", gpus=4, t=1), ["n1"], started_at=99)  # kill cost 1 s x 4 GPUs
    c = running(job("c", gpus=4, t=1, priority=50), ["n1"], started_at=0)  # not a candidate
    b = running(job("b", gpus=8, t=1), ["n0"], started_at=95)  # kill cost 5 s x 8 GPUs
    snap = snapshot([node("n0"), node("n1")], [queue(gpus=32)], [a, b, c, job("high", priority=10, t=5)])
    assert [p.victim for p in decide(snap, 100, KUEUE).of_type(Preempt)] == ["ns/b"]


def test_two_victims_when_one_is_not_enough() -> None:
    r0 = running(job("r0", gpus=4, t=1), ["n0"], started_at=95)
    r1 = running(job("r1", gpus=4, t=1), ["n0"], started_at=96)
    r2 = running(job("r2", gpus=8, t=1), ["n1"], started_at=90)  # costs more than r0 + r1
    snap = snapshot([node("n0"), node("n1")], [queue(gpus=16)], [r0, r1, r2, job("high", priority=10, t=5)])
    assert sorted(p.victim for p in decide(snap, 100, KUEUE).of_type(Preempt)) == ["ns/r0", "ns/r1"]


def test_room_made_by_preemption_is_held_for_the_preemptor() -> None:
    # high needs the whole node; low holds half of it. The free half must not go to "filler" while the
    # victim leaves, or high would never fit and would preempt again and again.
    snap = snapshot([node("n0")], [queue(gpus=64)],
                    [running(job("low", gpus=4), ["n0"]), job("high", gpus=8, priority=10, t=1),
                     job("filler", gpus=4, t=2)])
    d = decide(snap, 100, KUEUE)
    assert [p.victim for p in d.of_type(Preempt)] == ["ns/low"]
    assert admitted(d) == []
    # The same holds in the next cycles, while the victim is still vacating.
    vacating = snapshot([node("n0")], [queue(gpus=64)],
                        [running(job("low", gpus=4), ["n0"], vacating=True), job("high", gpus=8, priority=10, t=1),
                         job("filler", gpus=4, t=2)])
    d2 = decide(vacating, 110, KUEUE)
    assert admitted(d2) == [] and d2.of_type(Preempt) == []
    assert d2.waiting["ns/high"].reason is PendingReason.WAITING_FOR_PREEMPTION


def test_no_preemption_for_a_job_that_would_then_delay_a_reservation() -> None:
    # "first" (2 nodes) cannot make room (h outranks it), so it reserves both nodes for t=100.
    # "second" could preempt r and start on n0 now, but would run past t=100: it must not preempt.
    r = running(job("r", gpus=8, runtime_estimate_s=100, t=0), ["n0"], started_at=0)
    h = running(job("h", gpus=8, priority=10, runtime_estimate_s=100, t=0), ["n1"], started_at=0)
    first = job("first", gpus=8, pods=2, priority=5, t=1, runtime_estimate_s=100)
    second = job("second", gpus=8, priority=3, t=2, runtime_estimate_s=1000, checkpointable=False)
    d = decide(snapshot([node("n0"), node("n1")], [queue(gpus=64)], [r, h, first, second]), 10, EASY)
    assert d.waiting["ns/first"].reason is PendingReason.RESERVATION
    assert d.of_type(Preempt) == []
    assert d.waiting["ns/second"].reason is not PendingReason.WAITING_FOR_PREEMPTION


def test_victims_being_vacated_stay_with_the_job_they_were_preempted_for() -> None:
    # Last cycle P1 preempted b (1 GPU on n0) and P2 preempted a (2 GPUs on n1); both still leave.
    b = running(job("b", 1), ["n0"], vacating=True, preempted_for="ns/P1")
    a = running(job("a", 2), ["n1"], vacating=True, preempted_for="ns/P2")
    f0 = running(job("f0", 7, priority=2000), ["n0"])
    f1 = running(job("f1", 6, priority=2000), ["n1"])
    c = running(job("c", 8), ["n2"])
    p1, p2 = job("P1", 1, priority=1000, t=10), job("P2", 2, priority=1000, t=20)
    d = decide(snapshot([node("n0"), node("n1"), node("n2")], [queue(gpus=24)], [b, a, f0, f1, c, p1, p2]),
               100, KUEUE)
    assert d.of_type(Preempt) == []  # nobody swaps victims and kills c for nothing
    assert d.waiting["ns/P1"].reason is d.waiting["ns/P2"].reason is PendingReason.WAITING_FOR_PREEMPTION


def test_a_preemption_elsewhere_does_not_cost_a_large_job_its_reservation() -> None:
    a = running(job("A", 8, priority=500, t=0, runtime_estimate_s=1000.0), ["n0"], started_at=0.0)
    b = running(job("B", 8, priority=500, t=1, runtime_estimate_s=2000.0), ["n1"], started_at=0.0)
    w = job("W", 8, pods=2, priority=100, t=5, runtime_estimate_s=3600.0)
    x = job("X", 8, priority=100, t=10, runtime_estimate_s=600.0)
    u = job("U", 1, priority=1000, t=50, runtime_estimate_s=100.0)
    d = decide(snapshot([node("n0"), node("n1")], [queue(gpus=16)], [a, b, w, x, u]), 100, EASY)
    assert [p.victim for p in d.of_type(Preempt)] == ["ns/A"]
    assert d.waiting["ns/W"].reason is PendingReason.RESERVATION  # still W's, not passed on to X
    assert d.waiting["ns/X"].reason is not PendingReason.RESERVATION


def test_vacating_jobs_are_not_preempted_twice() -> None:
    vac = running(job("low"), ["n0"], vacating=True)
    snap = snapshot([node("n0")], [queue(gpus=8)], [vac, job("high", priority=10, t=1)])
    d = decide(snap, 100, IASS)
    assert d.of_type(Preempt) == []
    assert d.waiting["ns/high"].reason is PendingReason.WAITING_FOR_PREEMPTION


# ---- the module alone -------------------------------------------------------------------------------

def test_candidates_come_in_victim_order() -> None:
    leaving = running(job("leaving", gpus=2), ["n0"], vacating=True)
    old = running(job("old", gpus=2), ["n0"], started_at=0)  # would lose 100 s x 2 GPUs
    fresh = running(job("fresh", gpus=2), ["n1"], started_at=90)  # would lose 10 s x 2 GPUs
    high = running(job("high", gpus=2, priority=20), ["n1"])  # outranks the preemptor
    p = job("p", priority=10, t=5)
    ws = Workspace(snapshot([node("n0"), node("n1")], [queue(gpus=64)], [leaving, old, fresh, high, p]), 100, KUEUE)
    cands = candidates(ws, p, ws.queues["cq"])
    assert [c.run.job.key for c in cands] == ["ns/leaving", "ns/fresh", "ns/old"]
    assert [c.reason for c in cands] == [None, PreemptReason.IN_CLUSTER_QUEUE, PreemptReason.IN_CLUSTER_QUEUE]
    assert [c.lost_work for c in cands] == [0.0, 20.0, 200.0]


def _gang_blocked_by_a_job_that_cannot_be_checkpointed() -> list[object]:
    # n0 holds a 1-GPU job that cannot be checkpointed (ends at t=1000 by its estimate), n1 a
    # checkpointable one. The 2-node gang needs both nodes whole.
    batch = running(job("batch", gpus=1, runtime_estimate_s=1000, checkpointable=False), ["n0"], started_at=0)
    ckpt = running(job("ckpt", gpus=8, runtime_estimate_s=5000), ["n1"], started_at=0)
    gang = job("gang", gpus=8, pods=2, priority=100, t=50, runtime_estimate_s=3600)
    return [batch, ckpt, gang]


def test_a_checkpointable_preemptor_waits_for_a_job_that_cannot_be_checkpointed() -> None:
    # iass (killFor: NonCheckpointable): the gang does not kill "batch" (its progress would be lost);
    # it checkpoints nobody either (that alone makes no room) and reserves the start at which "batch"
    # ends by its estimate.
    snap = snapshot([node("n0"), node("n1")], [queue(gpus=64)], _gang_blocked_by_a_job_that_cannot_be_checkpointed())
    d = decide(snap, 100, IASS)
    assert d.of_type(Preempt) == []
    w = d.waiting["ns/gang"]
    assert w.reason is PendingReason.RESERVATION and w.reserved_start == 1000


def test_under_kill_for_any_the_same_gang_kills_it() -> None:
    policy = IASS.model_copy(update={"preemption": IASS.preemption.model_copy(update={"kill_for": KillFor.ANY})})
    snap = snapshot([node("n0"), node("n1")], [queue(gpus=64)], _gang_blocked_by_a_job_that_cannot_be_checkpointed())
    modes = {p.victim: p.mode for p in decide(snap, 100, policy).of_type(Preempt)}
    assert modes == {"ns/batch": PreemptMode.KILL, "ns/ckpt": PreemptMode.CHECKPOINT}


def test_a_preemptor_that_cannot_be_checkpointed_still_kills() -> None:
    # An interactive job cannot wait by checkpoint either: under iass it still kills a lower-priority
    # job that cannot be checkpointed, when the gain beats the loss (10 s of progress here).
    low = running(job("low", gpus=8, runtime_estimate_s=1000, checkpointable=False), ["n0"], started_at=90)
    urgent = job("urgent", gpus=8, priority=1000, t=95, checkpointable=False)
    d = decide(snapshot([node("n0")], [queue(gpus=64)], [low, urgent]), 100, IASS)
    assert [(p.victim, p.mode) for p in d.of_type(Preempt)] == [("ns/low", PreemptMode.KILL)]

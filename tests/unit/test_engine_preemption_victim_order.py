"""The victim order (preemption/victim_order.py): checkpoint-first, least lost work first.

Small scenarios whose right answer can be worked out by hand."""

from __future__ import annotations

from dataclasses import replace

import pytest

from queue_controller.engine import Preempt, PreemptMode, Snapshot, decide
from queue_controller.engine.preemption.victim_order import VictimOrder, lost_work
from tests.unit.engine_factory import IASS, KUEUE, job, node, queue, running, snapshot

pytestmark = pytest.mark.unit


def test_checkpoint_first_preemption_under_iass_and_kill_under_kueue() -> None:
    snap = snapshot([node("n0")], [queue(gpus=8)], [running(job("low"), ["n0"]), job("high", priority=10, t=1)])
    (p,) = decide(snap, 100, IASS).of_type(Preempt)
    assert p.mode is PreemptMode.CHECKPOINT
    assert p.cost == pytest.approx((30 + 20) * 8)
    (k,) = decide(snap, 100, KUEUE).of_type(Preempt)
    assert k.mode is PreemptMode.KILL
    assert k.cost == pytest.approx(100 * 8)  # 100 s of progress on 8 GPUs lost


def test_non_checkpointable_victim_is_killed_even_under_iass() -> None:
    # For a preemptor that cannot be checkpointed either (iass's `killFor: NonCheckpointable`; a
    # checkpointable one waits instead: test_engine_preemption_victim_set.py).
    snap = snapshot([node("n0")], [queue(gpus=8)],
                    [running(job("low", checkpointable=False), ["n0"]),
                     job("high", priority=10, t=1, checkpointable=False)])
    (p,) = decide(snap, 100, IASS).of_type(Preempt)
    assert p.mode is PreemptMode.KILL
    assert decide(replace(snap, jobs=(*snap.jobs[:1], replace(snap.jobs[1], checkpointable=True))), 100,
                  IASS).of_type(Preempt) == []


def test_victims_are_chosen_to_minimise_lost_work() -> None:
    # Two candidate victims; either frees enough. The one that just checkpointed loses least to a kill.
    long_progress = running(job("a", gpus=8), ["n0"], started_at=0)
    fresh_ckpt = running(job("b", gpus=8), ["n1"], started_at=0, last_checkpoint_at=990, checkpoint="b-1")
    snap = snapshot([node("n0"), node("n1")], [queue(gpus=16)],
                    [long_progress, fresh_ckpt, job("high", priority=10, t=5)])
    (p,) = decide(snap, 1000, KUEUE).of_type(Preempt)
    assert p.victim == "ns/b"
    # Under iass a 50 s checkpoint beats killing 1000 s of progress: the non-checkpointable job is spared.
    snap2 = snapshot([node("n0"), node("n1")], [queue(gpus=16)],
                     [running(job("nock", checkpointable=False), ["n0"], started_at=0),
                      running(job("ck"), ["n1"], started_at=0), job("high", priority=10, t=5)])
    (p2,) = decide(snap2, 1000, IASS).of_type(Preempt)
    assert p2.victim == "ns/ck" and p2.mode is PreemptMode.CHECKPOINT


# ---- the module alone -------------------------------------------------------------------------------

def test_victim_order_compares_its_criteria_in_declaration_order() -> None:
    mine = VictimOrder.leaving(replace(job("a"), preempted_for="ns/p"), "ns/p")
    others = VictimOrder.leaving(replace(job("b"), preempted_for="ns/q"), "ns/p")
    cheap_low = VictimOrder.running(job("c", priority=1), 10.0)
    cheap_high = VictimOrder.running(job("d", priority=5), 10.0)
    dear = VictimOrder.running(job("e", priority=0), 99.0)
    assert sorted([dear, cheap_high, others, cheap_low, mine]) == [mine, others, cheap_low, cheap_high, dear]
    older = VictimOrder.running(replace(job("o"), admitted_at=10.0), 1.0)
    newer = VictimOrder.running(replace(job("n"), admitted_at=20.0), 1.0)
    assert newer < older  # the most recently admitted goes first


def test_lost_work_is_a_checkpoint_or_the_progress_since_the_last_one() -> None:
    j = running(job("j", gpus=8), ["n0"], started_at=0, last_checkpoint_at=900)
    assert lost_work(j, 1000, IASS) == (PreemptMode.CHECKPOINT, (30 + 20) * 8)
    assert lost_work(j, 1000, KUEUE) == (PreemptMode.KILL, 100 * 8)
    # A job that would restart from a checkpoint also pays the restore.
    assert lost_work(replace(j, checkpoint="j-1"), 1000, KUEUE) == (PreemptMode.KILL, (100 + 20) * 8)
    # CPU-only jobs are weighed by cores.
    cpu_only = running(job("c", gpus=0, cpu=4), ["n0"], started_at=990)
    assert lost_work(cpu_only, 1000, KUEUE) == (PreemptMode.KILL, 10 * 4)


def test_a_checkpointable_victim_goes_before_a_cheaper_kill_under_iass() -> None:
    # "short" (not checkpointable) has run 10 s: killing it loses 10 x 8 GPU-s, less than the 50 x 8 of
    # checkpointing "ckpt". Still iass takes "ckpt": a kill throws the work away, a checkpoint keeps it.
    # kueue kills either way, so it takes the one with the least progress.
    short = running(job("short", checkpointable=False), ["n0"], started_at=90.0)
    ckpt = running(job("ckpt"), ["n1"], started_at=0.0)
    snap = snapshot([node("n0"), node("n1")], [queue(gpus=16)], [short, ckpt, job("high", priority=10, t=1)])
    (p,) = decide(snap, 100, IASS).of_type(Preempt)
    assert (p.victim, p.mode) == ("ns/ckpt", PreemptMode.CHECKPOINT)
    (k,) = decide(snap, 100, KUEUE).of_type(Preempt)
    assert (k.victim, k.mode) == ("ns/short", PreemptMode.KILL)


def test_a_non_checkpointable_victim_only_when_the_checkpointable_ones_cannot_make_room() -> None:
    # "high" needs 16 GPUs of 16: both go, the non-checkpointable one killed ("high" cannot be
    # checkpointed either: iass's `killFor: NonCheckpointable` lets only such a preemptor kill).
    short = running(job("short", checkpointable=False), ["n0"], started_at=90.0)
    ckpt = running(job("ckpt"), ["n1"], started_at=0.0)
    snap = snapshot([node("n0"), node("n1")], [queue(gpus=16)],
                    [short, ckpt, job("high", gpus=8, pods=2, priority=10, t=1, checkpointable=False)])
    modes = {p.victim: p.mode for p in decide(snap, 100, IASS).of_type(Preempt)}
    assert modes == {"ns/ckpt": PreemptMode.CHECKPOINT, "ns/short": PreemptMode.KILL}


def test_iass_kills_a_victim_only_when_the_preemptor_gains_more_than_the_victim_loses() -> None:
    # "long" (not checkpointable, 8 GPUs) has run 3,000 s and by its estimate ends in 100 s: killing it
    # loses 3,000 x 8 GPU-s, and the 8-GPU preemptor gains only 100 x 8 by not waiting for it. iass waits,
    # kueue kills. With 5,000 s left the preemptor gains more than the victim loses: iass kills too (the
    # preemptor cannot be checkpointed, so `killFor: NonCheckpointable` lets it kill).
    def snap(estimate: float) -> Snapshot:
        long = running(job("long", checkpointable=False, runtime_estimate_s=estimate), ["n0"], started_at=0.0)
        return snapshot([node("n0")], [queue(gpus=8)], [long, job("high", priority=10, t=1, checkpointable=False)])

    assert decide(snap(3100.0), 3000, IASS).of_type(Preempt) == []
    assert [p.victim for p in decide(snap(3100.0), 3000, KUEUE).of_type(Preempt)] == ["ns/long"]
    assert [p.mode for p in decide(snap(8000.0), 3000, IASS).of_type(Preempt)] == [PreemptMode.KILL]

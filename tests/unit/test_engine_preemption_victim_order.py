"""The victim order (preemption/victim_order.py): checkpoint-first, least lost work first.

Small scenarios whose right answer can be worked out by hand."""

from __future__ import annotations

import pytest

from queue_controller.engine import Preempt, PreemptMode, decide
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
    snap = snapshot([node("n0")], [queue(gpus=8)],
                    [running(job("low", checkpointable=False), ["n0"]), job("high", priority=10, t=1)])
    (p,) = decide(snap, 100, IASS).of_type(Preempt)
    assert p.mode is PreemptMode.KILL


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

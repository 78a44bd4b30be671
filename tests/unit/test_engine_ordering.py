"""Queue order (ordering.py): priority, then the queue-order timestamp, which a preempted job keeps.

Small scenarios whose right answer can be worked out by hand."""

from __future__ import annotations

import pytest

from queue_controller.engine import PendingReason, Resume, decide
from tests.unit.engine_factory import IASS, KUEUE, admitted, job, node, queue, snapshot

pytestmark = pytest.mark.unit


def test_higher_priority_is_admitted_first_when_only_one_fits() -> None:
    snap = snapshot([node("n0")], [queue(gpus=8)],
                    [job("low", priority=1, t=0), job("high", priority=5, t=10)])
    d = decide(snap, 100, KUEUE)
    assert admitted(d) == ["ns/high"]
    assert d.waiting["ns/low"].reason is PendingReason.QUOTA
    assert d.waiting["ns/low"].position == 1


def test_equal_priority_goes_by_queue_order_timestamp() -> None:
    snap = snapshot([node("n0")], [queue(gpus=8)], [job("b", t=20), job("a", t=10)])
    assert admitted(decide(snap, 100, KUEUE)) == ["ns/a"]


def test_preempted_job_keeps_its_original_place() -> None:
    # "old" was preempted earlier and is pending again with its original timestamp (t=1): it goes
    # before "new" (t=50) although it re-entered the queue later.
    old = job("old", t=1, checkpoint="old-ckpt-1", run_time_s=500)
    snap = snapshot([node("n0")], [queue(gpus=8)], [job("new", t=50), old])
    d = decide(snap, 100, IASS)
    assert [a.job for a in d.of_type(Resume)] == ["ns/old"]
    assert d.of_type(Resume)[0].checkpoint == "old-ckpt-1"

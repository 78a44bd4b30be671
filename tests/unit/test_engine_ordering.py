"""Queue order (ordering.py): priority, then the queue-order timestamp, which a preempted job keeps.

Small scenarios whose right answer can be worked out by hand."""

from __future__ import annotations

import pytest

from queue_controller.engine import PendingReason, Resume, decide
from queue_controller.engine.ordering import order_key, positions, queue_order_key
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


def test_positions_from_plain_values_follow_the_engine_order() -> None:
    # The on-demand ranking (`ckq pending`) and the engine's must agree: same key, same positions.
    waiting = [(1, 30.0, "ns/c"), (5, 50.0, "ns/b"), (1, 10.0, "ns/a"), (1, 10.0, "aa/a"), (-3, 0.0, "ns/z")]
    assert positions(waiting) == {"ns/b": 1, "aa/a": 2, "ns/a": 3, "ns/c": 4, "ns/z": 5}
    assert positions([]) == {}
    jobs = [job("low", priority=1, t=0), job("high", priority=5, t=10), job("mid", priority=1, t=5)]
    assert sorted(jobs, key=order_key) == sorted(jobs, key=lambda j: queue_order_key(j.priority, j.queue_order, j.key))


def test_engine_positions_match_positions_helper() -> None:
    snap = snapshot([node("n0")], [queue(gpus=8)],
                    [job("run", priority=9, t=0), job("b", priority=1, t=20), job("a", priority=1, t=20),
                     job("c", priority=3, t=40)])
    d = decide(snap, 100, KUEUE)
    assert admitted(d) == ["ns/run"]
    waiting = [(j.priority, j.queue_order, j.key) for j in snap.jobs if j.key in d.waiting]
    assert {k: w.position for k, w in d.waiting.items()} == positions(waiting)

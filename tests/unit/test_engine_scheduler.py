"""The loop (scheduler.py): queue heads under StrictFIFO, unknown queues, and the pass for jobs within
nominal quota before the pass for borrowers.

Small scenarios whose right answer can be worked out by hand."""

from __future__ import annotations

import pytest

from queue_controller.engine import PendingReason, Preempt, QueueingStrategy, decide
from tests.unit.engine_factory import FIFO, IASS, KUEUE, admitted, job, node, queue, running, snapshot

pytestmark = pytest.mark.unit


def test_strict_fifo_head_blocks_smaller_jobs() -> None:
    n = node("n0")
    snap = snapshot([n], [queue(gpus=8, queueing_strategy=QueueingStrategy.STRICT_FIFO)],
                    [running(job("r", gpus=4), ["n0"]), job("big", gpus=8, t=1), job("small", gpus=2, t=2)])
    d = decide(snap, 100, KUEUE.model_copy(update={"preemption": FIFO.preemption}))
    assert admitted(d) == []
    assert d.waiting["ns/small"].reason is PendingReason.STRICT_FIFO


def test_best_effort_fifo_lets_smaller_jobs_pass() -> None:
    snap = snapshot([node("n0")], [queue(gpus=8)],
                    [running(job("r", gpus=4), ["n0"]), job("big", gpus=8, t=1), job("small", gpus=2, t=2)])
    d = decide(snap, 100, KUEUE.model_copy(update={"preemption": FIFO.preemption}))
    assert admitted(d) == ["ns/small"]


def test_fifo_policy_blocks_every_queue_head() -> None:
    snap = snapshot([node("n0")], [queue(gpus=8)],
                    [running(job("r", gpus=4), ["n0"]), job("big", gpus=8, t=1), job("small", gpus=2, t=2)])
    assert admitted(decide(snap, 100, FIFO)) == []


def test_unknown_cluster_queue_is_reported() -> None:
    snap = snapshot([node("n0")], [queue()], [job("j", cq="missing")])
    w = decide(snap, 0, FIFO).waiting["ns/j"]
    assert w.reason is PendingReason.UNKNOWN_QUEUE and "missing" in w.message


def test_jobs_within_nominal_quota_go_before_borrowers() -> None:
    # The borrower was reclaimed and is pending again, ahead in queue order; the reclaiming job must
    # still go first, or the two would preempt each other forever.
    qs = [queue("a", gpus=8, cohort="c"), queue("b", gpus=8, cohort="c")]
    borrower = job("borrower", cq="a", gpus=8, pods=2, t=0, checkpoint="borrower-1")
    owner = job("owner", cq="b", gpus=8, t=5)
    d = decide(snapshot([node("n0"), node("n1")], qs, [borrower, owner]), 100, IASS)
    assert admitted(d) == ["ns/owner"]
    assert d.waiting["ns/borrower"].reason is PendingReason.QUOTA
    assert d.of_type(Preempt) == []

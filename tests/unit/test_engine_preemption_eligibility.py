"""Preemption eligibility (preemption/eligibility.py): who may be preempted for whom, and why.

Small scenarios whose right answer can be worked out by hand."""

from __future__ import annotations

import pytest

from queue_controller.engine import (
    PendingReason,
    Preempt,
    PreemptReason,
    ReclaimWithinCohort,
    WithinClusterQueue,
    decide,
)
from queue_controller.engine.preemption.eligibility import eligible
from queue_controller.engine.workspace import Workspace
from tests.unit.engine_factory import FIFO, IASS, KUEUE, job, node, queue, running, snapshot

pytestmark = pytest.mark.unit


def test_never_preempts_equal_priority_under_lower_priority() -> None:
    snap = snapshot([node("n0")], [queue(gpus=8)], [running(job("r", t=0), ["n0"]), job("p", t=5)])
    assert decide(snap, 100, KUEUE).of_type(Preempt) == []


def test_lower_or_newer_equal_priority_preempts_the_newer_job() -> None:
    cq = queue(gpus=8, within_cluster_queue=WithinClusterQueue.LOWER_OR_NEWER_EQUAL_PRIORITY)
    snap = snapshot([node("n0")], [cq], [running(job("newer", t=9), ["n0"]), job("older", t=5)])
    (p,) = decide(snap, 100, KUEUE).of_type(Preempt)
    assert p.victim == "ns/newer"


def test_reclaim_within_cohort_takes_back_lent_quota() -> None:
    qs = [queue("a", gpus=8, cohort="c"), queue("b", gpus=8, cohort="c")]
    borrower = running(job("a2", cq="a", t=1, priority=100), ["n1"])
    snap = snapshot([node("n0"), node("n1")], qs,
                    [running(job("a1", cq="a", t=0), ["n0"]), borrower, job("b1", cq="b", t=5, priority=0)])
    d = decide(snap, 100, KUEUE)
    (p,) = d.of_type(Preempt)
    assert p.reason is PreemptReason.IN_COHORT_RECLAMATION and p.beneficiary == "ns/b1"
    assert p.victim in ("ns/a1", "ns/a2")
    assert d.waiting["ns/b1"].reason is PendingReason.WAITING_FOR_PREEMPTION


def test_reclaim_lower_priority_spares_higher_priority_borrowers() -> None:
    qs = [queue("a", gpus=8, cohort="c"), queue("b", gpus=8, cohort="c")]
    policy = KUEUE.model_copy(update={"preemption": KUEUE.preemption.model_copy(
        update={"reclaim_within_cohort": ReclaimWithinCohort.LOWER_PRIORITY})})
    snap = snapshot([node("n0"), node("n1")], qs,
                    [running(job("a1", cq="a", priority=9), ["n0"]), running(job("a2", cq="a", priority=9), ["n1"]),
                     job("b1", cq="b", t=5, priority=0)])
    assert decide(snap, 100, policy).of_type(Preempt) == []


def test_min_runtime_protects_young_jobs() -> None:
    policy = IASS.model_copy(update={"preemption": IASS.preemption.model_copy(update={"min_runtime_seconds": 600})})
    snap = snapshot([node("n0")], [queue(gpus=8)],
                    [running(job("young"), ["n0"], started_at=50), job("high", priority=10, t=1)])
    assert decide(snap, 100, policy).of_type(Preempt) == []


def test_fifo_never_preempts() -> None:
    snap = snapshot([node("n0")], [queue(gpus=8)], [running(job("low"), ["n0"]), job("high", priority=10, t=1)])
    assert decide(snap, 100, FIFO).of_type(Preempt) == []


# ---- the module alone -------------------------------------------------------------------------------

def test_eligible_alone() -> None:
    qs = [queue("a", gpus=8, cohort="c"), queue("b", gpus=8, cohort="c")]
    ws = Workspace(snapshot([node("n0")], qs, []), 100.0, KUEUE)
    b, bq = job("b1", cq="b", priority=1), ws.queues["b"]
    lender = running(job("a1", cq="a", priority=5), ["n0"])
    # kueue reclaims from any borrowing queue of the cohort, whatever the priority; never from a lender.
    assert eligible(ws, b, bq, lender, {"a": True, "b": False}) is PreemptReason.IN_COHORT_RECLAMATION
    assert eligible(ws, b, bq, lender, {"a": False, "b": False}) is None
    same_queue_lower = running(job("b0", cq="b", priority=0), ["n0"])
    assert eligible(ws, b, bq, same_queue_lower, {}) is PreemptReason.IN_CLUSTER_QUEUE
    same_queue_equal = running(job("b2", cq="b", priority=1, t=9), ["n0"])
    assert eligible(ws, b, bq, same_queue_equal, {}) is None

"""Reservations and backfill (backfill.py): EASY, and checkpoint-aware backfill under iass.

Small scenarios whose right answer can be worked out by hand."""

from __future__ import annotations

import math

import pytest

from queue_controller.engine import Admit, PendingReason, Preempt, PreemptMode, PreemptReason, decide
from queue_controller.engine.backfill import may_start_now, reserve, run_length
from queue_controller.engine.fit import Fit, find_fit
from queue_controller.engine.workspace import Workspace
from tests.unit.engine_factory import EASY, IASS, admitted, job, node, queue, running, snapshot

pytestmark = pytest.mark.unit


def test_a_job_blocked_by_its_queues_own_quota_still_gets_a_reservation() -> None:
    # Quota equal to capacity: the cluster is full and so is the quota; EASY still reserves.
    r = running(job("r", gpus=8, runtime_estimate_s=100), ["n0"], started_at=0)
    big = job("big", gpus=8, t=1, runtime_estimate_s=100)
    d = decide(snapshot([node("n0")], [queue(gpus=8)], [r, big]), 10, EASY)
    assert d.waiting["ns/big"].reason is PendingReason.RESERVATION
    assert d.waiting["ns/big"].reserved_start == pytest.approx(100)


def _easy_scene(short_estimate: float, long_checkpointable: bool) -> tuple[list, list]:
    # One 8-GPU node. r runs on 6 GPUs until t=100. big (8 GPUs) is blocked: reserved for t=100.
    r = running(job("r", gpus=6, runtime_estimate_s=100), ["n0"], started_at=0)
    big = job("big", gpus=8, t=1, runtime_estimate_s=50)
    # short arrives 8 s after big: behind it under iass too, whose queue order credits requested work
    # (big: 20 s x 8 GPUs x 50 s = 2.2 s; short: at most 20 s x 2 GPUs x 500 s = 5.6 s).
    short = job("short", gpus=2, t=9, runtime_estimate_s=short_estimate, checkpointable=long_checkpointable)
    return [node("n0")], [r, big, short]


def test_easy_backfills_a_job_that_ends_before_the_reservation() -> None:
    nodes, jobs = _easy_scene(short_estimate=80, long_checkpointable=False)
    d = decide(snapshot(nodes, [queue(gpus=64)], jobs), 10, EASY)
    assert d.waiting["ns/big"].reason is PendingReason.RESERVATION
    assert d.waiting["ns/big"].reserved_start == pytest.approx(100)
    assert admitted(d) == ["ns/short"]
    assert not d.of_type(Admit)[0].backfill


def test_easy_refuses_a_job_that_would_delay_the_reservation() -> None:
    nodes, jobs = _easy_scene(short_estimate=500, long_checkpointable=False)
    d = decide(snapshot(nodes, [queue(gpus=64)], jobs), 10, EASY)
    assert admitted(d) == []
    assert d.waiting["ns/short"].reason is PendingReason.BACKFILL_BLOCKED


def test_iass_backfills_a_checkpointable_job_past_the_reservation() -> None:
    nodes, jobs = _easy_scene(short_estimate=500, long_checkpointable=True)
    d = decide(snapshot(nodes, [queue(gpus=64)], jobs), 10, IASS)
    (a,) = d.of_type(Admit)
    assert a.job == "ns/short" and a.backfill


def test_iass_does_not_backfill_past_a_reservation_without_a_checkpoint() -> None:
    nodes, jobs = _easy_scene(short_estimate=500, long_checkpointable=False)
    assert admitted(decide(snapshot(nodes, [queue(gpus=64)], jobs), 10, IASS)) == []


def test_backfill_may_use_capacity_the_reservation_does_not_need() -> None:
    # big needs 6 of the 8 GPUs at t=100, so 2 GPUs stay free for a job of any length.
    r = running(job("r", gpus=6, runtime_estimate_s=100), ["n0"], started_at=0)
    big = job("big", gpus=6, t=1, runtime_estimate_s=50)
    long = job("long", gpus=2, t=2, runtime_estimate_s=10_000, checkpointable=False)
    blocker = running(job("r2", gpus=2, runtime_estimate_s=100), ["n0"], started_at=0)
    d = decide(snapshot([node("n0"), node("n1", gpus=0)], [queue(gpus=64)], [r, blocker, big, long]), 10, EASY)
    assert d.waiting["ns/big"].reason is PendingReason.RESERVATION
    assert admitted(d) == []  # now nothing is free at all
    d2 = decide(snapshot([node("n0")], [queue(gpus=64)], [r, big, long]), 10, EASY)
    assert admitted(d2) == ["ns/long"]


def test_backfilled_job_is_vacated_by_checkpoint_when_the_reservation_comes_due() -> None:
    # The backfilled job has equal priority to the waiting one: only its backfill flag makes it a victim.
    bf = running(job("bf", gpus=4, t=2), ["n0"], started_at=10, backfilled=True)
    waiting = job("big", gpus=8, t=1)
    d = decide(snapshot([node("n0")], [queue(gpus=64)], [bf, waiting]), 100, IASS)
    (p,) = d.of_type(Preempt)
    assert (p.victim, p.reason, p.mode) == ("ns/bf", PreemptReason.RESERVATION_DUE, PreemptMode.CHECKPOINT)


# ---- the module alone -------------------------------------------------------------------------------

def test_reserve_and_may_start_now_alone() -> None:
    nodes, jobs = _easy_scene(short_estimate=80, long_checkpointable=False)
    ws = Workspace(snapshot(nodes, [queue(gpus=64)], jobs), 10, EASY)
    cq = ws.queues["cq"]
    assert run_length(ws, job("x", runtime_estimate_s=50)) == 50
    assert run_length(ws, job("unknown")) == math.inf
    assert reserve(ws, jobs[1], cq) == pytest.approx(100)
    short, long = job("s", gpus=2, t=2, runtime_estimate_s=80), job("l", gpus=2, t=2, runtime_estimate_s=500)
    for j, expected in ((short, (True, False)), (long, (False, False))):
        fit = find_fit(ws, j, cq, commit=False)
        assert isinstance(fit, Fit)
        assert may_start_now(ws, j, fit) == expected
    # Under iass a checkpointable job may start anyway, opportunistically.
    ws_iass = Workspace(snapshot(nodes, [queue(gpus=64)], jobs), 10, IASS)
    reserve(ws_iass, jobs[1], ws_iass.queues["cq"])
    fit = find_fit(ws_iass, long, ws_iass.queues["cq"], commit=False)
    assert isinstance(fit, Fit) and may_start_now(ws_iass, long, fit) == (True, True)
    # But not past a reservation whose holder could not vacate it (ReservationDue): a job ahead of big.
    early = job("e", gpus=2, t=0, runtime_estimate_s=500)
    fit = find_fit(ws_iass, early, ws_iass.queues["cq"], commit=False)
    assert isinstance(fit, Fit) and may_start_now(ws_iass, early, fit) == (False, False)

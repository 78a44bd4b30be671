"""One decision cycle: `decide(snapshot, now, policy) -> Decisions`. This module is only the loop.

The cycle walks pending jobs in queue order once. Each job either fits now (quota in its ClusterQueue
and a gang placement on concrete nodes) and is admitted or resumed, or it may make room by preemption,
or it may get a reserved start (backfill), or it waits with a reason. Capacity only shrinks during the
walk: preempted victims keep their resources until they are actually gone, and the beneficiary is
admitted by a later cycle, so one cycle never over-commits a node or a quota.

The rules live in their own modules, over the cycle's state in `workspace.py`: `fit.py` (flavors and
gang placement within quota), `preemption/` (eligibility, victim order, minimal victim set),
`backfill.py` (reservations, and whether a job may start ahead of them), `periodic_checkpoints.py`,
`fair_sharing.py` (the order in which queues take turns, under fair sharing).
"""

from __future__ import annotations

import gc
from collections.abc import Iterable
from operator import attrgetter

from queue_controller.engine.backfill import hold_in_profiles, may_start_now, reserve, run_length
from queue_controller.engine.carry import Carry
from queue_controller.engine.decisions import Admit, Decisions, PendingReason, Resume, Waiting
from queue_controller.engine.fair_sharing import fair_order
from queue_controller.engine.fit import UNSEEN, Fit, find_fit, inadmissible, release
from queue_controller.engine.ordering import credited
from queue_controller.engine.periodic_checkpoints import periodic_checkpoints
from queue_controller.engine.policy import Policy
from queue_controller.engine.preemption.victim_set import preempt_for
from queue_controller.engine.profile import INF
from queue_controller.engine.snapshot import GPU, ClusterQueue, Job, Snapshot
from queue_controller.engine.workspace import NEEDS_ROOM, QueueState, Running, WaitReason, Workspace

_key_of = attrgetter("key")
_queue_of = attrgetter("cluster_queue")

# What `decide` carries from one cycle to the next when its caller passes no `Carry` of its own.
_CARRY = Carry()


def decide(snapshot: Snapshot, now: float, policy: Policy, carry: Carry | None = None) -> Decisions:
    """Pure and deterministic: the same snapshot, time and policy always give the same decisions.
    `carry`: caches from earlier cycles (carry.py), which make a cycle cheaper and change no decision;
    None: the module's own, shared by every caller that passes none."""
    # A cycle allocates tens of thousands of short-lived objects (tuples, records) beside a snapshot of
    # tens of thousands of long-lived ones. The cyclic garbage collector would walk the whole snapshot
    # several times per cycle and find nothing: the cycle builds no reference cycles, so reference
    # counting frees all of it. Pausing the collector for the cycle saves a third of a large cycle; it
    # changes no decision, and it is restored as it was, whatever happens.
    paused = gc.isenabled()
    if paused:
        gc.disable()
    try:
        return _decide(snapshot, now, policy, _CARRY if carry is None else carry)
    finally:
        if paused:
            gc.enable()


def _decide(snapshot: Snapshot, now: float, policy: Policy, carry: Carry) -> Decisions:
    # The policy's credit for requested work moves jobs' queue-order times (ordering.py), once, for every rule.
    ws = Workspace(credited(snapshot, policy.ordering, carry.credited), now, policy, carry)
    # Like Kueue, jobs that fit within their queue's nominal quota go before jobs that would have to
    # borrow: the first pass defers borrowers, the second takes them in order. Otherwise a borrower
    # that was just reclaimed would be re-admitted ahead of the job that reclaimed it.
    # Under fair sharing the heads of the queues take turns by share instead (fair_sharing.py), and its
    # tournament puts the jobs that stay within nominal quota first by itself.
    if ws.fair:
        _walk(ws, fair_order(ws, ws.pending), None)
    else:
        deferred: list[Job] = []
        _walk(ws, ws.pending, deferred)
        _walk(ws, deferred, None)
    # Waiting records are made at the end, with positions in queue order. Most are as they were in the
    # last cycle: that record is taken again when every field is equal (cheaper than making one).
    # (The lookups per job are done by C iterators, map and zip: this runs over every pending job.)
    positions: dict[str, int] = {}
    position = positions.get
    waiting = ws.out.waiting
    keys = list(map(_key_of, ws.pending))
    for key, q, why, w in zip(keys, map(_queue_of, ws.pending), map(ws.why.get, keys),
                              map(carry.waiting.get, keys), strict=True):
        if why is not None:
            pos = positions[q] = position(q, 0) + 1
            if (w is None or w.position != pos or w.reason is not why[0] or w.message != why[1]
                    or w.reserved_start != why[2]):
                w = Waiting(key, pos, why[0], why[1], why[2])
            waiting[key] = w
    carry.waiting = dict(waiting)
    carry.admissible = {memo for memo, never in ws.inadmissible.items() if never is None}
    periodic_checkpoints(ws)
    return ws.out


def _walk(ws: Workspace, jobs: Iterable[Job], deferred: list[Job] | None) -> None:
    """`_consider` each job in turn. Most of a long queue is decided by the memos: once its queue is
    blocked (StrictFIFO), or has spent its preemption searches and reservations for the cycle, a job of
    a shape already seen waits for the same reason as the first. Those cases, `_consider`'s branches
    taken in the same order, are answered here without a call or a lookup more than they need (10,000
    jobs a cycle pass through this loop)."""
    states: dict[str, QueueState] = {}  # queues that exist and are not stopped, once seen
    saturated: set[str] = set()  # ... that have spent their searches and reservations (`_saturated`)
    # (queue, shape) known admissible and failed in this queue this cycle: its waiting reason, and whether
    # more room would cure it. Both memos only grow and never change an entry, so neither does this.
    failed: dict[tuple[str, int], tuple[WaitReason, bool]] = {}
    failed_get = failed.get
    state_of = states.get
    shape_of = ws.shape_of.get
    shape = ws.shape
    never_get = ws.inadmissible.get
    fit_failed = ws.failed_fit.get
    owners = ws.owners
    whys = ws.why
    first_pass = deferred is not None
    # Each job with its key, queue and carried shape, fetched by C iterators for a list (the usual case:
    # this runs over every pending job); fair sharing's order is produced as the walk goes.
    each: Iterable[tuple[Job, str, str, tuple[Job, int] | None]]
    if isinstance(jobs, list):
        keys = list(map(_key_of, jobs))
        each = zip(jobs, keys, map(_queue_of, jobs), map(shape_of, keys), strict=True)
    else:
        each = ((job, job.key, job.cluster_queue, shape_of(job.key)) for job in jobs)
    for job, key, q, hit in each:
        state = state_of(q)
        if state is not None:
            memo = (q, hit[1] if hit is not None and hit[0] is job else shape(job))
            if state.hard_blocked:
                # Every job of a blocked StrictFIFO queue waits alike, once known admissible.
                why = state.blocked_why
                if why is not None and never_get(memo, UNSEEN) is None:
                    whys[key] = why
                    continue
            elif q in saturated and not (first_pass and state.deferred):
                answer = failed_get(memo)
                if answer is None and never_get(memo, UNSEEN) is None:
                    known = fit_failed(memo)
                    if known is not None:
                        answer = failed[memo] = (_WHY[known], known in NEEDS_ROOM)
                # A shape known admissible that failed in this queue this cycle, and the job is not
                # waiting for victims of its own.
                if answer is not None and (not answer[1] or key not in owners):
                    whys[key] = answer[0]
                    if answer[1]:
                        state.unserved = True
                    if state.strict:
                        state.hard_blocked = True
                    continue
        _consider(ws, job, deferred)
        if state is None:
            cq = ws.queues.get(q)
            if cq is None or cq.stopped:
                continue
            state = states[q] = ws.qstate[q]
        if q not in saturated and _saturated(ws, state):
            saturated.add(q)


def _saturated(ws: Workspace, state: QueueState) -> bool:
    """Whether the queue has spent its preemption searches and reservations for this cycle (it never
    gets them back within the cycle)."""
    return ((not ws.preempting or state.preemption_attempts >= ws.preemption_budget)
            and (not state.backfill or state.reservations >= state.depth))


def _consider(ws: Workspace, job: Job, deferred: list[Job] | None) -> None:
    """Admit, preempt for, reserve for, or explain one pending job. With `deferred` (first pass), a job
    that could only start by borrowing is set aside instead."""
    cq = ws.queues.get(job.cluster_queue)
    if cq is None:
        _wait(ws, job, PendingReason.UNKNOWN_QUEUE, f"ClusterQueue {job.cluster_queue!r} does not exist")
        return
    if cq.stopped:
        _wait(ws, job, PendingReason.QUEUE_STOPPED, f"ClusterQueue {cq.name!r} is stopped")
        return
    # A job its queue can never admit says why, whatever else holds the queue, and holds nothing.
    # (queue, shape) keys the memos of this cycle: inadmissibility and failed fits (equivalence).
    memo = (cq.name, ws.shape(job))
    never = ws.inadmissible.get(memo, UNSEEN)
    if never is UNSEEN:
        never = inadmissible(ws, job, cq)
    if never is not None:
        ws.why[job.key] = never
        return
    state = ws.qstate[cq.name]
    if state.hard_blocked:
        # Every later job of the queue waits alike: one record, shared.
        if state.blocked_why is None:
            state.blocked_why = (PendingReason.STRICT_FIFO,
                                 f"an earlier job blocks StrictFIFO ClusterQueue {cq.name!r}", None)
        ws.why[job.key] = state.blocked_why
        return
    if deferred is not None and state.deferred:
        deferred.append(job)  # keeps queue order behind a deferred head
        return
    # A shape that already failed in this queue this cycle fails again (`find_fit`'s memo, looked up
    # here first because most of a large queue is decided by it).
    known = ws.failed_fit.get(memo)
    if known is not None and (known not in NEEDS_ROOM or (
            (not ws.preempting or state.preemption_attempts >= ws.preemption_budget)
            and (not state.backfill or state.reservations >= state.depth)
            and job.key not in ws.owners)):
        # The queue has spent its preemption searches and reservations for this cycle (and the job is not
        # waiting for victims of its own): it waits for the same reason as the job that failed first, as
        # the long way below would find. Equivalence hashing, as Kueue's, for most of a long queue.
        ws.why[job.key] = _WHY[known]
        if known in NEEDS_ROOM:
            state.unserved = True
        if state.strict:
            state.hard_blocked = True
        return
    fit = known if known is not None else find_fit(ws, job, cq, commit=True)
    if isinstance(fit, Fit):
        if deferred is not None and cq.cohort is not None and ws.ledger.borrowing(cq.name, fit.delta):
            release(ws, job, fit)
            deferred.append(job)
            # The rest of this queue follows it, so borrowing never lets a lower-priority job of the same
            # queue overtake (it would take the room the borrower may just have preempted for).
            state.deferred = True
            return
        ok, opportunistic = may_start_now(ws, job, fit)
        if ok:
            _admit(ws, job, cq, fit, opportunistic)
            return
        release(ws, job, fit)
        _wait(ws, job, PendingReason.BACKFILL_BLOCKED, "fits now, but would delay a reserved job")
        return
    reason = fit
    # Only more room cures a lack of quota or capacity: only such jobs preempt or reserve.
    if reason in NEEDS_ROOM:
        if preempt_for(ws, job, cq, reason):
            _wait(ws, job, PendingReason.WAITING_FOR_PREEMPTION, "room is being made by preemption")
            return
        start = None
        # Quota-blocked jobs get reservations too: when quota equals capacity, a full cluster shows as
        # "quota" first, and the capacity profile still tells when the running jobs free it.
        if state.backfill and state.reservations < state.depth:
            start = reserve(ws, job, cq)
        state.unserved = True
        if start is not None:
            state.reservations += 1
            _wait(ws, job, PendingReason.RESERVATION, f"reserved start at t={start:.0f}", reserved_start=start)
            if state.strict and not state.backfill:
                state.hard_blocked = True
            return
    ws.why[job.key] = _WHY[reason]
    if state.strict:
        state.hard_blocked = True


def _admit(ws: Workspace, job: Job, cq: ClusterQueue, fit: Fit, opportunistic: bool) -> None:
    if job.checkpoint:
        ws.out.actions.append(Resume(job.key, cq.name, job.checkpoint, fit.placement, opportunistic))
    else:
        ws.out.actions.append(Admit(job.key, cq.name, fit.placement, opportunistic))
    hold_in_profiles(ws, fit.by_flavor, run_length(ws, job))
    rem = ws.remaining(job)
    end = INF if rem is None else ws.now + rem
    ws.admitted_now.append(Running(job, fit.delta, [], end, fit.by_flavor))
    if ws.fair:
        ws.charge_share(cq.name, fit.delta)


def _wait(ws: Workspace, job: Job, reason: PendingReason, message: str, reserved_start: float | None = None) -> None:
    ws.why[job.key] = (reason, message, reserved_start)
    if reserved_start is not None and reserved_start > ws.now:
        ws.wake(reserved_start)


_MESSAGES: dict[PendingReason, str] = {
    PendingReason.QUOTA: "not enough quota in the ClusterQueue (or its cohort)",
    PendingReason.CAPACITY: "quota is available but no set of nodes has room for every pod",
    PendingReason.NO_MATCHING_NODES: "no Ready node matches the flavors, node selector and tolerations",
    PendingReason.UNSATISFIABLE: "a pod asks for more than any matching node has",
}

# The same record for every job waiting for one of these reasons.
_WHY: dict[PendingReason, WaitReason] = {reason: (reason, message, None) for reason, message in _MESSAGES.items()}

__all__ = ["GPU", "decide"]

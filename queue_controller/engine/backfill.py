"""Backfill with reservations (EASY), and checkpoint-aware backfill (IASS).

A job blocked on quota or capacity may get a *reserved start*: the earliest time at which, by the running
jobs' runtime estimates, its whole request is free in its flavor for its whole estimated run (`reserve`).
The reservation is held in that flavor's capacity `Profile` (profile.py), and each ClusterQueue grants at
most its reservation depth of them per cycle (1 is EASY; more approaches conservative backfill).

A job that fits now may then start only if it delays no reservation (`may_start_now`): it ends before the
reserved start, or uses capacity the reservation does not need. Only flavors that hold a reservation
constrain it. Under a checkpoint-aware policy a checkpointable job may start anyway, *opportunistically*:
it is vacated by checkpoint when the reservation comes due (preemption's `ReservationDue`).

Whatever starts, or is promised room by preemption, is held in the profiles for its estimated run, so a
later job's reservation sees it (`hold_in_profiles`). Profiles count a flavor's pool as one aggregate, as
classic EASY counts processors; the jobs that start now are still placed on concrete nodes by `fit`.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping, Sequence

from queue_controller.engine.fit import Fit, requested
from queue_controller.engine.ordering import ahead_of, order_key, queue_order_key
from queue_controller.engine.policy import KillFor, PreemptionMode
from queue_controller.engine.preemption.eligibility import eligible
from queue_controller.engine.profile import INF, Profile
from queue_controller.engine.quota import FR
from queue_controller.engine.snapshot import ClusterQueue, Job
from queue_controller.engine.workspace import Running, Workspace


def run_length(ws: Workspace, job: Job) -> float:
    """How long the job holds its room if started now: its remaining estimate (at least a second), or
    forever when unknown."""
    rem = ws.remaining(job)
    return INF if rem is None else max(rem, 1.0)


def profile(ws: Workspace, flavor: str) -> Profile:
    """The flavor's capacity profile, built on first use from what is free now and what the running jobs
    (and the ones admitted so far this cycle) release at their estimated ends."""
    prof = ws.profiles.get(flavor)
    if prof is None:
        pool = ws.cap.pools[flavor]
        free: dict[str, int] = {}
        for name in pool.nodes:
            for r, q in ws.cap.free[name].items():
                free[r] = free.get(r, 0) + q
        releases = [(run.end, run.by_flavor[flavor]) for run in (*ws.running.values(), *ws.admitted_now)
                    if flavor in run.by_flavor and run.end < INF]
        prof = Profile(ws.now, free, releases)
        ws.profiles[flavor] = prof
    return prof


def reserve(ws: Workspace, job: Job, cq: ClusterQueue) -> float | None:
    """Reserve the earliest start at which the job's aggregate request is free in its first usable
    flavor, and hold it in that flavor's profile."""
    for ps in job.pod_sets:
        group = ws.group_for(cq, requested(ps))
        if group is None:
            return None
    # `group` is the last pod set's group here: its flavors are the ones tried.
    flavor = None
    for fq in (group.flavors if group is not None else ()):
        pool = ws.cap.pools.get(fq.name)
        if pool is not None and pool.nodes and not any(
            ws.cap.never_fits(pool, ps.requests) for ps in job.pod_sets
        ):
            flavor = fq.name
            break
    if flavor is None:
        return None
    need = job.total_requests()
    dur = run_length(ws, job)
    # The backfilled jobs this job may vacate when its reservation comes due (`ReservationDue`) leave
    # by then: their room is the reservation's. Counting them as holding it for their whole run (often
    # unknown: forever) would take the reservation away the moment a job backfills past it, and the
    # jobs behind it, no longer held back, would vacate the backfilled job themselves, find the
    # reservation back, not start, and let the backfilled job return: a loop.
    leave = vacatable_backfill(ws, job, cq)
    leave += checkpointable_victims(ws, job, cq, {run.job.key for run, _ in leave})
    quota_at = quota_start(ws, job, cq, flavor, need, leave)
    if quota_at is None:
        return None
    prof = profile(ws, flavor)
    # Their room is free from when they would be gone until their estimated ends: asked about as an
    # extra on the profile, not held in and out of it (each hold would walk the profile's segments).
    # (`at + (end - at)`: where holding them for `end - at` from `at` would have ended, to the bit.)
    early = [(at, at + (run.end - at), run.by_flavor[flavor]) for run, at in leave
             if flavor in run.by_flavor and at < run.end]
    start = prof.earliest_start(need, dur, quota_at, early)
    if start is None:
        return None
    prof.hold(start, dur, need)
    prof.reservations += 1
    prof.holders.append((job.priority, job.queue_order, job.key, ws.share_group(cq.name)))
    return start


def vacatable_backfill(ws: Workspace, job: Job, cq: ClusterQueue) -> list[tuple[Running, float]]:
    """The running backfilled jobs that `job` may vacate (`ReservationDue`: behind it in queue order, in
    its queue or cohort), each with the time it would be gone if vacated now (its checkpoint's cost)."""
    out: list[tuple[Running, float]] = []
    # Its queue's or cohort's running jobs not vacating: its share group's (`Workspace.by_group`, in the
    # order of `ws.running`).
    for run in ws.by_group.get(ws.share_group(cq.name), ()):
        v = run.job
        if not v.backfilled or v.key in ws.claimed or not ahead_of(job, v):
            continue
        out.append((run, ws.now + v.checkpoint_cost_s))
    return out


def checkpointable_victims(ws: Workspace, job: Job, cq: ClusterQueue,
                           skip: set[str]) -> list[tuple[Running, float]]:
    """Under a checkpoint-first policy whose preemptors do not kill for a checkpointable job
    (`killFor: NonCheckpointable`), the running jobs that `job` may preempt by checkpoint, each with the
    time it would be gone (its checkpoint's cost). Such a job reserves because something it may not
    kill is in its way, and it takes the rest of its room by checkpoint once that ends: counting these
    jobs as holding their room to their estimated ends would put its reservation far too late, and let
    work that cannot be checkpointed backfill into room the job will take back much sooner."""
    pre = ws.policy.preemption
    if (pre.mode is not PreemptionMode.CHECKPOINT or pre.kill_for is not KillFor.NON_CHECKPOINTABLE
            or not job.checkpointable):
        return []
    members = ws.ledger.cohort_members(cq.cohort) if cq.cohort is not None else [cq.name]
    borrowing = {name: ws.ledger.borrowing(name) for name in members}
    out: list[tuple[Running, float]] = []
    # Only the jobs of its queue or cohort may be eligible, and those not vacating are its share group's
    # (`Workspace.by_group`, in the order of `ws.running`); of them, the checkpointable ones not being
    # checkpointed, picked once per cycle and group.
    group = ws.share_group(cq.name)
    runs = ws.checkpointable_runs.get(group)
    if runs is None:
        runs = ws.checkpointable_runs[group] = [
            run for run in ws.by_group.get(group, ()) if run.job.checkpointable and not run.job.checkpointing]
    claimed = ws.claimed
    for run in runs:
        v = run.job
        if v.key in claimed or v.key in skip or eligible(ws, job, cq, v, borrowing) is None:
            continue
        out.append((run, ws.now + v.checkpoint_cost_s))
    return out


def quota_start(ws: Workspace, job: Job, cq: ClusterQueue, flavor: str, need: Mapping[str, int],
                leave: Sequence[tuple[Running, float]] = ()) -> float | None:
    """The earliest time at which the job's quota in `flavor` is free, by the estimated ends of the jobs
    that hold quota in its queue (or cohort), or None if never (a job without an estimate holds it).

    The capacity profile only knows nodes. Where quota is smaller than capacity (a queue that borrows
    from a cohort, a queue with less nominal quota than its flavor's nodes), the nodes may be free long
    before the quota is: a reservation at that time is a promise the job cannot keep. It still blocks
    the jobs behind it from starting (they "would delay" it), so the room stays empty or goes to a
    backfilled job, which a job ahead of it then vacates (`ReservationDue`) without being able to start
    itself, and the backfilled job returns: a loop. So a reservation is at the later of the two times."""
    ledger = ws.ledger
    delta = {(flavor, r): q for r, q in need.items() if q > 0 and ledger.covers(cq.name, flavor, r)}
    if ledger.fits(cq.name, delta):
        return ws.now
    members = set(ledger.cohort_members(cq.cohort)) if cq.cohort is not None else {cq.name}
    # Victims release their quota when they are gone; the preemptor they leave for holds only its excess
    # over them in the ledger (preemption's `_hold_room`), so the walk below lets it release no more than
    # the ledger holds. Its use of the victims' room meanwhile is held in the capacity profile, which the
    # reservation must fit as well.
    early = {run.job.key: at for run, at in leave}
    # In order of (end, key): the running jobs as sorted once per cycle and share group, less the ones
    # whose end moved (victims, and the jobs that may leave early for this job), merged with those and
    # with the jobs admitted this cycle. The walk below usually stops after a few.
    moved = {run.job.key: run for run in ws.ended_early}
    moved.update((run.job.key, run) for run, _ in leave)
    base = _release_order(ws, cq)
    kept = (e for e in base if e[1] not in moved) if moved else iter(base)
    changed = sorted(((min(run.end, early.get(key, INF)), key, run) for key, run in moved.items()
                      if run.delta and run.job.cluster_queue in members), key=_end_key)
    admitted = sorted(((run.end, run.job.key, run) for run in ws.admitted_now
                       if run.delta and run.job.cluster_queue in members), key=_end_key)
    releases = heapq.merge(kept, changed, admitted, key=_end_key)
    undo: list[tuple[str, dict[FR, int]]] = []
    at: float | None = None
    try:
        for end, _, run in releases:
            if end == INF:
                break
            q = run.job.cluster_queue
            usage = ledger.usage[q]
            # At most what the ledger holds for it (a preemptor's room is only partly in the ledger while
            # its victims still are).
            gone = {fr: min(n, usage.get(fr, 0)) for fr, n in run.delta.items()}
            ledger.remove(q, gone)
            undo.append((q, gone))
            if ledger.fits(cq.name, delta):
                at = end
                break
    finally:
        for q, gone in reversed(undo):
            ledger.add(q, gone)
    return at


_Release = tuple[float, str, Running]


def _end_key(e: _Release) -> tuple[float, str]:
    return e[0], e[1]


def _release_order(ws: Workspace, cq: ClusterQueue) -> list[_Release]:
    """The running jobs (admitted before this cycle) that hold quota in `cq`'s queue or cohort (its share
    group), by (estimated end as the cycle began, key): sorted once per cycle, for every share group in
    one pass over the running jobs."""
    if not ws.release_order:
        groups: dict[str, list[_Release]] = {}
        share_group = ws.share_group
        for run in ws.running.values():
            if run.delta:  # holds quota (as `quota_start` asks)
                groups.setdefault(share_group(run.job.cluster_queue), []).append((run.end, run.job.key, run))
        for order in groups.values():
            order.sort(key=_end_key)
        ws.release_order = groups
    return ws.release_order.get(ws.share_group(cq.name), [])


def may_start_now(ws: Workspace, job: Job, fit: Fit) -> tuple[bool, bool]:
    """(may start now, is opportunistic). Only flavors holding reservations constrain it."""
    dur = run_length(ws, job)
    profiles = ws.profiles
    violates = any(
        f in profiles and profiles[f].reservations and not profiles[f].fits(ws.now, dur, need)
        for f, need in fit.by_flavor.items()
    )
    if not violates:
        return True, False
    policy = ws.policy
    ok = (policy.backfill.checkpoint_aware and job.checkpointable
          and policy.preemption.mode is PreemptionMode.CHECKPOINT
          and all(_may_vacate(ws, holder, job) for f in fit.by_flavor if f in profiles
                  for holder in profiles[f].holders))
    return ok, ok


def _may_vacate(ws: Workspace, holder: tuple[int, float, str, str], job: Job) -> bool:
    """Whether the job holding a reservation may vacate `job` when it comes due (`ReservationDue`: ahead of
    it in queue order, in its queue or cohort). A job may backfill past a reservation opportunistically only
    if so: under fair sharing, or in the borrowers' pass, a job can come later in the walk than a
    reservation's holder and still be ahead of it in queue order; the holder could never take its room back,
    its reservation would lapse, and the jobs behind it would vacate the backfilled job and loop."""
    ahead = queue_order_key(holder[0], holder[1], holder[2]) < order_key(job)
    return ahead and holder[3] == ws.share_group(job.cluster_queue)


def hold_in_profiles(ws: Workspace, by_flavor: Mapping[str, Mapping[str, int]], duration: float) -> None:
    """Hold a job's aggregate requests from now for `duration` in the profiles built so far (a flavor
    without a profile yet sees the job when its profile is built, through `ws.admitted_now`)."""
    for f, need in by_flavor.items():
        if f in ws.profiles:
            ws.profiles[f].hold(ws.now, duration, need)

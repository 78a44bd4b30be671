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

from collections.abc import Mapping

from queue_controller.engine.fit import Fit, requested
from queue_controller.engine.policy import PreemptionMode
from queue_controller.engine.profile import INF, Profile
from queue_controller.engine.snapshot import ClusterQueue, Job
from queue_controller.engine.workspace import Workspace


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
    prof = profile(ws, flavor)
    start = prof.earliest_start(need, dur)
    if start is None:
        return None
    prof.hold(start, dur, need)
    prof.reservations += 1
    return start


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
          and policy.preemption.mode is PreemptionMode.CHECKPOINT)
    return ok, ok


def hold_in_profiles(ws: Workspace, by_flavor: Mapping[str, Mapping[str, int]], duration: float) -> None:
    """Hold a job's aggregate requests from now for `duration` in the profiles built so far (a flavor
    without a profile yet sees the job when its profile is built, through `ws.admitted_now`)."""
    for f, need in by_flavor.items():
        if f in ws.profiles:
            ws.profiles[f].hold(ws.now, duration, need)

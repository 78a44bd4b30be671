"""The minimal victim set: which running jobs to preempt so that a pending job fits, and holding the room.

`preempt_for` is asked once per blocked job (quota or capacity). It gathers the eligible candidates in
the preemptor's queue or cohort, plus jobs already being vacated, and sorts them by `VictimOrder`. Then,
inside a what-if (the workspace's `lift` / `restore`), it lifts candidates in that order until the job
fits, and walks the chosen set backwards, most expensive first, putting back any victim without which the
job still fits (Kueue's reverse walk). The job must also be allowed to *start* that way: not ahead of a
reservation it may not delay, and not by borrowing when the room comes from reclaiming quota (reclaim is
only for taking back one's own nominal quota). Under a checkpoint-first policy a victim that would be
killed is a candidate only when the preemptor gains more than it loses, and, under `killFor:
NonCheckpointable`, only for a preemptor that cannot be checkpointed itself (a checkpointable one
reserves and waits for such a victim instead: docs/concepts.md).

When it works, the room is held for the rest of the cycle: the victims keep their resources until they
are gone, and the part already free is consumed now, or a later job would take it and the preemptor
would preempt again and again. The preemptor counts as admitted for backfill (it starts when its
victims are gone), and one `Preempt` decision per new victim goes out, in victim order.

Cost bounds: a queue gets `preemptionAttemptsPerQueue` searches per cycle (a job waiting for its own
victims is always looked at, outside that budget), a shape that found no victims is not searched again
at the same or a lower priority, and the full fit per added victim is skipped while the job's dominant
resource cannot be free yet even in total in any flavor it could use.

Under fair sharing, in a cohort, `fair_share.fair_search` picks the victims among the same candidates,
in the same victim order within each queue, by the queues' shares; the minimal-set walk, holding the
room and the decisions are the same.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from itertools import chain
from operator import itemgetter

from queue_controller.engine.backfill import hold_in_profiles, may_start_now
from queue_controller.engine.decisions import PendingReason, Preempt, PreemptMode, PreemptReason
from queue_controller.engine.fair_sharing import charge_estimate
from queue_controller.engine.fit import Fit, find_fit, pool_free
from queue_controller.engine.placement import dominant_resource
from queue_controller.engine.policy import KillFor, PreemptionMode
from queue_controller.engine.preemption.eligibility import eligible
from queue_controller.engine.preemption.fair_share import StillFair, fair_search
from queue_controller.engine.preemption.victim_order import Candidate, VictimOrder, lost_work, weight
from queue_controller.engine.profile import INF
from queue_controller.engine.snapshot import ClusterQueue, Job
from queue_controller.engine.workspace import NEEDS_ROOM, Running, Workspace

_NEVER = -(2**62)  # below every priority: no failed search recorded for a shape


# A running job's place in the victim order, as `VictimOrder`'s fields in a tuple (compared in C; the
# dataclass is made only for the candidates a search actually takes: `_iter_candidates`).
_Rank = tuple[bool, bool, bool, float, int, float, str]


def _ranked(ws: Workspace, group: str) -> list[tuple[_Rank, Running, PreemptMode, float]]:
    """The running jobs of a share group in victim order, with how each would be preempted and what
    that would cost. None of it depends on the preemptor, so it is computed once per cycle and group;
    `candidates` only filters it."""
    ranked: list[tuple[_Rank, Running, PreemptMode, float]] | None = ws.victim_ranking.get(group)
    if ranked is None:
        ranked = []
        checkpoint_first = ws.policy.preemption.mode is PreemptionMode.CHECKPOINT
        now, policy, kill = ws.now, ws.policy, PreemptMode.KILL
        for run in ws.by_group.get(group, ()):
            v = run.job
            mode, cost = lost_work(v, now, policy)
            # `VictimOrder.running`'s fields.
            rank = (True, False, checkpoint_first and mode is kill, cost, v.priority,
                    -(v.admitted_at or v.started_at or 0.0), v.key)
            ranked.append((rank, run, mode, cost))
        ranked.sort(key=itemgetter(0))
        ws.victim_ranking[group] = ranked
    return ranked


def candidates(ws: Workspace, job: Job, cq: ClusterQueue) -> list[Candidate]:
    """Every candidate victim for `job`, in victim order."""
    return list(_iter_candidates(ws, job, cq))


def _iter_candidates(ws: Workspace, job: Job, cq: ClusterQueue) -> Iterator[Candidate]:
    """The candidates in victim order, produced lazily: a search usually stops after a few, and asking
    every running job of a cohort whether it is eligible is most of the cost of an attempt. Nothing
    eligibility reads changes during the what-if (which queues borrow is taken here, before it)."""
    leaving: list[Candidate] = []
    for run in ws.vacating:
        # Already leaving: free room at no extra cost, for the job it was preempted for while that job
        # still waits (or for anyone once it no longer does), and ahead of all other candidates.
        owner = run.job.preempted_for
        if run.job.key in ws.claimed or (owner is not None and owner != job.key and owner in ws.waiting):
            continue
        leaving.append(Candidate(run, None, PreemptMode.KILL, 0.0, VictimOrder.leaving(run.job, job.key)))
    group = ws.share_group(cq.name)
    members = ws.ledger.cohort_members(cq.cohort) if cq.cohort is not None else [cq.name]
    borrowing = {name: ws.ledger.borrowing(name) for name in members}
    # Jobs already leaving order before every new victim (`VictimOrder.new_victim`), so they go first,
    # sorted, and the running ones follow in their precomputed order: that is the whole victim order.
    leaving.sort(key=lambda c: c.order)
    yield from leaving
    claimed = ws.claimed
    victims = ws.victims
    # Under a checkpoint-first policy a victim that would be killed must be worth it: the work it loses
    # (its progress since its last checkpoint, in GPU-seconds) may not exceed what the preemptor gains by
    # starting now instead of when that victim ends by its estimate (its GPUs x the victim's time left).
    gain = weight(job)
    # And under `killFor: NonCheckpointable` only a preemptor that cannot be checkpointed kills at all.
    may_kill = ws.policy.preemption.kill_for is KillFor.ANY or not job.checkpointable
    for rank, run, mode, cost in _ranked(ws, group):
        v = run.job
        key = v.key
        if key in claimed or key in victims or v.checkpointing:
            continue
        reason = eligible(ws, job, cq, v, borrowing)
        if reason is None:
            continue
        if rank[2] and (not may_kill or cost > gain * _left(ws, v)):  # it would be killed
            continue  # killing it would throw away more than the preemptor gains by not waiting for it
        yield Candidate(run, reason, mode, cost, VictimOrder(*rank))


def _left(ws: Workspace, job: Job) -> float:
    """A running job's estimated seconds left (forever when unknown)."""
    rem = ws.remaining(job)
    if rem is None:
        return INF
    since = job.started_at if job.started_at is not None else ws.now
    return max(rem - (ws.now - since), 0.0)


def _any_set(victims: Sequence[Candidate]) -> bool:
    return True  # without fair sharing, any set that lets the job start will do


def preempt_for(ws: Workspace, job: Job, cq: ClusterQueue, reason: PendingReason) -> bool:
    """Plan the cheapest set of victims that lets `job` fit. True when the job now only waits for
    victims (new or already being vacated) to go."""
    if reason not in NEEDS_ROOM or not ws.preempting:
        return False
    state = ws.qstate[cq.name]
    own = job.key in ws.owners  # waiting for its own victims: always looked at, outside the budget
    if state.preemption_attempts >= ws.policy.preemption_attempts_per_queue and not own:
        return False
    shape = (cq.name, ws.shape(job))
    if ws.failed_preemption.get(shape, _NEVER) >= job.priority and not own:
        return False
    if not own:
        state.preemption_attempts += 1

    cands = _iter_candidates(ws, job, cq)
    first = next(cands, None)
    if first is None:
        ws.failed_preemption[shape] = max(ws.failed_preemption.get(shape, _NEVER), job.priority)
        return False

    # A full fit (quota, then every node) per added victim is the costly part. Skip it while the
    # job's dominant resource cannot be free yet, even in total, in any flavor's pool it could use.
    dom = dominant_resource(job.total_requests())
    need = job.total_requests().get(dom, 0)
    rooms = pool_free(ws, job, cq, dom)

    ws.cap.speculative += 1
    chosen: list[Candidate] = []

    def shift(cand: Candidate, sign: int) -> None:
        """Count a victim's share of the dominant resource in (1) or out of (-1) the rooms."""
        for node, req in cand.run.nodes:
            q = req.get(dom, 0)
            if q:
                for room in rooms:
                    if node in room.nodes:
                        room.free += sign * q

    def add(cand: Candidate) -> bool | None:
        """Lift one more victim. True: the job fits now; False: not yet; None: it fits but may not start
        this way, and more victims will not change that."""
        ws.lift(cand.run)
        chosen.append(cand)
        shift(cand, 1)
        if all(room.free < need for room in rooms):
            return False
        return _fits_after(ws, job, cq, chosen)

    still_fair: StillFair = _any_set
    try:
        fits = False
        if ws.fair and cq.cohort is not None:
            # Fair sharing: which queues' jobs may go, and in which order, is decided by the shares.
            verdict, still_fair = fair_search(ws, job, cq, chain((first,), cands), add,
                                              across=own or not state.unserved)
            fits = verdict is True
        else:
            for cand in chain((first,), cands):
                verdict = add(cand)
                if verdict is None:
                    break  # it fits, but may not start (reservation, or reclaim would borrow): more won't help
                if verdict:
                    fits = True
                    break
        hold: Fit | PendingReason | None = None
        if fits:
            # Drop victims that turn out unnecessary, most expensive first (Kueue's reverse walk).
            for cand in sorted(chosen, key=lambda c: c.order, reverse=True):
                rest = [c for c in chosen if c is not cand]
                if not rest:
                    # Without any victim the job is where it was when its fit failed (nothing has been
                    # freed since: the cycle only takes room): the last victim stays, without a fit.
                    break
                ws.restore(cand.run)
                shift(cand, -1)
                # Without it, no pool may have the job's dominant resource free even in total: then
                # it does not fit, and the full fit is not needed to say so (as in `add`).
                if (any(room.free >= need for room in rooms) and _fits_after(ws, job, cq, rest) is True
                        and still_fair(rest)):
                    chosen = rest
                else:
                    ws.lift(cand.run)
                    shift(cand, 1)
            hold = find_fit(ws, job, cq, commit=False)
        for cand in chosen:
            ws.restore(cand.run)
    finally:
        ws.cap.speculative -= 1
    if isinstance(hold, Fit):
        _hold_room(ws, job, cq, hold, chosen)
    if not fits:
        ws.failed_preemption[shape] = max(ws.failed_preemption.get(shape, _NEVER), job.priority)
        return False
    if ws.fair:
        # Fair sharing's book: the preemptor's queue counts it from now on, the victims' queues no longer
        # count them (the ones already vacating were taken out when the cycle began).
        ws.charge_share(cq.name, hold.delta if isinstance(hold, Fit) else charge_estimate(ws, job, cq))
        for cand in chosen:
            if cand.reason is not None:
                ws.charge_share(cand.run.job.cluster_queue, cand.run.delta, -1)
    for cand in sorted(chosen, key=lambda c: c.order):
        run = cand.run
        key = run.job.key
        ws.claimed.add(key)
        if cand.reason is None:
            continue  # already vacating
        ws.victims.add(key)
        ws.out.actions.append(Preempt(key, cand.mode, job.key, cand.reason, round(cand.lost_work, 3)))
        run.end = ws.now + run.job.checkpoint_cost_s
        ws.ended_early.append(run)
    return True


def _fits_after(ws: Workspace, job: Job, cq: ClusterQueue, victims: list[Candidate]) -> bool | None:
    """With `victims` lifted. True: the job fits. False: not yet. None: it fits but may not start this
    way, and more victims will not change that."""
    fit = find_fit(ws, job, cq, commit=False)
    if not isinstance(fit, Fit):
        return False
    if not may_start_now(ws, job, fit)[0]:
        return None  # it would start ahead of a reservation it may not delay: preempting is pointless
    if (PreemptReason.IN_COHORT_RECLAMATION in [c.reason for c in victims]
            and not ws.ledger.within_nominal(cq.name, fit.delta)):
        return None  # reclaiming is only for taking back one's own nominal quota, never to borrow
    return True


def _hold_room(ws: Workspace, job: Job, cq: ClusterQueue, hold: Fit, victims: list[Candidate]) -> None:
    """Hold the room being made for the rest of the cycle (on top of the victims, who keep it until they
    are gone): a later job taking the part already free would leave the preemptor unable to start once
    the victims leave, and it would preempt again and again."""
    reqs = {ps.name: ps.requests for ps in job.pod_sets}
    for pl in hold.placement:
        for node in pl.nodes:
            ws.cap.consume(node, reqs[pl.name])
    # Quota: only what the victims' own usage (still counted until they are gone) does not cover.
    excess = dict(hold.delta)
    for cand in victims:
        for k, q in cand.run.delta.items():
            if k in excess:
                excess[k] -= q
    ws.ledger.add(cq.name, {k: q for k, q in excess.items() if q > 0})
    # For backfill, the preemptor is as good as admitted: it starts when its victims are gone and
    # runs for its estimate, so reservations see that room come back.
    starts = ws.now + max((c.run.job.checkpoint_cost_s for c in victims), default=0.0)
    rem = ws.remaining(job)
    end = INF if rem is None else starts + max(rem, 1.0)
    ws.admitted_now.append(Running(job, hold.delta, [], end, hold.by_flavor))
    hold_in_profiles(ws, hold.by_flavor, end - ws.now)

"""One decision cycle: `decide(snapshot, now, policy) -> Decisions`.

The cycle walks pending jobs in queue order once. Each job either fits now (quota in its ClusterQueue
and a gang placement on concrete nodes) and is admitted or resumed, or it may make room by preemption,
or it may get a reserved start (backfill), or it waits with a reason. Capacity only shrinks during the
walk: preempted victims keep their resources until they are actually gone, and the beneficiary is
admitted by a later cycle, so one cycle never over-commits a node or a quota.
"""

from __future__ import annotations

from queue_controller.engine.backfill import hold_in_profiles, may_start_now, reserve, run_length
from queue_controller.engine.decisions import (
    Admit,
    Checkpoint,
    CheckpointReason,
    Decisions,
    PendingReason,
    Preempt,
    PreemptMode,
    PreemptReason,
    Resume,
    Waiting,
)
from queue_controller.engine.fit import Fit, find_fit, pool_free, release
from queue_controller.engine.ordering import ahead_of
from queue_controller.engine.placement import dominant_resource
from queue_controller.engine.policy import Policy, PreemptionMode
from queue_controller.engine.profile import INF
from queue_controller.engine.snapshot import (
    GPU,
    ClusterQueue,
    Job,
    ReclaimWithinCohort,
    Snapshot,
    WithinClusterQueue,
)
from queue_controller.engine.workspace import Running, Workspace


def decide(snapshot: Snapshot, now: float, policy: Policy) -> Decisions:
    """Pure and deterministic: the same snapshot, time and policy always give the same decisions."""
    return _Cycle(snapshot, now, policy).run()


def _weight(job: Job) -> float:
    """Size used to turn seconds into lost work: GPUs, or CPU cores for CPU-only jobs."""
    gpus = job.gpus
    if gpus:
        return gpus / 1000.0
    return max(job.total_requests().get("cpu", 0) / 1000.0, 0.001)


class _Cycle(Workspace):
    def __init__(self, snapshot: Snapshot, now: float, policy: Policy) -> None:
        super().__init__(snapshot, now, policy)
        self._borrowing: dict[str, bool] = {}

    # ---- preemption -------------------------------------------------------------------------------

    def _victim_cost(self, job: Job) -> tuple[PreemptMode, float]:
        w = _weight(job)
        if self.policy.preemption.mode is PreemptionMode.CHECKPOINT and job.checkpointable:
            return PreemptMode.CHECKPOINT, (job.checkpoint_cost_s + job.restore_cost_s) * w
        since = job.started_at if job.started_at is not None else self.now
        if job.last_checkpoint_at is not None and job.last_checkpoint_at > since:
            since = job.last_checkpoint_at
        restore = job.restore_cost_s if job.checkpoint else 0.0
        return PreemptMode.KILL, (max(self.now - since, 0.0) + restore) * w

    def _candidate(self, b: Job, bq: ClusterQueue, v: Job) -> PreemptReason | None:
        """Whether running job `v` may be preempted for pending job `b`, and under which reason."""
        vq = self.queues.get(v.cluster_queue)
        if vq is None:
            return None
        same_queue = vq.name == bq.name
        same_cohort = bq.cohort is not None and vq.cohort == bq.cohort
        if v.backfilled and ahead_of(b, v) and (same_queue or same_cohort):
            return PreemptReason.RESERVATION_DUE
        if v.started_at is not None and self.now - v.started_at < self.policy.preemption.min_runtime_seconds:
            return None
        if same_queue:
            within = self.within(bq)
            if within is WithinClusterQueue.NEVER:
                return None
            if v.priority < b.priority:
                return PreemptReason.IN_CLUSTER_QUEUE
            if (within is WithinClusterQueue.LOWER_OR_NEWER_EQUAL_PRIORITY and v.priority == b.priority
                    and ahead_of(b, v)):
                return PreemptReason.IN_CLUSTER_QUEUE
            return None
        if same_cohort:
            reclaim = self.reclaim(bq)
            if reclaim is ReclaimWithinCohort.NEVER or not self._borrowing[vq.name]:
                return None
            if reclaim is ReclaimWithinCohort.LOWER_PRIORITY and v.priority >= b.priority:
                return None
            return PreemptReason.IN_COHORT_RECLAMATION
        return None

    def _try_preempt(self, job: Job, cq: ClusterQueue) -> bool:
        """Plan the cheapest set of victims that lets `job` fit. True when the job now only waits for
        victims (new or already being vacated) to go."""
        if self.policy.preemption.mode is PreemptionMode.NEVER:
            return False
        state = self.qstate[cq.name]
        own = job.key in self.owners  # waiting for its own victims: always looked at, outside the budget
        if state.preemption_attempts >= self.policy.preemption_attempts_per_queue and not own:
            return False
        shape = (cq.name, self.shape(job))
        if self.failed_preemption.get(shape, -(2**62)) >= job.priority and not own:
            return False
        if not own:
            state.preemption_attempts += 1
        self._borrowing = {name: self.ledger.borrowing(name) for name in self.queues}

        cands: list[tuple[tuple[object, ...], Running, PreemptReason | None, PreemptMode, float]] = []
        for run in self.vacating:
            # Already leaving: free room at no extra cost, for the job it was preempted for while that job
            # still waits (or for anyone once it no longer does), and ahead of all other candidates.
            owner = run.job.preempted_for
            if run.job.key in self.claimed or (owner is not None and owner != job.key and owner in self.waiting):
                continue
            mine = 0 if owner == job.key else 1
            cands.append(((0, float(mine), 0, 0.0, run.job.key), run, None, PreemptMode.KILL, 0.0))
        for run in self.by_group.get(self.share_group(cq.name), ()):
            v = run.job
            key = v.key
            if key in self.claimed or key in self.victims or v.checkpointing:
                continue
            reason = self._candidate(job, cq, v)
            if reason is None:
                continue
            mode, cost = self._victim_cost(v)
            newest = -(v.admitted_at or v.started_at or 0.0)
            cands.append(((1, cost, v.priority, newest, key), run, reason, mode, cost))
        if not cands:
            self.failed_preemption[shape] = max(self.failed_preemption.get(shape, -(2**62)), job.priority)
            return False
        cands.sort(key=lambda c: c[0])

        # A full fit (quota, then every node) per added victim is the costly part. Skip it while the
        # job's dominant resource cannot be free yet in its flavors' pools even in total.
        dom = dominant_resource(job.total_requests())
        need = job.total_requests().get(dom, 0)
        avail = pool_free(self, job, cq, dom)

        self.cap.speculative += 1
        chosen: list[int] = []
        try:
            fits = False
            for i, (_, run, _, _, _) in enumerate(cands):
                self.lift(run)
                chosen.append(i)
                avail += sum(req.get(dom, 0) for _, req in run.nodes)
                if avail < need:
                    continue
                verdict = self._fits_after(job, cq, [cands[k][2] for k in chosen])
                if verdict is None:
                    break  # it fits, but may not start (reservation, or reclaim would borrow): more won't help
                if verdict:
                    fits = True
                    break
            hold: Fit | PendingReason | None = None
            if fits:
                # Drop victims that turn out unnecessary, most expensive first (Kueue's reverse walk).
                for i in sorted(chosen, key=lambda k: cands[k][0], reverse=True):
                    self.restore(cands[i][1])
                    rest = [k for k in chosen if k != i]
                    if self._fits_after(job, cq, [cands[k][2] for k in rest]) is True:
                        chosen = rest
                    else:
                        self.lift(cands[i][1])
                hold = find_fit(self, job, cq, commit=False)
            for i in chosen:
                self.restore(cands[i][1])
        finally:
            self.cap.speculative -= 1
        if isinstance(hold, Fit):
            # Hold the room being made for the rest of the cycle (on top of the victims, who keep it until
            # they are gone): a later job taking the part already free would leave the preemptor unable
            # to start once the victims leave, and it would preempt again and again.
            reqs = {ps.name: ps.requests for ps in job.pod_sets}
            for pl in hold.placement:
                for node in pl.nodes:
                    self.cap.consume(node, reqs[pl.name])
            # Quota: only what the victims' own usage (still counted until they are gone) does not cover.
            excess = dict(hold.delta)
            for i in chosen:
                for k, q in cands[i][1].delta.items():
                    if k in excess:
                        excess[k] -= q
            self.ledger.add(cq.name, {k: q for k, q in excess.items() if q > 0})
            # For backfill, the preemptor is as good as admitted: it starts when its victims are gone and
            # runs for its estimate, so reservations see that room come back.
            starts = self.now + max((cands[i][1].job.checkpoint_cost_s for i in chosen), default=0.0)
            rem = self.remaining(job)
            end = INF if rem is None else starts + max(rem, 1.0)
            self.admitted_now.append(Running(job, hold.delta, [], end, hold.by_flavor))
            hold_in_profiles(self, hold.by_flavor, end - self.now)
        if not fits:
            self.failed_preemption[shape] = max(self.failed_preemption.get(shape, -(2**62)), job.priority)
            return False
        for i in sorted(chosen, key=lambda k: cands[k][0]):
            _, run, reason, mode, cost = cands[i]
            key = run.job.key
            self.claimed.add(key)
            if reason is None:
                continue  # already vacating
            self.victims.add(key)
            self.out.actions.append(Preempt(key, mode, job.key, reason, round(cost, 3)))
            run.end = self.now + run.job.checkpoint_cost_s
        return True

    def _fits_after(self, job: Job, cq: ClusterQueue, reasons: list[PreemptReason | None]) -> bool | None:
        """True: the job fits with the lifted victims gone. False: not yet. None: it fits but may not
        start this way, and more victims will not change that."""
        fit = find_fit(self, job, cq, commit=False)
        if not isinstance(fit, Fit):
            return False
        if not may_start_now(self, job, fit)[0]:
            return None  # it would start ahead of a reservation it may not delay: preempting is pointless
        if PreemptReason.IN_COHORT_RECLAMATION in reasons and not self.ledger.within_nominal(cq.name, fit.delta):
            return None  # reclaiming is only for taking back one's own nominal quota, never to borrow
        return True

    # ---- the cycle --------------------------------------------------------------------------------

    def run(self) -> Decisions:
        # Like Kueue, jobs that fit within their queue's nominal quota go before jobs that would have to
        # borrow: the first pass defers borrowers, the second takes them in order. Otherwise a borrower
        # that was just reclaimed would be re-admitted ahead of the job that reclaimed it.
        deferred: list[Job] = []
        for job in self.pending:
            self._consider(job, deferred)
        for job in deferred:
            self._consider(job, None)
        positions: dict[str, int] = {}
        waiting = self.out.waiting
        for job in self.pending:
            why = self.why.get(job.key)
            if why is not None:
                positions[job.cluster_queue] = pos = positions.get(job.cluster_queue, 0) + 1
                waiting[job.key] = Waiting(job.key, pos, *why)
        self._periodic_checkpoints()
        return self.out

    def _consider(self, job: Job, deferred: list[Job] | None) -> None:
        """Admit, preempt for, reserve for, or explain one pending job. With `deferred` (first pass), a job
        that could only start by borrowing is set aside instead."""
        cq = self.queues.get(job.cluster_queue)
        if cq is None:
            self._wait(job, PendingReason.UNKNOWN_QUEUE, f"ClusterQueue {job.cluster_queue!r} does not exist")
            return
        if cq.stopped:
            self._wait(job, PendingReason.QUEUE_STOPPED, f"ClusterQueue {cq.name!r} is stopped")
            return
        state = self.qstate[cq.name]
        if state.hard_blocked:
            self._wait(job, PendingReason.STRICT_FIFO, f"an earlier job blocks StrictFIFO ClusterQueue {cq.name!r}")
            return
        if deferred is not None and state.deferred:
            deferred.append(job)  # keeps queue order behind a deferred head
            return
        fit = find_fit(self, job, cq, commit=True)
        if isinstance(fit, Fit):
            if deferred is not None and cq.cohort is not None and self.ledger.borrowing(cq.name, fit.delta):
                release(self, job, fit)
                deferred.append(job)
                # The rest of this queue follows it, so borrowing never lets a lower-priority job of the same
                # queue overtake (it would take the room the borrower may just have preempted for).
                state.deferred = True
                return
            ok, opportunistic = may_start_now(self, job, fit)
            if ok:
                self._admit(job, cq, fit, opportunistic)
                return
            release(self, job, fit)
            self._wait(job, PendingReason.BACKFILL_BLOCKED, "fits now, but would delay a reserved job")
            return
        reason = fit
        if (reason in (PendingReason.QUOTA, PendingReason.CAPACITY) and self.preempting
                and (state.preemption_attempts < self.policy.preemption_attempts_per_queue or job.key in self.owners)
                and self._try_preempt(job, cq)):
            self._wait(job, PendingReason.WAITING_FOR_PREEMPTION, "room is being made by preemption")
            return
        start = None
        # Quota-blocked jobs get reservations too: when quota equals capacity, a full cluster shows as
        # "quota" first, and the capacity profile still tells when the running jobs free it.
        if (reason in (PendingReason.CAPACITY, PendingReason.QUOTA) and self.backfill_enabled(cq)
                and state.reservations < self.reservation_depth(cq)):
            start = reserve(self, job, cq)
        if start is not None:
            state.reservations += 1
            self._wait(job, PendingReason.RESERVATION, f"reserved start at t={start:.0f}", reserved_start=start)
            if self.strict(cq) and not self.backfill_enabled(cq):
                state.hard_blocked = True
            return
        self._wait(job, reason, _MESSAGES[reason])
        if self.strict(cq):
            state.hard_blocked = True

    def _admit(self, job: Job, cq: ClusterQueue, fit: Fit, opportunistic: bool) -> None:
        if job.checkpoint:
            self.out.actions.append(Resume(job.key, cq.name, job.checkpoint, fit.placement, opportunistic))
        else:
            self.out.actions.append(Admit(job.key, cq.name, fit.placement, opportunistic))
        hold_in_profiles(self, fit.by_flavor, run_length(self, job))
        rem = self.remaining(job)
        end = INF if rem is None else self.now + rem
        self.admitted_now.append(Running(job, fit.delta, [], end, fit.by_flavor))

    def _wait(self, job: Job, reason: PendingReason, message: str, reserved_start: float | None = None) -> None:
        # Waiting records are made at the end of the cycle, with positions in queue order.
        self.why[job.key] = (reason, message, reserved_start)
        if reserved_start is not None and reserved_start > self.now:
            self.wake(reserved_start)

    def _periodic_checkpoints(self) -> None:
        for key, run in self.running.items():
            job = run.job
            if (not job.checkpointable or job.started_at is None or job.vacating or job.checkpointing
                    or key in self.victims):
                continue
            interval = self.policy.interval_for(job.checkpoint_interval_s, job.checkpoint_interval_auto,
                                                job.checkpoint_cost_s, self.node_mtbf_s)
            if interval is None:
                continue
            base = job.started_at
            if job.last_checkpoint_at is not None and job.last_checkpoint_at > base:
                base = job.last_checkpoint_at
            due = base + interval
            if due <= self.now:
                self.out.actions.append(Checkpoint(key, CheckpointReason.PERIODIC))
            else:
                self.wake(due)


_MESSAGES: dict[PendingReason, str] = {
    PendingReason.QUOTA: "not enough quota in the ClusterQueue (or its cohort)",
    PendingReason.CAPACITY: "quota is available but no set of nodes has room for every pod",
    PendingReason.NO_MATCHING_NODES: "no Ready node matches the flavors, node selector and tolerations",
    PendingReason.UNSATISFIABLE: "a pod asks for more than any matching node has",
}

__all__ = ["GPU", "decide"]

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
    Resume,
    Waiting,
)
from queue_controller.engine.fit import Fit, find_fit, release
from queue_controller.engine.policy import Policy
from queue_controller.engine.preemption.victim_set import preempt_for
from queue_controller.engine.profile import INF
from queue_controller.engine.snapshot import (
    GPU,
    ClusterQueue,
    Job,
    Snapshot,
)
from queue_controller.engine.workspace import Running, Workspace


def decide(snapshot: Snapshot, now: float, policy: Policy) -> Decisions:
    """Pure and deterministic: the same snapshot, time and policy always give the same decisions."""
    return _Cycle(snapshot, now, policy).run()


class _Cycle(Workspace):
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
        if preempt_for(self, job, cq, reason):
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

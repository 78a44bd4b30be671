"""Eligibility: whether a running job may be preempted for a pending one, and why.

- A backfilled job (admitted ahead of a reservation) may be vacated for any job ahead of it in queue order
  in its queue or cohort, whatever the priorities: `ReservationDue`. That is what makes checkpoint-aware
  backfill safe.
- A job that has run less than the policy's `minRuntimeSeconds` is spared (Slurm's PreemptExemptTime).
- In the same ClusterQueue (`withinClusterQueue`): lower priority, or with `LowerOrNewerEqualPriority`
  also equal priority and later in queue order: `InClusterQueue`.
- In the same cohort (`reclaimWithinCohort`): only a queue that is borrowing can be reclaimed from; `Any`
  takes any of its jobs, `LowerPriority` only lower-priority ones: `InCohortReclamation`. Under fair
  sharing these are only candidates (`InCohortFairSharing`): `fair_share.py` takes those that restore
  fair shares, and those a preemptor that stays within its nominal quota reclaims.

So a victim is never of equal or higher priority unless the policy allows it, and preemption edges always
point down the queue order: they cannot form a cycle.
"""

from __future__ import annotations

from collections.abc import Mapping

from queue_controller.engine.decisions import PreemptReason
from queue_controller.engine.ordering import ahead_of
from queue_controller.engine.snapshot import ClusterQueue, Job, ReclaimWithinCohort, WithinClusterQueue
from queue_controller.engine.workspace import Workspace


def eligible(ws: Workspace, b: Job, bq: ClusterQueue, v: Job, borrowing: Mapping[str, bool]) -> PreemptReason | None:
    """Whether running job `v` may be preempted for pending job `b` (of queue `bq`), and under which
    reason. `borrowing`: which queues use more than their nominal quota, taken before the attempt."""
    if not v.backfilled:
        # The common refusals first, from what is at hand (this is asked for most running jobs of a
        # cohort per search): another queue that is not a borrowing member of the cohort, or a job of
        # the same queue with a higher priority. Exactly what the rules below say for them.
        if v.cluster_queue != bq.name:
            if not borrowing.get(v.cluster_queue):
                return None
        elif v.priority > b.priority:
            return None
    vq = ws.queues.get(v.cluster_queue)
    if vq is None:
        return None
    same_queue = vq.name == bq.name
    same_cohort = bq.cohort is not None and vq.cohort == bq.cohort
    if v.backfilled and ahead_of(b, v) and (same_queue or same_cohort):
        return PreemptReason.RESERVATION_DUE
    if v.started_at is not None and ws.now - v.started_at < ws.policy.preemption.min_runtime_seconds:
        return None
    if same_queue:
        within = ws.within(bq)
        if within is WithinClusterQueue.NEVER:
            return None
        if v.priority < b.priority:
            return PreemptReason.IN_CLUSTER_QUEUE
        if (within is WithinClusterQueue.LOWER_OR_NEWER_EQUAL_PRIORITY and v.priority == b.priority
                and ahead_of(b, v)):
            return PreemptReason.IN_CLUSTER_QUEUE
        return None
    if same_cohort:
        reclaim = ws.reclaim(bq)
        if reclaim is ReclaimWithinCohort.NEVER or not borrowing[vq.name]:
            return None
        if reclaim is ReclaimWithinCohort.LOWER_PRIORITY and v.priority >= b.priority:
            return None
        if ws.fair:
            # A candidate only: the fair-sharing search (fair_share.py) decides by the queues' shares.
            return PreemptReason.IN_COHORT_FAIR_SHARING
        return PreemptReason.IN_COHORT_RECLAMATION
    return None

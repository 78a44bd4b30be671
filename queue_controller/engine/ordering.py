"""Queue order and fair-sharing shares (the rules that use the shares: fair_sharing.py).

Jobs are ordered by priority (high first), then queue-order timestamp (old first; a preempted job keeps
its original timestamp and so its place), then key, which makes every ordering total and deterministic.

A policy may credit requested work (`OrderingSettings`, `credited`): within a priority, a job is ordered
as if it had arrived earlier by `workCreditSecondsPerGpuHour` x the GPU-hours it asks for (its GPUs x
its run-time estimate), at most `maxWorkCreditSeconds`. This is the multifactor priority of HPC
schedulers with a queue-time (age) factor and a resource factor that favours large jobs (Moab's
QUEUETIME plus its Resource component's processor-seconds weight; Slurm's age plus job-size factor with
`PriorityFavorSmall=NO`): a job's score is its age plus its credit, so jobs still overtake one another
only by the fixed credit, and a score that grows with age alone orders them as a fixed time does. The
engine applies it once, at the start of a cycle, to each job's queue-order time; every rule after that
(the walk, `ahead_of`, reservations, ReservationDue, fair sharing) sees the one credited order.

The order is also computed outside the engine: `ckq pending` and `ckq get jobs` rank a ClusterQueue's
waiting jobs on demand from what the API server holds (as Kueue's visibility API does), rather than the
controller writing every waiting job's position each cycle. `queue_order_key` and `positions` take the
three plain values, so that ranking is this module's, not a copy of it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import replace
from fractions import Fraction

from queue_controller.engine.policy import OrderingSettings
from queue_controller.engine.quota import FR, QuotaLedger
from queue_controller.engine.snapshot import Job, Snapshot

OrderKey = tuple[int, float, str]


def queue_order_key(priority: int, queue_order: float, key: str) -> OrderKey:
    """The sort key of a job given as plain values: priority (high first), queue-order time, key."""
    return (-priority, queue_order, key)


def work_credit(job: Job, ordering: OrderingSettings) -> float:
    """Seconds the job is ordered ahead of its arrival: the policy's credit per requested GPU-hour times
    its GPUs x its run-time estimate (the user's, fixed at submission, so the credit never moves), at most
    the policy's cap. A job without an estimate, or without GPUs, gets none."""
    rate = ordering.work_credit_seconds_per_gpu_hour
    est = job.runtime_estimate_s
    if rate <= 0 or est is None:
        return 0.0
    return min(rate * (job.gpus / 1000.0) * est / 3600.0, ordering.max_work_credit_seconds)


# Credited jobs of the last cycles, by key: (the snapshot's job, the settings, its credited copy).
CreditMemo = dict[str, tuple[Job, OrderingSettings, Job]]


def credited(snapshot: Snapshot, ordering: OrderingSettings, memo: CreditMemo | None = None) -> Snapshot:
    """The snapshot with every job's queue-order time less its `work_credit`; the snapshot itself when the
    policy gives no credit (so fifo, kueue and easy decide exactly as without this rule).

    `memo` (the caller's `Carry.credited`): the same job object under the same settings gets the same
    copy from cycle to cycle, so the caches keyed on identity (carry.py) keep working; a caller with
    other settings gets its own copy, never another's."""
    if ordering.work_credit_seconds_per_gpu_hour <= 0:
        return snapshot
    if memo is None:
        memo = {}
    elif len(memo) > 2 * len(snapshot.jobs) + 1024:
        memo.clear()
    jobs = []
    for job in snapshot.jobs:
        hit = memo.get(job.key)
        if hit is None or hit[0] is not job or (hit[1] is not ordering and hit[1] != ordering):
            credit = work_credit(job, ordering)
            hit = (job, ordering, replace(job, queue_order=job.queue_order - credit) if credit else job)
            memo[job.key] = hit
        jobs.append(hit[2])
    return replace(snapshot, jobs=tuple(jobs))


def order_key(job: Job) -> OrderKey:
    return queue_order_key(job.priority, job.queue_order, job.key)


def positions(jobs: Iterable[tuple[int, float, str]]) -> dict[str, int]:
    """Key -> 1-based position, for (priority, queue-order time, key) of the jobs waiting in one queue."""
    ranked = sorted(jobs, key=lambda j: queue_order_key(*j))
    return {key: i for i, (_, _, key) in enumerate(ranked, start=1)}


def ahead_of(a: Job, b: Job) -> bool:
    """Whether `a` comes before `b` in queue order."""
    return order_key(a) < order_key(b)


# A dominant resource share, comparable: (a zero-weight queue that borrows, the ratio). Kueue's `CompareDRS`:
# a queue of weight 0 that borrows has an infinite share, above every other; two of them compare by their
# unweighted ratio. Otherwise the value is the ratio divided by the weight.
# Exact (a fraction of quota quantities, over the weight taken exactly as the float it is): the fair-share
# strategies decide on ties (S2-a's <=, S2-b's <), and a float's rounding would break them either way.
# 6 of 10 GPUs over weight 3 is 0.19999999999999998 in floats, "less than" 2 of 10 over weight 1, 0.2:
# a job took a victim whose share it only equalled, the victim won the room back (its share alone was
# lower), and so on forever (tests/unit/test_engine_preemption_fair_share.py).
Share = tuple[bool, Fraction]
NO_SHARE: Share = (False, Fraction(0))

# Kueue's `status.fairSharing.weightedShare` of a zero-weight queue that borrows: the largest int64.
MAX_WEIGHTED_SHARE = 2**63 - 1


def dominant_share(ledger: QuotaLedger, cq: str, usage: Mapping[FR, int]) -> Share:
    """Kueue's dominant resource share (DRS) of ClusterQueue `cq` with quota usage `usage`: over resources,
    the largest ratio of usage above nominal quota (summed over flavors) to the cohort's lendable quota of
    that resource (summed over flavors), divided by the queue's fair-sharing weight. 0 while the queue
    uses no more than its nominal quota; a queue of weight 0 that borrows has an infinite share. Queues
    without a cohort borrow nothing: 0."""
    queue = ledger.queues[cq]
    cohort = queue.cohort
    if cohort is None:
        return NO_SHARE
    borrowed: dict[str, int] = {}
    for fr, used in usage.items():
        above = used - ledger.nominal(cq, fr)
        if above > 0:
            borrowed[fr[1]] = borrowed.get(fr[1], 0) + above
    if not borrowed:
        return NO_SHARE
    lendable = ledger.lendable(cohort)
    ratio = Fraction(0)
    for res, above in borrowed.items():
        pool = lendable.get(res, 0)
        if pool > 0:
            ratio = max(ratio, Fraction(above, pool))
    if ratio == 0:
        return NO_SHARE
    if queue.fair_weight <= 0:
        return (True, ratio)
    return (False, ratio / Fraction(queue.fair_weight))


def weighted_share(share: Share) -> int:
    """A share as Kueue writes it into `status.fairSharing.weightedShare`: per mille, rounded up; the
    largest int64 for a zero-weight queue that borrows."""
    infinite, value = share
    return MAX_WEIGHTED_SHARE if infinite else math.ceil(value * 1000)

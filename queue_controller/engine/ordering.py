"""Queue order and fair-sharing shares.

Jobs are ordered by priority (high first), then queue-order timestamp (old first; a preempted job keeps
its original timestamp and so its place), then key, which makes every ordering total and deterministic.

The order is also computed outside the engine: `ckq pending` and `ckq get jobs` rank a ClusterQueue's
waiting jobs on demand from what the API server holds (as Kueue's visibility API does), rather than the
controller writing every waiting job's position each cycle. `queue_order_key` and `positions` take the
three plain values, so that ranking is this module's, not a copy of it.
"""

from __future__ import annotations

from collections.abc import Iterable

from queue_controller.engine.quota import QuotaLedger
from queue_controller.engine.snapshot import Job

OrderKey = tuple[int, float, str]


def queue_order_key(priority: int, queue_order: float, key: str) -> OrderKey:
    """The sort key of a job given as plain values: priority (high first), queue-order time, key."""
    return (-priority, queue_order, key)


def order_key(job: Job) -> OrderKey:
    return queue_order_key(job.priority, job.queue_order, job.key)


def positions(jobs: Iterable[tuple[int, float, str]]) -> dict[str, int]:
    """Key -> 1-based position, for (priority, queue-order time, key) of the jobs waiting in one queue."""
    ranked = sorted(jobs, key=lambda j: queue_order_key(*j))
    return {key: i for i, (_, _, key) in enumerate(ranked, start=1)}


def ahead_of(a: Job, b: Job) -> bool:
    """Whether `a` comes before `b` in queue order."""
    return order_key(a) < order_key(b)


def dominant_share(ledger: QuotaLedger, cq: str) -> float:
    """Kueue's dominant resource share: the largest ratio, over flavor/resources, of usage above nominal
    to the cohort's lendable capacity, divided by the queue's fair-sharing weight (weight 0: infinite).
    This is the seam for fair sharing: the scheduler uses it to order queues when the policy asks."""
    queue = ledger.queues[cq]
    if queue.cohort is None:
        return 0.0
    if queue.fair_weight <= 0:
        return float("inf")
    share = 0.0
    for fr, used in ledger.usage[cq].items():
        above = used - ledger.nominal(cq, fr)
        pool = ledger.pool_capacity(queue.cohort, fr)
        if above > 0 and pool > 0:
            share = max(share, above / pool)
    return share / queue.fair_weight

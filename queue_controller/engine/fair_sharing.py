"""Fair sharing within a cohort: admission order by dominant resource share (Kueue's, KEP 1714).

Under a policy with `fairSharing.enabled`, the ClusterQueues of a cohort share what they lend each other
in proportion to their `fairSharing.weight`. A queue's *share* (`ordering.dominant_share`, Kueue's DRS)
is, over resources, the largest ratio of its usage above nominal quota to the cohort's lendable quota,
divided by its weight: 0 while it stays within its nominal quota, infinite for a queue of weight 0 that
borrows (it gets only what nobody else wants).

Admission (this module). Kueue's scheduler takes one head job per ClusterQueue and runs a tournament in
each cohort: the head whose queue would have the lowest share *with that job admitted* goes first. ckq
walks every pending job each cycle, so `fair_order` is that tournament repeated: each queue's jobs stay
in queue order (priority, then time), and the next job considered is the head that wins on, in order:
1. heads that cannot start now (quota and nodes, `can_start`) go first: they only wait, or preempt if
   the fair-share strategies allow it, and then the job behind them in their queue competes with its
   own share. Otherwise a queue whose big head cannot start would lose its turn to another queue's job
   when its smaller job behind would be the fairer use of the room — and a job that preempted for a fair
   share could see the room it made taken by its victim coming back, and preempt again, forever;
2. whether admitting it keeps its queue within nominal quota on what it charges (Kueue's
   FairSharingPrioritizeNonBorrowing: taking one's own quota never waits behind a borrower; this is also
   what the two passes of the loop do without fair sharing);
3. its queue's share with it admitted, lowest first;
4. priority, queue-order time and key, as everywhere.
After each job the shares move (an admission, room held by preemption, victims claimed), and the heads
of the queues whose usage moved are ranked again. Queues without a cohort have no share: their heads
compete at share 0, by priority and time. So a team of weight 3 admits three GPUs for every one of a
team of weight 1 while both borrow, and their shares meet.

The share a head is ranked with charges it to the first flavor of its resource group whose quota
(cohort included) can hold it now, else the first that ever could (Kueue ranks by the flavors its
assigner picked), which is where `find_fit` puts it unless that flavor's nodes are full. Whether it can
start is a what-if `find_fit`, once per head: a fair-sharing cycle costs about half as much again as
another's.

Preemption to restore fair shares is the preemption rule's (`preemption/fair_share.py`).
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Iterable, Iterator

from queue_controller.engine.fit import Fit, find_fit, requested
from queue_controller.engine.ordering import NO_SHARE, Share
from queue_controller.engine.quota import FR
from queue_controller.engine.snapshot import ClusterQueue, Job
from queue_controller.engine.workspace import Workspace

# A head's rank in the tournament: (it can start now, it borrows with it admitted, its queue's share then,
# -priority, time, key).
Rank = tuple[bool, bool, Share, int, float, str]


def charge_estimate(ws: Workspace, job: Job, cq: ClusterQueue) -> dict[FR, int]:
    """What `job` would charge `cq`: each pod set in the first flavor of its resource group whose quota
    can hold it now, else the first whose quota ever could, else the first."""
    ledger = ws.ledger
    delta: dict[FR, int] = {}
    for ps in job.pod_sets:
        group = ws.group_for(cq, requested(ps))
        if group is None:
            continue
        fitting: dict[FR, int] | None = None
        ever: dict[FR, int] | None = None
        first: dict[FR, int] | None = None
        for fq in group.flavors:
            merged = dict(delta)
            for r, q in ps.requests.items():
                if q > 0 and ledger.covers(cq.name, fq.name, r):
                    merged[(fq.name, r)] = merged.get((fq.name, r), 0) + q * ps.count
            if first is None:
                first = merged
            if ledger.fits(cq.name, merged):
                fitting = merged
                break
            if ever is None and all(v <= ledger.ceiling(cq.name, fr) for fr, v in merged.items()):
                ever = merged
        chosen = fitting if fitting is not None else ever if ever is not None else first
        if chosen is not None:
            delta = chosen
    return delta


def borrows_with(ws: Workspace, cq: str, delta: dict[FR, int]) -> bool:
    """Whether `cq` would use more than its nominal quota of something `delta` charges, by the share book."""
    usage = ws.share_usage.get(cq, {})
    return any(usage.get(fr, 0) + q > ws.ledger.nominal(cq, fr) for fr, q in delta.items() if q > 0)


def can_start(ws: Workspace, job: Job, cq: ClusterQueue) -> bool:
    """Whether `job` fits now, quota and nodes (a what-if: nothing is consumed)."""
    if ws.failed_fit.get((cq.name, ws.shape(job))) is not None:
        return False  # its shape failed in this queue this cycle: capacity and quota only shrink
    return isinstance(find_fit(ws, job, cq, commit=False), Fit)


def rank(ws: Workspace, job: Job) -> Rank:
    """A head job's rank in the tournament: lower goes first."""
    cq = ws.queues.get(job.cluster_queue)
    if cq is None or cq.stopped:
        return (False, False, NO_SHARE, -job.priority, job.queue_order, job.key)  # it only waits
    if cq.cohort is None:
        return (True, False, NO_SHARE, -job.priority, job.queue_order, job.key)  # no share: by priority
    if not can_start(ws, job, cq):
        # It can only wait or preempt (the fair-share strategies judge that): out of the way first, so that
        # its queue's next job competes with its own share.
        return (False, False, NO_SHARE, -job.priority, job.queue_order, job.key)
    delta = charge_estimate(ws, job, cq)
    return (True, borrows_with(ws, cq.name, delta), ws.share(cq.name, plus=delta), -job.priority,
            job.queue_order, job.key)


def fair_order(ws: Workspace, jobs: Iterable[Job]) -> Iterator[Job]:
    """The pending jobs (given in queue order) in fair-sharing order: each time, the best-ranked head of
    any queue. A generator: a head is ranked when it comes up, after the jobs before it were decided."""
    queues: dict[str, deque[Job]] = {}
    for job in jobs:
        queues.setdefault(job.cluster_queue, deque()).append(job)
    heap: list[tuple[Rank, int, str]] = []
    version: dict[str, int] = dict.fromkeys(queues, 0)

    def push(name: str) -> None:
        version[name] += 1
        if queues[name]:
            heapq.heappush(heap, (rank(ws, queues[name][0]), version[name], name))

    for name in queues:
        push(name)
    ws.share_touched.clear()
    while heap:
        # Queues whose usage moved since their head was ranked are ranked again (their old entry is stale).
        for name in sorted(ws.share_touched):
            if name in queues:
                push(name)
        ws.share_touched.clear()
        _, v, name = heapq.heappop(heap)
        if v != version[name]:
            continue
        yield queues[name].popleft()
        push(name)

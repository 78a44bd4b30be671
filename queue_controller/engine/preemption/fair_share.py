"""Preemption to restore fair shares within a cohort (Kueue's fair-sharing preemption, KEP 1714).

Under fair sharing (`fairSharing.enabled`), a job of ClusterQueue A that does not fit may take room from
the other queues of its cohort only where that makes the shares fairer. The candidates are the usual
ones (`eligibility.py`): A's own jobs under `withinClusterQueue`; jobs of the cohort's *borrowing*
queues under A's `reclaimWithinCohort` (`Any`: any priority, `LowerPriority`: lower priority only,
`Never`: none, so fair sharing then only orders admission); jobs already being vacated. `fair_search`
takes from them, as Kueue's `fairPreemptions` does:

1. Jobs already being vacated first: their room comes at no cost.
2. Then, repeatedly, the queue with the highest share among those with candidates left (A's own share
   counted with the job admitted; queues that no longer borrow drop out, A's own never does):
   - A's own queue: its next candidate goes (`InClusterQueue`), as without fair sharing;
   - if A stays within its nominal quota with the job admitted, any candidate of the cohort goes
     (`InCohortReclamation`: taking back one's own quota needs no fairness argument; Kueue's
     FairSharingPreemptWithinNominal);
   - otherwise the first strategy in `fairSharing.preemptionStrategies` decides, candidate by candidate
     in victim order, with A's share *with the job admitted* (`pnew`), the target's share now (`told`)
     and without that candidate (`tnew`): `LessThanOrEqualToFinalShare` (S2-a) takes it when
     pnew <= tnew, `LessThanInitialShare` (S2-b) when pnew < told (`InCohortFairSharing`). After one is
     taken the queue with the highest share is looked for again: the shares moved.
3. If the job still does not fit and a second strategy is configured (S2-b after S2-a), the candidates
   the first one refused get it: per queue, highest share first, its first candidate if pnew < told.

Only a queue's first job that needs room may take it from other queues in a cycle (Kueue considers
only queue heads): once a job of the queue needed room and got none, the jobs behind it preempt only
within the queue. Room made for a later job would fit the earlier one first, which would take it, and
the later one would preempt again.

A victim is never taken where its queue would fall so far below its nominal quota that one of its
victims could come back within it (`would_return_within_nominal`): only the borrowed part of a queue is
the cohort's to share, and such a victim would be admitted first (its own quota) and take the room back.
For the same reason a victim is never taken where, back alone after its queue's victims are gone, it
would leave its queue at a share not above the preemptor's with its job admitted (`would_return_ahead`):
it would win the admission tournament against its preemptor. And the reverse walk that makes the set
minimal keeps a set only while its fair-share victims still pass their strategies on the shares that set
gives (`fair_search`'s `still_fair`): putting back one of the preemptor's own victims raises its share.
Within each queue candidates keep ckq's victim order (checkpoint-first: least work lost), except that a
victim on nodes whose room is all promised to another preemptor goes last (it would lower its queue's
share without making room); the victims the search took are cut down to a minimal set by the usual
reverse walk (`victim_set.py`).

Why it cannot loop (Kueue's proof, site/content/en/docs/concepts/fair_sharing.md). Admitting a borrowing
job raises its queue's share and preempting one lowers it. If A's job preempts B's, then
A_admitted <= B_without (S2-a) or A_admitted < B_now (S2-b); as B_without < B_now, A_admitted < B_now,
the share B had with its job running. For B's job, back in the queue, to preempt A's it would need
B_admitted < A_now, and B_admitted is that very B_now: B_now < A_admitted < B_now, a contradiction. Put
otherwise, each fair-share preemption lowers the larger of the two queues' shares, so the cohort's
shares, sorted from the largest, fall lexicographically and cannot return. The same book makes the
admission order (`fair_sharing.py`) take A's job before B's returning one. The proof takes B's job to
come back at B_now; when B lost several jobs, the first back finds B lower, and `would_return_ahead`
keeps it above A_admitted. It takes the victims the strategies judged to be the ones preempted, and
`still_fair` holds the minimal set to the strategies. Shares are exact fractions (`ordering.py`): the
strategies decide on ties, which floats would break either way. `test_engine_preemption_fair_share.py`
checks it over random cohorts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence

from queue_controller.engine.decisions import PreemptReason
from queue_controller.engine.fair_sharing import borrows_with, charge_estimate
from queue_controller.engine.ordering import Share, dominant_share
from queue_controller.engine.placement import dominant_resource
from queue_controller.engine.policy import FairSharingStrategy
from queue_controller.engine.preemption.victim_order import Candidate
from queue_controller.engine.quota import FR
from queue_controller.engine.snapshot import ClusterQueue, Job
from queue_controller.engine.workspace import Workspace

# Lift one more victim: True, the job fits; False, not yet; None, it may not start this way whatever goes.
Add = Callable[[Candidate], "bool | None"]
# Whether a subset of the victims a search took still restores fair shares (`fair_search`).
StillFair = Callable[[Sequence[Candidate]], bool]


def passes(strategy: FairSharingStrategy, preemptor_new: Share, target_old: Share, target_new: Share) -> bool:
    """Kueue's S2-a and S2-b."""
    if strategy is FairSharingStrategy.LESS_THAN_OR_EQUAL_TO_FINAL_SHARE:
        return preemptor_new <= target_new
    return preemptor_new < target_old


class _Shares:
    """The shares during a search: fair sharing's book, the preemptor's job admitted, the victims taken
    so far gone."""

    def __init__(self, ws: Workspace, cq: str, delta: Mapping[FR, int]) -> None:
        self.ws = ws
        self.cq = cq
        self.delta = delta
        self.removed: dict[str, dict[FR, int]] = {}
        self.taken: dict[str, list[Candidate]] = {}  # the victims taken so far, per queue

    def usage(self, q: str, minus: Mapping[FR, int] | None = None,
              plus: Mapping[FR, int] | None = None) -> dict[FR, int]:
        usage = dict(self.ws.share_usage.get(q, {}))
        changes: list[tuple[Mapping[FR, int], int]] = [(self.removed.get(q, {}), -1)]
        if q == self.cq:
            changes.append((self.delta, 1))
        if minus is not None:
            changes.append((minus, -1))
        if plus is not None:
            changes.append((plus, 1))
        for delta, sign in changes:
            for fr, n in delta.items():
                usage[fr] = usage.get(fr, 0) + sign * n
        return usage

    def share(self, q: str, minus: Mapping[FR, int] | None = None, plus: Mapping[FR, int] | None = None) -> Share:
        return dominant_share(self.ws.ledger, q, self.usage(q, minus, plus))

    def borrowing(self, q: str) -> bool:
        ledger = self.ws.ledger
        return any(n > ledger.nominal(q, fr) for fr, n in self.usage(q).items())

    def take(self, cand: Candidate) -> None:
        if cand.reason is None:
            return  # already out of the book
        q = cand.run.job.cluster_queue
        self.taken.setdefault(q, []).append(cand)
        gone = self.removed.setdefault(q, {})
        for fr, n in cand.run.delta.items():
            gone[fr] = gone.get(fr, 0) + n

    def would_return_within_nominal(self, cand: Candidate) -> bool:
        """Whether taking `cand` would leave its queue so far below its nominal quota that one of its
        victims could come back within it. Such a victim would be admitted first (its own quota), take
        the room back, and the preemptor would preempt again: a loop. Only the borrowed part of a queue
        is the cohort's to share."""
        q = cand.run.job.cluster_queue
        ledger = self.ws.ledger
        usage = self.usage(q, cand.run.delta)
        for v in (*self.taken.get(q, ()), cand):
            if all(usage.get(fr, 0) + n <= ledger.nominal(q, fr) for fr, n in v.run.delta.items() if n > 0):
                return True
        return False


    def would_return_ahead(self, cand: Candidate, pnew: Share) -> bool:
        """Whether taking `cand` would leave one of its queue's victims able to come back ahead of the
        preemptor: its queue's share with only that victim back not above `pnew`, the preemptor's share
        with its job admitted. That victim would win the admission tournament, take the room back, and
        the preemptor would preempt again: a loop. Kueue's proof that fair sharing cannot loop assumes a
        victim comes back at the share its queue had when it was taken; after several victims of one
        queue (S2-b after S2-a) the first to come back finds its queue lower than that."""
        q = cand.run.job.cluster_queue
        return any(self.share(q, cand.run.delta, v.run.delta) <= pnew for v in (*self.taken.get(q, ()), cand))


def _target(shares: _Shares, pool: dict[str, list[Candidate]], dropped: set[str]) -> str | None:
    """The queue to take from next: the highest share among those with candidates left that still
    borrow (the preemptor's own always counts); ties go to the queue whose next candidate comes first
    in victim order."""
    best: tuple[Share, str] | None = None
    for q in sorted(pool):
        if q in dropped or not pool[q]:
            continue
        if q != shares.cq and not shares.borrowing(q):
            dropped.add(q)
            continue
        s = shares.share(q)
        if best is None or s > best[0] or (s == best[0] and pool[q][0].order < pool[best[1]][0].order):
            best = (s, q)
    return None if best is None else best[1]


def fair_search(ws: Workspace, job: Job, cq: ClusterQueue, cands: Iterable[Candidate], add: Add,
                across: bool = True) -> tuple[bool | None, StillFair]:
    """Lift victims for `job` by the fair-sharing rules, through `add`, until it fits. True when it fits;
    False or None when it does not (None: it may not start this way). Without `across`, only victims of
    its own queue (and jobs already leaving). With it, whether a subset of the victims taken still
    restores fair shares (`still_fair`), for the reverse walk that makes the set minimal."""
    delta = charge_estimate(ws, job, cq)
    rules: dict[str, FairSharingStrategy] = {}  # the fair-share victims taken, in order, by the rule that took each
    verdict = _search(ws, job, cq, cands, add, across, delta, rules)

    def still_fair(victims: Sequence[Candidate]) -> bool:
        # The strategies again, on the shares this set gives: the preemptor's queue with the job admitted
        # and only these of its own jobs gone, each target queue with only these of its jobs gone, in the
        # order taken. Putting back another queue's victim only raises that queue's shares (it passes more
        # easily); putting back one of the preemptor's own raises the preemptor's share, and a victim it
        # justified may no longer pass: then that one stays.
        book = _Shares(ws, cq.name, delta)
        for cand in victims:
            if cand.run.job.cluster_queue == cq.name:
                book.take(cand)
        pnew = book.share(cq.name)
        kept = {cand.run.job.key: cand for cand in victims}
        taken = [(kept[key], strategy) for key, strategy in rules.items() if key in kept]
        for victim, strategy in taken:
            q = victim.run.job.cluster_queue
            if not passes(strategy, pnew, book.share(q), book.share(q, victim.run.delta)):
                return False
            book.take(victim)
        # And none of them, back alone, would rank ahead of the preemptor (`would_return_ahead`).
        return all(book.share(v.run.job.cluster_queue, plus=v.run.delta) > pnew for v, _ in taken)

    return verdict, still_fair


def _search(ws: Workspace, job: Job, cq: ClusterQueue, cands: Iterable[Candidate], add: Add, across: bool,
            delta: dict[FR, int], rules: dict[str, FairSharingStrategy]) -> bool | None:
    """`fair_search`'s search; `rules` gets each victim taken by a fair-share strategy, in order."""
    shares = _Shares(ws, cq.name, delta)
    strategies = ws.policy.fair_sharing.preemption_strategies
    within_nominal = not borrows_with(ws, cq.name, delta)

    def take(cand: Candidate, rule: FairSharingStrategy | None = None) -> bool | None:
        shares.take(cand)
        if rule is not None:
            rules[cand.run.job.key] = rule
        return add(cand)

    pool: dict[str, list[Candidate]] = {}
    for cand in cands:
        if cand.reason is None:
            verdict = take(cand)
            if verdict is not False:
                return verdict
        elif across or cand.run.job.cluster_queue == cq.name:
            pool.setdefault(cand.run.job.cluster_queue, []).append(cand)

    # Within each queue, victim order; but a victim whose nodes' room is all promised to another preemptor
    # (held on top of the victims it waits for) frees nothing this job can use: it goes last. Taking it
    # would lower its queue's share in the book without making room, and refuse the victims that would.
    dom = dominant_resource(job.total_requests())
    free = ws.cap.free
    for queue in pool.values():
        queue.sort(key=lambda c: not any(free[n].get(dom, 0) + req.get(dom, 0) > 0 for n, req in c.run.nodes))

    retry: dict[str, list[Candidate]] = {}
    dropped: set[str] = set()
    while (q := _target(shares, pool, dropped)) is not None:
        queue = pool[q]
        if q == cq.name or within_nominal:
            cand = queue.pop(0)
            if q != cq.name and shares.would_return_within_nominal(cand):
                continue
            if cand.reason is PreemptReason.IN_COHORT_FAIR_SHARING:
                cand = dataclasses.replace(cand, reason=PreemptReason.IN_COHORT_RECLAMATION)
            verdict = take(cand)
            if verdict is not False:
                return verdict
            continue
        pnew, told = shares.share(cq.name), shares.share(q)
        if pnew[0] and not told[0]:
            # The preemptor would borrow on a zero weight (an infinite share) and the target does not:
            # no candidate here can pass either strategy.
            retry.setdefault(q, []).extend(queue)
            queue.clear()
            continue
        while queue:
            cand = queue.pop(0)
            if shares.would_return_within_nominal(cand) or shares.would_return_ahead(cand, pnew):
                continue
            if passes(strategies[0], pnew, told, shares.share(q, cand.run.delta)):
                verdict = take(cand, strategies[0])
                if verdict is not False:
                    return verdict
                break  # the shares moved: look for the highest again
            retry.setdefault(q, []).append(cand)
    if len(strategies) < 2:
        return False
    dropped = set()
    while (q := _target(shares, retry, dropped)) is not None:
        pnew, told = shares.share(cq.name), shares.share(q)
        cand = retry[q].pop(0)
        if shares.would_return_within_nominal(cand) or shares.would_return_ahead(cand, pnew):
            continue  # not this one: the queue's next candidate may do
        if passes(strategies[1], pnew, told, told):
            verdict = take(cand, strategies[1])
            if verdict is not False:
                return verdict
        dropped.add(q)  # S2-b does not depend on the victim: one try per queue
    return False

"""Quota accounting per ClusterQueue, flavor and resource, with Kueue's cohort semantics.

For a queue with nominal quota N, lendingLimit L (default N) and borrowingLimit B (default unlimited):
- the queue keeps `N - L` for itself (its *guaranteed* part); the rest (`L`) joins the cohort's pool;
- usage above the guaranteed part draws from the pool, so the pool's users are bounded by the sum of the
  members' lendable quota;
- usage never exceeds `N + B`; without a cohort, usage never exceeds `N`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from queue_controller.engine.snapshot import ClusterQueue, Quota

FR = tuple[str, str]  # (flavor, resource)


@dataclass(slots=True)
class _Limits:
    nominal: int
    guaranteed: int
    max_usage: int | None  # None: unlimited (bounded only by the cohort)


class QuotaLedger:
    """Mutable usage book for one decision cycle. Every change is exact integer arithmetic."""

    def __init__(self, queues: Iterable[ClusterQueue]) -> None:
        self.queues: dict[str, ClusterQueue] = {}
        self._limits: dict[str, dict[FR, _Limits]] = {}
        self.usage: dict[str, dict[FR, int]] = {}
        self._cohort_of: dict[str, str | None] = {}
        self._pool: dict[str, dict[FR, int]] = {}  # cohort -> lendable capacity
        self._pool_used: dict[str, dict[FR, int]] = {}  # cohort -> usage above members' guaranteed parts
        self._lendable: dict[str, dict[str, int]] = {}  # cohort -> resource -> lendable, over flavors
        self._members: dict[str, tuple[str, ...]] = {}  # cohort -> its queues (`cohort_members`)
        # queue -> how many of its (flavor, resource) pairs it uses above nominal quota (`borrowing`).
        self._over: dict[str, int] = {}
        for cq in queues:
            self.queues[cq.name] = cq
            self._cohort_of[cq.name] = cq.cohort
            limits: dict[FR, _Limits] = {}
            for group in cq.resource_groups:
                for fq in group.flavors:
                    for res, q in fq.resources.items():
                        limits[(fq.name, res)] = self._limits_of(q, cq.cohort is not None)
                        if cq.cohort is not None:
                            pool = self._pool.setdefault(cq.cohort, {})
                            lendable = q.nominal if q.lending_limit is None else min(q.lending_limit, q.nominal)
                            pool[(fq.name, res)] = pool.get((fq.name, res), 0) + lendable
            self._limits[cq.name] = limits
            self.usage[cq.name] = {}
            self._over[cq.name] = 0
            if cq.cohort is not None:
                self._pool_used.setdefault(cq.cohort, {})

    @staticmethod
    def _limits_of(q: Quota, in_cohort: bool) -> _Limits:
        if not in_cohort:
            return _Limits(q.nominal, q.nominal, q.nominal)
        lendable = q.nominal if q.lending_limit is None else min(q.lending_limit, q.nominal)
        max_usage = None if q.borrowing_limit is None else q.nominal + q.borrowing_limit
        return _Limits(q.nominal, q.nominal - lendable, max_usage)

    def limits_of(self, cq: str) -> Mapping[FR, object]:
        """The (flavor, resource) pairs `cq` has quota for (keys of its limits)."""
        return self._limits[cq]

    def covers(self, cq: str, flavor: str, resource: str) -> bool:
        return (flavor, resource) in self._limits[cq]

    def fits(self, cq: str, delta: Mapping[FR, int]) -> bool:
        """Whether adding `delta` to `cq`'s usage stays inside every limit."""
        limits = self._limits[cq]
        usage = self.usage[cq]
        cohort = self._cohort_of[cq]
        for fr, q in delta.items():
            lim = limits.get(fr)
            if lim is None:
                return False
            old = usage.get(fr, 0)
            new = old + q
            if lim.max_usage is not None and new > lim.max_usage:
                return False
            if cohort is not None:
                # `_contribution`, inlined: this runs for every fit tried, what-ifs included.
                g = lim.guaranteed
                grow = (new - g if new > g else 0) - (old - g if old > g else 0)
                if grow > 0 and self._pool_used[cohort].get(fr, 0) + grow > self._pool[cohort].get(fr, 0):
                    return False
        return True

    def within_nominal(self, cq: str, delta: Mapping[FR, int]) -> bool:
        """Whether `cq` would stay within its own nominal quota after adding `delta` (no borrowing)."""
        limits = self._limits[cq]
        usage = self.usage[cq]
        for fr, q in delta.items():
            lim = limits.get(fr)
            if lim is None or usage.get(fr, 0) + q > lim.nominal:
                return False
        return True

    def borrowing(self, cq: str, resources: Iterable[FR] | None = None) -> bool:
        """Whether `cq` uses more than its nominal quota (of the given flavor/resources, or of any)."""
        if resources is None:
            return self._over[cq] > 0
        limits = self._limits[cq]
        usage = self.usage[cq]
        return any(usage.get(fr, 0) > limits[fr].nominal for fr in resources if fr in limits)

    def add(self, cq: str, delta: Mapping[FR, int], sign: int = 1) -> None:
        limits = self._limits[cq]
        usage = self.usage[cq]
        cohort = self._cohort_of[cq]
        pu = self._pool_used[cohort] if cohort is not None else None
        for fr, q in delta.items():
            old = usage.get(fr, 0)
            new = old + sign * q
            usage[fr] = new
            lim = limits.get(fr)
            if lim is not None:
                n = lim.nominal
                if (new > n) is not (old > n):
                    self._over[cq] += 1 if new > n else -1
                if pu is not None:
                    # `_contribution`, inlined: this runs for every lift and restore of a what-if.
                    g = lim.guaranteed
                    change = (new - g if new > g else 0) - (old - g if old > g else 0)
                    if change:
                        pu[fr] = pu.get(fr, 0) + change

    def remove(self, cq: str, delta: Mapping[FR, int]) -> None:
        self.add(cq, delta, -1)

    def ceiling(self, cq: str, fr: FR) -> int:
        """The most `cq` can ever use of a flavor/resource, whatever the others use: its nominal quota
        without a cohort; in a cohort, its guaranteed part plus the whole pool (every member's lendable
        quota, its own included), within its borrowing limit. 0 when it has no quota for it."""
        lim = self._limits[cq].get(fr)
        if lim is None:
            return 0
        cohort = self._cohort_of[cq]
        if cohort is None:
            return lim.nominal
        most = lim.guaranteed + self._pool[cohort].get(fr, 0)
        return most if lim.max_usage is None else min(most, lim.max_usage)

    def nominal(self, cq: str, fr: FR) -> int:
        lim = self._limits[cq].get(fr)
        return 0 if lim is None else lim.nominal

    def cohort_members(self, cohort: str) -> Sequence[str]:
        """The cohort's queues, in the order given (worked out once: asked for every preemption search)."""
        members = self._members.get(cohort)
        if members is None:
            members = self._members[cohort] = tuple(name for name, c in self._cohort_of.items() if c == cohort)
        return members

    def pool_capacity(self, cohort: str, fr: FR) -> int:
        return self._pool.get(cohort, {}).get(fr, 0)

    def lendable(self, cohort: str) -> Mapping[str, int]:
        """The cohort's lendable quota per resource, summed over flavors (Kueue's `calculateLendable`,
        for a cohort without quota of its own): what fair shares are measured against."""
        cached = self._lendable.get(cohort)
        if cached is None:
            cached = self._lendable[cohort] = {}
            for (_, res), q in self._pool.get(cohort, {}).items():
                cached[res] = cached.get(res, 0) + q
        return cached

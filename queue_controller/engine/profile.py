"""The capacity profile that reservations and backfill are checked against (the rules are in backfill.py).

A profile is the free capacity of one flavor's pool over future time, as a step function: what is free
now, plus what running jobs release at their estimated ends, minus what reservations and admissions
hold. It aggregates the pool's nodes (as classic EASY counts processors), so node-level fragmentation is
ignored when computing a reserved start; the placement of a job that starts now is always checked on
concrete nodes.

Layout, for speed: one list of breakpoints (`times`) and one list of free amounts per resource, indexed
like `times` (a column per resource, not a dict per segment). Holding a job over a range is then one
list comprehension per resource, and checking a range is `min` over a slice: C loops over a few hundred
segments instead of Python ones. A breakpoint whose segment equals the one before it changes no answer
(a start found there is found at the earlier breakpoint already), so splits are never merged back.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Mapping, Sequence
from itertools import accumulate

INF = math.inf

# A temporary change to the profile for one question: (from, until, amounts added to what is free).
Extra = tuple[float, float, Mapping[str, int]]


class Profile:
    def __init__(self, now: float, free_now: Mapping[str, int],
                 releases: Iterable[tuple[float, Mapping[str, int]]]) -> None:
        self.now = now
        events: dict[float, dict[str, int]] = {}
        for t, res in releases:
            t = max(t, now)
            acc = events.setdefault(t, {})
            for r, q in res.items():
                acc[r] = acc.get(r, 0) + q
        at_now = events.pop(now, {})
        later = sorted(events)
        self.times: list[float] = [now, *later]
        names = set(free_now)
        for res in events.values():
            names.update(res)
        names.update(at_now)
        # Free amount of each resource from each breakpoint on (`times`).
        self.cols: dict[str, list[int]] = {}
        for r in names:
            start = free_now.get(r, 0) + at_now.get(r, 0)
            self.cols[r] = list(accumulate((events[t].get(r, 0) for t in later), initial=start))
        self.reservations = 0
        # The reserved jobs: (priority, queue order, key, share group), for backfill.may_start_now.
        self.holders: list[tuple[int, float, str, str]] = []

    def _col(self, r: str) -> list[int]:
        col = self.cols.get(r)
        if col is None:
            col = self.cols[r] = [0] * len(self.times)
        return col

    def _split(self, t: float) -> int:
        """Index of the segment starting exactly at t, creating the breakpoint if needed."""
        times = self.times
        i = bisect.bisect_left(times, t)
        if i < len(times) and times[i] == t:
            return i
        times.insert(i, t)
        for col in self.cols.values():
            col.insert(i, col[i - 1])
        return i

    def _span(self, start: float, end: float) -> tuple[int, int]:
        """Indexes [i, j) of the segments that overlap [start, end)."""
        i = max(bisect.bisect_right(self.times, start) - 1, 0)
        j = bisect.bisect_left(self.times, end) if end < INF else len(self.times)
        return i, j

    def fits(self, start: float, duration: float, req: Mapping[str, int]) -> bool:
        i, j = self._span(start, start + duration)
        if j <= i:
            return True
        for r, q in req.items():
            if q > 0:
                col = self.cols.get(r)
                if col is None or min(col[i:j]) < q:
                    return False
        return True

    def earliest_start(self, req: Mapping[str, int], duration: float, not_before: float | None = None,
                       extra: Sequence[Extra] = ()) -> float | None:
        """Earliest time, a breakpoint or `not_before`, from which `req` is free for `duration` seconds,
        or None if never. `extra`: amounts free besides the profile's over given ranges (a reservation's
        view of jobs it may vacate early), asked about without changing the profile."""
        if not_before == INF:
            return None
        for t0, t1, _ in extra:
            self._split(t0)
            if t1 < INF:
                self._split(t1)
        times = self.times
        n = len(times)
        i0 = 0 if not_before is None else max(bisect.bisect_right(times, not_before) - 1, 0)
        # ok[k]: `req` is free in segment i0 + k.
        ok: list[bool] | None = None
        for r, q in req.items():
            if q <= 0:
                continue
            col = self.cols.get(r)
            if col is None:
                col = [0] * n
            adds = [(t0, t1, a[r]) for t0, t1, a in extra if a.get(r)]
            if adds:
                diff = [0] * (n + 1)
                for t0, t1, a in adds:
                    diff[bisect.bisect_left(times, t0)] += a
                    diff[bisect.bisect_left(times, t1) if t1 < INF else n] -= a
                vals = [x + d for x, d in zip(col[i0:], list(accumulate(diff[:n]))[i0:], strict=True)]
            else:
                vals = col[i0:]
            ok = ([x >= q for x in vals] if ok is None
                  else [o and x >= q for o, x in zip(ok, vals, strict=True)])
        if ok is None:
            return times[i0] if not_before is None else max(times[i0], not_before)
        m = len(ok)
        k = 0
        while k < m:
            if not ok[k]:
                k += 1
                continue
            start = times[i0 + k] if not_before is None else max(times[i0 + k], not_before)
            end = start + duration
            j = k
            while j < m and times[i0 + j] < end:
                if not ok[j]:
                    break
                j += 1
            else:
                return start
            k = j + 1
        return None

    def hold(self, start: float, duration: float, req: Mapping[str, int]) -> None:
        """Subtract `req` over [start, start+duration). Free may go negative: it then means an
        opportunistic (checkpoint-aware) job overlaps a reservation and will be vacated."""
        i = self._split(start)
        end = start + duration
        j = self._split(end) if end < INF else len(self.times)
        for r, q in req.items():
            if q:
                col = self._col(r)
                col[i:j] = [x - q for x in col[i:j]]

"""The capacity profile that reservations and backfill are checked against (the rules are in backfill.py).

A profile is the free capacity of one flavor's pool over future time, as a step function: what is free
now, plus what running jobs release at their estimated ends, minus what reservations and admissions
hold. It aggregates the pool's nodes (as classic EASY counts processors), so node-level fragmentation is
ignored when computing a reserved start; the placement of a job that starts now is always checked on
concrete nodes.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Mapping

INF = math.inf


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
        self.times: list[float] = [now]
        self.free: list[dict[str, int]] = [dict(free_now)]
        current = dict(free_now)
        for t in sorted(events):
            for r, q in events[t].items():
                current[r] = current.get(r, 0) + q
            if t == now:
                self.free[0] = dict(current)
            else:
                self.times.append(t)
                self.free.append(dict(current))
        self.reservations = 0
        # The reserved jobs: (priority, queue order, key, share group), for backfill.may_start_now.
        self.holders: list[tuple[int, float, str, str]] = []

    @staticmethod
    def _covers(free: Mapping[str, int], req: Mapping[str, int]) -> bool:
        return all(free.get(r, 0) >= q for r, q in req.items() if q > 0)

    def _split(self, t: float) -> int:
        """Index of the segment starting exactly at t, creating the breakpoint if needed."""
        i = bisect.bisect_left(self.times, t)
        if i < len(self.times) and self.times[i] == t:
            return i
        self.times.insert(i, t)
        self.free.insert(i, dict(self.free[i - 1]))
        return i

    def fits(self, start: float, duration: float, req: Mapping[str, int]) -> bool:
        end = start + duration
        i = max(bisect.bisect_right(self.times, start) - 1, 0)
        while i < len(self.times) and self.times[i] < end:
            if not self._covers(self.free[i], req):
                return False
            i += 1
        return True

    def earliest_start(self, req: Mapping[str, int], duration: float, not_before: float | None = None) -> float | None:
        """Earliest time, a breakpoint or `not_before`, from which `req` is free for `duration` seconds,
        or None if never."""
        n = len(self.times)
        i = 0
        if not_before is not None:
            if not_before == INF:
                return None
            i = max(bisect.bisect_right(self.times, not_before) - 1, 0)
        while i < n:
            if not self._covers(self.free[i], req):
                i += 1
                continue
            start = self.times[i] if not_before is None else max(self.times[i], not_before)
            end = start + duration
            j = i
            while j < n and self.times[j] < end:
                if not self._covers(self.free[j], req):
                    break
                j += 1
            else:
                return start
            i = j + 1
        return None

    def hold(self, start: float, duration: float, req: Mapping[str, int]) -> None:
        """Subtract `req` over [start, start+duration). Free may go negative: it then means an
        opportunistic (checkpoint-aware) job overlaps a reservation and will be vacated."""
        i = self._split(start)
        end = start + duration
        j = self._split(end) if end < INF else len(self.times)
        for k in range(i, j):
            seg = self.free[k]
            for r, q in req.items():
                seg[r] = seg.get(r, 0) - q

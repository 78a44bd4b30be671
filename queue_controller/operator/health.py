"""The controller's health: liveness says whether the scheduling loop still makes progress, readiness
whether the cache has been synced from the API server.

Liveness (`/healthz`) used to answer "ok" whatever the loop did, so a loop stuck in an API call that
never returns, or a loop that stopped being woken, went unnoticed while jobs waited. Here it fails
(HTTP 503) when work has been pending for longer than `stuck_after_s` without a scheduling cycle
completing: "work" is a wake-up (a watch event or a due date kicked the loop) that no cycle has
started to serve yet, or a cycle that started and has not finished. An idle controller (nothing
kicked it) is alive however long ago its last cycle was.

Readiness (`/readyz`) is 503 until the start-up LIST of every watched kind has filled the cache (the
first cycle waits for the same thing), and again once the controller shuts down.

The loop itself lives in `controller.py`; `Health` watches it from outside, through the two calls
every cycle already goes through: `kick()` (wrapped by `watch_kick`) and `cycle()` (wrapped by
`watch_cycle`). The clock is injected, so the rules are unit-tested with a fake one.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

DEFAULT_STUCK_AFTER_S = 120.0  # a cycle over 10,000 pending jobs takes seconds (bench/engine_cycle.py)


class Health:
    """What the probes report, from wake-ups and cycles observed with `clock` (epoch seconds)."""

    def __init__(self, stuck_after_s: float = DEFAULT_STUCK_AFTER_S,
                 clock: Callable[[], float] = time.time) -> None:
        self.stuck_after_s = stuck_after_s
        self.clock = clock
        self.started_at = clock()
        self.ready = False
        self.cycles = 0
        self.last_cycle_at: float | None = None
        self.pending_since: float | None = None  # the oldest wake-up no cycle has started to serve yet
        self.cycle_started_at: float | None = None  # the cycle in progress, if any
        self.serving_since: float | None = None  # the oldest work the cycle in progress serves
        # Whether this replica leads (a standby serves no work, so it is never stuck).
        self.active: Callable[[], bool] = lambda: True

    # ---- what the controller tells us ---------------------------------------------------------------

    def kicked(self) -> None:
        """The loop was woken: work is pending from now on, unless older work is already pending (a
        standby's wake-ups are no work: only the leader decides)."""
        if self.pending_since is None and self.active():
            self.pending_since = self.clock()

    def cycle_started(self) -> None:
        """A cycle starts: it serves every wake-up so far (the loop clears its event just before), and
        is work itself until it completes."""
        now = self.clock()
        self.serving_since = now if self.pending_since is None else min(self.pending_since, now)
        self.pending_since = None
        self.cycle_started_at = now

    def cycle_ended(self, completed: bool) -> None:
        """A cycle returned (`completed`), or raised: then the work it served is still pending, so a
        loop whose every cycle fails is as stuck as one whose cycle never returns."""
        if completed:
            self.cycles += 1
            self.last_cycle_at = self.clock()
        elif self.serving_since is not None:
            self.pending_since = self.serving_since if self.pending_since is None else \
                min(self.pending_since, self.serving_since)
        self.cycle_started_at = self.serving_since = None

    def synced(self) -> None:
        """The cache holds a full LIST of every watched kind: the controller is ready."""
        self.ready = True

    def stopping(self) -> None:
        self.ready = False

    # ---- what the probes say ------------------------------------------------------------------------

    def stuck_for(self) -> float | None:
        """Seconds work has waited for a cycle to complete, when that exceeds `stuck_after_s`; else None."""
        waiting = [t for t in (self.pending_since, self.serving_since) if t is not None]
        if not waiting:
            return None
        waited = self.clock() - min(waiting)
        return waited if waited > self.stuck_after_s else None

    def liveness(self) -> tuple[bool, dict[str, Any]]:
        """(alive, the report shown at /healthz)."""
        report: dict[str, Any] = {"cycles": self.cycles, "lastCycleAt": self.last_cycle_at,
                                  "stuckAfterSeconds": self.stuck_after_s, "leading": self.active()}
        stuck = self.stuck_for()
        if stuck is None:
            return True, {"status": "ok", **report}
        running = "" if self.cycle_started_at is None else \
            f"; the cycle in progress started {self.clock() - self.cycle_started_at:.0f}s ago"
        message = (f"scheduling loop stuck: work has waited {stuck:.0f}s and no scheduling cycle completed "
                   f"(limit {self.stuck_after_s:.0f}s){running}")
        return False, {"status": "stuck", "message": message, **report}

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """(ready, the report shown at /readyz)."""
        if self.ready:
            return True, {"status": "ok", "cacheSynced": True}
        return False, {"status": "not ready", "cacheSynced": False,
                       "message": "the cache is not synced from the API server yet"}

    # ---- wiring ---------------------------------------------------------------------------------------

    def watch_kick(self, kick: Callable[[], None]) -> Callable[[], None]:
        """`kick`, also noting that work is pending."""
        @functools.wraps(kick)
        def wrapped() -> None:
            self.kicked()
            kick()
        return wrapped

    def watch_cycle(self, cycle: Callable[[], Coroutine[Any, Any, T]]) -> Callable[[], Coroutine[Any, Any, T]]:
        """`cycle`, also noting when it starts and whether it completes."""
        @functools.wraps(cycle)
        async def wrapped() -> T:
            self.cycle_started()
            completed = False
            try:
                result = await cycle()
                completed = True
                return result
            finally:
                self.cycle_ended(completed)
        return wrapped


class HealthServer:
    """`/healthz` and `/readyz` over HTTP, served in the controller's event loop (kopf's)."""

    def __init__(self, health: Health, port: int, host: str = "0.0.0.0") -> None:
        self.health = health
        self.port = port
        self.host = host
        self._runner: Any = None

    async def start(self) -> None:
        from aiohttp import web

        def respond(probe: Callable[[], tuple[bool, dict[str, Any]]]) -> Callable[[web.Request], Awaitable[Any]]:
            async def handler(_: web.Request) -> web.Response:
                ok, report = probe()
                return web.Response(status=200 if ok else 503, text=json.dumps(report) + "\n",
                                    content_type="application/json")
            return handler

        app = web.Application()
        app.add_routes([web.get("/healthz", respond(self.health.liveness)),
                        web.get("/readyz", respond(self.health.readiness))])
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

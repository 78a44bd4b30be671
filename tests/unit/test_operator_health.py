"""The controller's probes: liveness fails on a stuck loop (not when idle), readiness follows cache sync."""

from __future__ import annotations

import asyncio
import json
import socket
import urllib.error
import urllib.request

import pytest

from queue_controller.operator.health import Health, HealthServer

pytestmark = pytest.mark.unit


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def make(stuck_after: float = 60.0) -> tuple[Health, Clock]:
    clock = Clock()
    return Health(stuck_after, clock=clock), clock


def test_idle_loop_is_alive_however_long_since_its_last_cycle() -> None:
    health, clock = make()
    health.cycle_started()
    health.cycle_ended(completed=True)
    clock.now += 3600  # nothing woke the loop for an hour: nothing to do is not being stuck
    assert health.liveness()[0]


def test_a_wakeup_no_cycle_serves_is_stuck_after_the_limit() -> None:
    health, clock = make(stuck_after=60)
    health.kicked()
    clock.now += 60
    assert health.liveness()[0], "exactly at the limit is still alive"
    clock.now += 1
    alive, report = health.liveness()
    assert not alive
    assert report["status"] == "stuck" and "61s" in report["message"]


def test_a_cycle_that_never_returns_is_stuck() -> None:
    health, clock = make(stuck_after=60)
    health.cycle_started()
    clock.now += 61
    alive, report = health.liveness()
    assert not alive
    assert "the cycle in progress started 61s ago" in report["message"]


def test_a_completed_cycle_serves_the_wakeups_before_it() -> None:
    health, clock = make(stuck_after=60)
    health.kicked()
    clock.now += 50
    health.cycle_started()
    clock.now += 5
    health.cycle_ended(completed=True)
    clock.now += 100
    alive, report = health.liveness()
    assert alive and report["cycles"] == 1 and report["lastCycleAt"] == 1_055.0


def test_a_wakeup_during_a_cycle_waits_from_its_own_time() -> None:
    health, clock = make(stuck_after=60)
    health.cycle_started()
    clock.now += 10
    health.kicked()  # an event arrives while the cycle runs: the loop owes another cycle
    health.cycle_ended(completed=True)
    clock.now += 55
    assert health.liveness()[0]  # waited 55 s since the kick
    clock.now += 10
    assert not health.liveness()[0]


def test_a_loop_whose_every_cycle_fails_is_stuck() -> None:
    health, clock = make(stuck_after=60)
    health.kicked()
    for _ in range(10):  # the loop retries every few seconds, and every cycle raises
        clock.now += 5
        health.cycle_started()
        clock.now += 2
        health.cycle_ended(completed=False)
        health.kicked()
    assert clock.now - 1_000.0 == 70
    assert not health.liveness()[0]


def test_readiness_follows_cache_sync_and_shutdown() -> None:
    health, _ = make()
    ready, report = health.readiness()
    assert not ready and report["cacheSynced"] is False
    health.synced()
    assert health.readiness()[0]
    health.stopping()
    assert not health.readiness()[0]


def test_wrappers_record_kicks_and_cycles() -> None:
    health, clock = make(stuck_after=60)
    kicks: list[int] = []
    kick = health.watch_kick(lambda: kicks.append(1))

    async def good() -> str:
        clock.now += 1
        return "decisions"

    async def bad() -> str:
        raise RuntimeError("API down")

    kick()
    assert kicks == [1] and health.pending_since == 1_000.0
    assert asyncio.run(health.watch_cycle(good)()) == "decisions"
    assert health.cycles == 1 and health.pending_since is None and health.cycle_started_at is None
    with pytest.raises(RuntimeError):
        asyncio.run(health.watch_cycle(bad)())
    assert health.cycles == 1 and health.pending_since == 1_001.0  # the failed cycle's work still waits


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_server_answers_200_or_503_with_the_report() -> None:
    health, clock = make(stuck_after=60)
    port = _free_port()

    def get(path: str) -> tuple[int, dict[str, object]]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    async def scenario() -> list[tuple[int, dict[str, object]]]:
        server = HealthServer(health, port, host="127.0.0.1")
        await server.start()
        try:
            seen = [await asyncio.to_thread(get, "/readyz"), await asyncio.to_thread(get, "/healthz")]
            health.synced()
            health.kicked()
            clock.now += 120
            seen += [await asyncio.to_thread(get, "/readyz"), await asyncio.to_thread(get, "/healthz")]
            return seen
        finally:
            await server.stop()

    (r1, h1, r2, h2) = asyncio.run(scenario())
    assert (r1[0], h1[0], r2[0], h2[0]) == (503, 200, 200, 503)
    assert h2[1]["status"] == "stuck"

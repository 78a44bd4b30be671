"""Admissions written behind the loop (issue 13): a cycle no longer waits for its admissions' writes and
pods. The cache assumes an admission at once, so while it is being written the next cycle counts its
quota as taken and neither admits the job twice nor gives its room to another; a write that fails gives
the room back. Also: the job lifecycle's writes of one cycle overlap, and Events are posted by a few
workers, not a task each."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import pytest

from queue_controller.engine import Admit
from queue_controller.operator.kube import ApiError
from queue_controller.operator.status import EVENT_POSTERS
from tests.unit.fake_kube import FakeKube, wire_time
from tests.unit.operator_world import World, make_world


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(scenario())


class Gate:
    """Holds the admission writes of chosen jobs until released, or fails them."""

    def __init__(self, w: World, jobs: set[str], fail: int | None = None) -> None:
        self.jobs, self.fail = jobs, fail
        self.open = asyncio.Event()
        self.held: list[str] = []
        inner = FakeKube._request_once

        async def request(kube: FakeKube, method: str, path: str, body: Any, content_type: str,
                          params: Mapping[str, str] | None) -> dict[str, Any]:
            name = path.rsplit("/", 2)[-2] if path.endswith("/status") else ""
            if ("checkpointablejobs" in path and name in self.jobs and method == "PATCH"
                    and (body or {}).get("status", {}).get("admission")):
                self.held.append(name)
                await self.open.wait()
                if self.fail is not None:
                    raise ApiError(self.fail, "InternalError", {"message": "etcd timeout"})
            return await inner(kube, method, path, body, content_type, params)

        w.kube._request_once = request.__get__(w.kube)  # type: ignore[method-assign]


def _admits(decisions: Any) -> list[str]:
    return [a.job for a in decisions.actions if isinstance(a, Admit)]


def test_an_admission_being_written_holds_its_quota_and_is_not_admitted_twice() -> None:
    async def scenario() -> None:
        w = make_world("kueue")  # 8 GPUs of quota, one 8-GPU node
        w.submit("a")
        w.submit("b")
        gate = Gate(w, {"a"})
        w.server.deliver(w.cache)
        first = await w.controller.cycle()
        assert _admits(first) == ["team/a"]
        for _ in range(5):
            await asyncio.sleep(0)
        assert gate.held == ["a"] and "team/a" in w.controller.behind
        assert w.phase("a") is None  # not written yet ...
        assert w.cache.jobs["team/a"].phase == "Admitted"  # ... but assumed
        # A user's edit lands meanwhile: its watch event (newer, still without the admission) must not
        # take the assumption back, or the next cycle would hand a's room to b.
        w.server.update_spec("checkpointablejobs", "team", "a", maxRestarts=5)
        w.server.deliver(w.cache)
        assert w.cache.jobs["team/a"].phase == "Admitted" and w.cache.jobs["team/a"].spec.max_restarts == 5
        w.clock.advance(1.0)
        second = await w.controller.cycle()
        assert _admits(second) == []
        assert w.server.status("b").get("phase") == "Pending"  # b waits: a holds the quota
        gate.open.set()
        await w.controller.settled()
        w.server.deliver(w.cache)
        assert w.phase("a") == "Admitted" and len(w.server.pods("a")) == 1
        patches = [p for m, p in w.server.log if m == "PATCH" and p.endswith("/checkpointablejobs/a/status")]
        assert len(patches) == 1  # one admission write, never a second
        assert not w.cache.assumed("team/a") and w.cache.jobs["team/a"].status["attempt"] == 1
        await w.cycle(1.0)
        assert w.phase("b") == "Pending" and not w.server.pods("b")

    run(scenario)


def test_a_failed_admission_write_gives_the_room_back() -> None:
    async def scenario() -> None:
        w = make_world("kueue")
        w.submit("a")
        gate = Gate(w, {"a"}, fail=500)
        w.server.deliver(w.cache)
        await w.controller.cycle()
        for _ in range(5):
            await asyncio.sleep(0)
        assert gate.held == ["a"] and w.cache.jobs["team/a"].phase == "Admitted"
        gate.open.set()
        await w.controller.settled()
        assert w.cache.jobs["team/a"].phase == "Pending" and not w.cache.assumed("team/a")
        assert not w.server.pods("a") and w.phase("a") != "Admitted"
        gate.fail = None  # the API server is back: the next cycle admits it again
        await w.cycle(1.0)
        assert w.phase("a") == "Admitted" and len(w.server.pods("a")) == 1

    run(scenario)


def test_the_lifecycle_writes_of_one_cycle_overlap() -> None:
    """Twenty jobs finish in one cycle: their Succeeded writes are in flight together, not one after
    another (at scale, hundreds of round trips in a row held the next admission back)."""
    async def scenario() -> None:
        w = make_world("kueue", nodes=3, quota_gpus=160, gpus=64)
        for i in range(20):
            w.submit(f"j{i:02}", gpus=8)
        await w.cycle()
        for i in range(20):
            w.server.run_pods(f"j{i:02}")
        await w.cycle(1.0)
        for i in range(20):
            w.server.finish_pods(f"j{i:02}")
        inner = FakeKube._request_once
        in_flight = peak = 0

        async def request(kube: FakeKube, method: str, path: str, body: Any, content_type: str,
                          params: Mapping[str, str] | None) -> dict[str, Any]:
            nonlocal in_flight, peak
            if method == "PATCH" and (body or {}).get("status", {}).get("phase") == "Succeeded":
                in_flight += 1
                peak = max(peak, in_flight)
                await asyncio.sleep(0)  # a round trip: the others may start meanwhile
                in_flight -= 1
            return await inner(kube, method, path, body, content_type, params)

        w.kube._request_once = request.__get__(w.kube)  # type: ignore[method-assign]
        await w.cycle(5.0)
        assert all(w.phase(f"j{i:02}") == "Succeeded" for i in range(20))
        assert peak > 1

    run(scenario)


def test_events_are_posted_by_a_few_workers_and_none_is_lost() -> None:
    async def scenario() -> None:
        w = make_world("kueue")
        w.submit("a")
        w.server.deliver(w.cache)
        job = w.cache.jobs["team/a"]
        release = asyncio.Event()
        inner = FakeKube._request_once
        in_flight = peak = 0

        async def request(kube: FakeKube, method: str, path: str, body: Any, content_type: str,
                          params: Mapping[str, str] | None) -> dict[str, Any]:
            nonlocal in_flight, peak
            if path.endswith("/events"):
                in_flight += 1
                peak = max(peak, in_flight)
                await release.wait()
                in_flight -= 1
            return await inner(kube, method, path, body, content_type, params)

        w.kube._request_once = request.__get__(w.kube)  # type: ignore[method-assign]
        for i in range(200):
            w.controller.writer.event(job, "Tested", f"event {i}", 0.0)
        for _ in range(10):
            await asyncio.sleep(0)
        assert peak == EVENT_POSTERS
        release.set()
        await w.controller.writer.flush()
        assert sorted(e["message"] for e in w.server.events) == sorted(f"event {i}" for i in range(200))

    run(scenario)


def test_the_running_grace_starts_when_the_controller_first_sees_the_pods_running() -> None:
    """Under load the watch brings a pod's start late, and its end about as late: a run the controller
    first sees seconds after the pod's (whole-second) start time, and sees end within the grace, is
    still written once, Admitted -> Succeeded, and its run time counts from the pods' own start."""
    async def scenario() -> None:
        from queue_controller.operator.jobs import RUNNING_GRACE_S

        w = make_world("kueue", quota_gpus=8, gpus=8)
        written: list[str | None] = []
        patch_status = w.server.patch_status

        def recording(plural: str, ns: str | None, name: str, status: Mapping[str, Any]) -> dict[str, Any]:
            written.append(status.get("phase"))
            return patch_status(plural, ns, name, status)

        w.server.patch_status = recording  # type: ignore[method-assign]
        w.submit("late")
        await w.cycle()
        w.server.run_pods("late")
        await w.cycle(3 * RUNNING_GRACE_S)  # the first cycle that sees the pods running, 3 s after their start
        assert w.phase("late") == "Admitted"
        w.server.finish_pods("late")
        await w.cycle(RUNNING_GRACE_S / 2)
        assert w.phase("late") == "Succeeded"
        assert [phase for phase in written if phase] == ["Admitted", "Succeeded"]
        assert w.server.status("late")["runTimeSeconds"] == pytest.approx(3 * RUNNING_GRACE_S, abs=1.0)

    run(scenario)


def test_a_run_shorter_than_the_grace_is_written_once_and_a_longer_one_is_written_running() -> None:
    """A job whose pods finish within RUNNING_GRACE_S of starting goes from Admitted straight to Succeeded
    (one write, not two), even when a cycle saw its pods running; a longer run is written Running, with
    its pods' own start time."""
    async def scenario() -> None:
        from queue_controller.operator.jobs import RUNNING_GRACE_S

        w = make_world("kueue", quota_gpus=16, gpus=16)
        written: list[tuple[str, str | None]] = []
        patch_status = w.server.patch_status

        def recording(plural: str, ns: str | None, name: str, status: Mapping[str, Any]) -> dict[str, Any]:
            written.append((name, status.get("phase")))
            return patch_status(plural, ns, name, status)

        w.server.patch_status = recording  # type: ignore[method-assign]
        w.submit("short")
        w.submit("long")
        await w.cycle()
        w.server.run_pods("short")
        w.server.run_pods("long")
        started = w.clock()
        await w.cycle(RUNNING_GRACE_S / 2)  # both running, neither for the grace yet
        assert w.phase("short") == "Admitted" and w.phase("long") == "Admitted"
        w.server.finish_pods("short")
        await w.cycle(RUNNING_GRACE_S)
        assert w.phase("short") == "Succeeded" and w.phase("long") == "Running"
        assert [phase for name, phase in written if name == "short"] == ["Admitted", "Succeeded"]
        assert [phase for name, phase in written if name == "long"] == ["Admitted", "Running"]
        assert w.server.status("long")["runStartTime"] == wire_time(started)

    run(scenario)

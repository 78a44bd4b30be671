"""Leader election over a Lease (operator/leader.py), against a Lease store that answers as the API
server does (resourceVersion conflicts), with each replica's clocks driven by hand."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import pytest

from queue_controller.operator.kube import ApiError
from queue_controller.operator.leader import LEASE_S, RENEW_DEADLINE_S, LeaderElection

pytestmark = pytest.mark.unit

PATH = "/apis/coordination.k8s.io/v1/namespaces/ckq-system/leases"


class LeaseStore:
    """One Lease, with optimistic concurrency; `down` makes every request fail as an outage does."""

    def __init__(self) -> None:
        self.lease: dict[str, Any] | None = None
        self.rv = 0
        self.down = False

    async def request(self, method: str, path: str, body: Any = None, **_: Any) -> dict[str, Any]:
        await asyncio.sleep(0)  # replicas interleave between their reads and writes, as over a network
        if self.down:
            raise ApiError(503, "Service Unavailable", {"message": "down"})
        if method == "GET":
            if self.lease is None:
                raise ApiError(404, "Not Found", {"message": "not found"})
            return copy.deepcopy(self.lease)
        if method == "POST":
            assert path == PATH
            if self.lease is not None:
                raise ApiError(409, "Conflict", {"message": "exists"})
        elif method == "PUT":
            assert path == f"{PATH}/ckq-controller" and self.lease is not None
            if body["metadata"].get("resourceVersion") != self.lease["metadata"]["resourceVersion"]:
                raise ApiError(409, "Conflict", {"message": "the object has been modified"})
        else:
            raise AssertionError(method)
        self.rv += 1
        self.lease = copy.deepcopy(body)
        self.lease["metadata"]["resourceVersion"] = str(self.rv)
        return copy.deepcopy(self.lease)

    @property
    def holder(self) -> str:
        return (self.lease or {}).get("spec", {}).get("holderIdentity", "")


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def replica(store: LeaseStore, name: str, clock: Clock) -> LeaderElection:
    return LeaderElection(store, name, clock=clock, monotonic=clock)  # type: ignore[arg-type]


def test_one_replica_leads_and_the_other_waits_while_it_renews() -> None:
    async def scenario() -> None:
        store, clock = LeaseStore(), Clock()
        a, b = replica(store, "a", clock), replica(store, "b", clock)
        assert await a.step() and not await b.step()
        assert store.holder == "a" and store.lease is not None
        assert store.lease["spec"]["leaseDurationSeconds"] == LEASE_S
        for _ in range(20):  # a minute of renewals: b never takes over
            clock.t += 3
            assert await a.step() and not await b.step()
        assert (a.transitions, b.transitions) == (1, 0)

    asyncio.run(scenario())


def test_the_standby_takes_over_once_the_leader_stops_renewing_and_never_overlaps() -> None:
    async def scenario() -> None:
        store, clock = LeaseStore(), Clock()
        a, b = replica(store, "a", clock), replica(store, "b", clock)
        await a.step()
        await b.step()
        leading_a, leading_b = [], []
        store_down_for_a = True
        for _ in range(20):  # a cannot reach the API server any more; b can
            clock.t += 1
            store.down = store_down_for_a
            leading_a.append((clock.t, await a.step()))
            store.down = False
            leading_b.append((clock.t, await b.step()))
        stepped_down = next(t for t, leading in leading_a if not leading)
        took_over = next(t for t, leading in leading_b if leading)
        assert stepped_down < took_over  # never two leaders
        assert stepped_down - 1000 == RENEW_DEADLINE_S and took_over - 1000 == LEASE_S  # deadline, then lease
        assert store.holder == "b" and store.lease is not None and store.lease["spec"]["leaseTransitions"] == 1

    asyncio.run(scenario())


def test_a_leader_that_stops_cleanly_hands_over_at_the_next_retry() -> None:
    async def scenario() -> None:
        store, clock = LeaseStore(), Clock()
        a, b = replica(store, "a", clock), replica(store, "b", clock)
        await a.step()
        await b.step()
        await a.release()
        assert not a.leading and store.holder == ""
        clock.t += 1
        assert await b.step() and store.holder == "b"

    asyncio.run(scenario())


def test_two_replicas_racing_for_a_free_lease_elect_exactly_one() -> None:
    async def scenario() -> None:
        store, clock = LeaseStore(), Clock()
        replicas = [replica(store, f"r{i}", clock) for i in range(5)]
        results = await asyncio.gather(*(r.step() for r in replicas))
        assert sum(results) == 1
        leader = next(r for r in replicas if r.leading)
        await leader.release()
        clock.t += 2
        results = await asyncio.gather(*(r.step() for r in replicas))
        assert sum(results) == 1  # the second race: one winner again (the others got 409s)

    asyncio.run(scenario())


def test_the_loop_decides_only_while_leading() -> None:
    async def scenario() -> None:
        from tests.unit.operator_world import make_world

        w = make_world("kueue")
        w.submit("job")
        w.server.deliver(w.cache)
        leading = False
        w.controller.leading = lambda: leading
        loop = asyncio.create_task(w.controller.run(debounce_s=0))
        w.controller.kick()
        for _ in range(20):
            await asyncio.sleep(0)
        assert w.controller.cycles == 0 and w.phase("job") is None  # the standby decided nothing
        leading = True
        w.controller.kick()
        for _ in range(200):
            await asyncio.sleep(0)
            if w.controller.cycles:
                break
        loop.cancel()
        await w.controller.settled()  # the admission is written behind the loop
        assert w.controller.cycles >= 1 and w.phase("job") == "Admitted"

    asyncio.run(scenario())


def test_lease_times_are_micro_times() -> None:
    """The API server parses Lease times as metav1.MicroTime: six fractional digits, always."""
    from queue_controller.operator.leader import micro_time

    assert micro_time(0) == "1970-01-01T00:00:00.000000Z"
    assert micro_time(1.25) == "1970-01-01T00:00:01.250000Z"

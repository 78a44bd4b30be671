"""The snapshot keeps waiting jobs' engine records between cycles, and rebuilds exactly those whose inputs
changed: the job itself, its checkpoints, its queue or priority, or the cluster's checkpoint settings."""

from __future__ import annotations

import asyncio

import pytest

from queue_controller.operator.snapshot import JobMemo, build
from tests.unit.operator_world import World, make_world

pytestmark = pytest.mark.unit


def _jobs(w: World, memo: JobMemo | None, env: object = "env") -> dict[str, object]:
    snap, _ = build(w.cache, w.controller.estimate, w.controller.job_backends.admissible, memo, env)
    return {j.key: j for j in snap.jobs}


def test_waiting_jobs_are_converted_once_until_they_change() -> None:
    async def scenario() -> None:
        w = make_world("kueue", quota_gpus=0)  # nothing fits: every job waits
        for name in ("a", "b"):
            w.submit(name, priority=1)
        await w.cycle()
        memo = JobMemo()
        first = _jobs(w, memo)
        again = _jobs(w, memo)
        assert again["team/a"] is first["team/a"] and again["team/b"] is first["team/b"]
        # A change of the job (its record is replaced) rebuilds it, and only it.
        w.server.update_spec("checkpointablejobs", "team", "a", priority=7)
        w.server.deliver(w.cache)
        changed = _jobs(w, memo)
        assert changed["team/a"] is not first["team/a"] and changed["team/a"].priority == 7
        assert changed["team/b"] is first["team/b"]
        # Other cluster settings or node kinds: everything is rebuilt.
        other = _jobs(w, memo, env="other")
        assert other["team/b"] is not first["team/b"] and other["team/b"] == first["team/b"]
        # Without a memo, nothing is kept.
        assert _jobs(w, None)["team/b"] is not other["team/b"]

    asyncio.run(scenario())


def test_nodes_flavors_and_queues_are_the_same_objects_until_they_change() -> None:
    """So the engine's node index and its accounting of running jobs carry over between cycles."""
    async def scenario() -> None:
        from tests.unit.operator_world import node_body

        w = make_world("kueue", nodes=3)
        await w.cycle()
        memo = JobMemo()

        def snap() -> object:
            return build(w.cache, w.controller.estimate, w.controller.job_backends.admissible, memo, "env")[0]

        a, b = snap(), snap()
        assert a.nodes is b.nodes and a.flavors is b.flavors and a.cluster_queues is b.cluster_queues  # type: ignore[attr-defined]
        w.server.delete("nodes", None, "n1")
        w.server.create("nodes", node_body("n1", gpus=4))
        w.server.deliver(w.cache)
        c = snap()
        assert c.nodes is not b.nodes and c.flavors is b.flavors  # type: ignore[attr-defined]
        assert [x is y for x, y in zip(c.nodes, b.nodes, strict=True)] == [True, False, True]  # type: ignore[attr-defined]

    asyncio.run(scenario())

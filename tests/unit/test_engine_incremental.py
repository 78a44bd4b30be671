"""The incremental engine decides exactly what a from-scratch engine decides, cycle after cycle.

`decide` takes over from earlier cycles what the snapshot did not change (engine/carry.py: the node
index, the running jobs' accounting, the queue order by deltas, shapes, waiting records, admissible
shapes). These scenarios (the golden tests' random clusters) run many cycles under each shipped policy,
fair sharing's included. Between cycles the decisions are applied and the world moves: jobs arrive, finish and are
vacated, pending jobs change priority or queue order, running jobs show up on other nodes, nodes change
(cordoned, not ready, other pods on them), a queue's quota changes; and the snapshot is handed over in
three ways: the very same tuples (the simulator), new tuples of the same objects, and new equal objects
(the controller converts jobs afresh). Every cycle, the carrying engine's decisions are compared with
those of an engine given nothing (`Carry()`), and the run must have taken each carried path, so the
comparison is not vacuous.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import replace

import pytest

from queue_controller.engine import Carry, ClusterQueue, FlavorQuotas, Job, JobState, Node, Snapshot, decide
from queue_controller.policies import load_policy
from tests.unit.test_engine_golden import FLAVORS, POLICIES, _apply, _settle, scenario

pytestmark = pytest.mark.unit

CYCLES = 10


def _change_pending(jobs: dict[str, Job], rng: random.Random, now: float) -> None:
    """A few waiting jobs change where they stand: priority up or down, or a new queue-order time (as a
    job requeued after a pods-ready timeout gets)."""
    waiting = [k for k, j in jobs.items() if j.state is JobState.PENDING]
    for key in rng.sample(waiting, min(len(waiting), rng.randint(0, 3))):
        j = jobs[key]
        if rng.random() < 0.5:
            jobs[key] = replace(j, priority=j.priority + rng.choice((-2, -1, 1, 2, 5)))
        else:
            jobs[key] = replace(j, queue_order=now + rng.random())


def _move_running(jobs: dict[str, Job], nodes: tuple[Node, ...], rng: random.Random) -> None:
    """Now and then a running job is seen on other nodes than in the last cycle (vacated and admitted
    again between two snapshots): same key, another account."""
    running = [k for k, j in jobs.items() if j.state is JobState.ADMITTED and j.placement]
    if not running or rng.random() > 0.3:
        return
    j = jobs[rng.choice(running)]
    names = [n.name for n in nodes]
    jobs[j.key] = replace(j, placement=tuple(replace(pl, nodes=tuple(rng.choice(names) for _ in pl.nodes))
                                             for pl in j.placement))


def _change_nodes(nodes: tuple[Node, ...], rng: random.Random) -> tuple[Node, ...]:
    """Now and then a node is cordoned, goes (not) ready, or gets other pods on it."""
    if rng.random() > 0.3:
        return nodes
    out = list(nodes)
    i = rng.randrange(len(out))
    n = out[i]
    what = rng.choice(("ready", "cordon", "other"))
    if what == "ready":
        out[i] = replace(n, ready=not n.ready)
    elif what == "cordon":
        out[i] = replace(n, unschedulable=not n.unschedulable)
    else:
        out[i] = replace(n, other_usage={"cpu": rng.choice((0, 1000, 4000))})
    return tuple(out)


def _change_queues(queues: tuple[ClusterQueue, ...], rng: random.Random) -> tuple[ClusterQueue, ...]:
    """Rarely, a queue's quota of its first flavor grows or shrinks."""
    if rng.random() > 0.1:
        return queues
    out = list(queues)
    i = rng.randrange(len(out))
    q = out[i]
    group = q.resource_groups[0]
    fq = group.flavors[0]
    res = {r: replace(quota, nominal=max(0, quota.nominal + rng.choice((-4000, 4000))))
           for r, quota in fq.resources.items()}
    groups = (replace(group, flavors=(FlavorQuotas(fq.name, res), *group.flavors[1:])), *q.resource_groups[1:])
    out[i] = replace(q, resource_groups=groups)
    return tuple(out)


def _handed_over(snap: Snapshot, how: str) -> Snapshot:
    if how == "same":
        return snap
    if how == "tuples":  # new tuples of the same objects
        return Snapshot(tuple(list(snap.nodes)), tuple(list(snap.flavors)), tuple(list(snap.cluster_queues)),
                        tuple(list(snap.jobs)), snap.node_mtbf_s)
    # new, equal objects: as the controller converts its records afresh
    return Snapshot(tuple(replace(n) for n in snap.nodes), tuple(replace(f) for f in snap.flavors),
                    tuple(replace(q) for q in snap.cluster_queues), tuple(replace(j) for j in snap.jobs),
                    snap.node_mtbf_s)


def run(seed: int, paths: Counter[str]) -> None:
    rng = random.Random(seed)
    nodes, queues, initial = scenario(rng, big=seed % 3 == 0)
    for name in (*POLICIES, "fair"):
        policy = load_policy(name)
        world = random.Random(seed * 31 + 7)
        carry = Carry()
        jobs = {j.key: j for j in initial}
        now = 100.0
        for step in range(CYCLES):
            snap = _handed_over(Snapshot(nodes, FLAVORS, queues, tuple(jobs.values())),
                                world.choice(("same", "same", "tuples", "equal")))
            got = decide(snap, now, policy, carry)
            want = decide(snap, now, policy, Carry())
            assert (got.actions, got.waiting, got.next_wakeup) == (want.actions, want.waiting, want.next_wakeup), \
                f"seed {seed}, policy {name}, cycle {step}"
            paths.update(f"{part}:{how}" for part, how in carry.how.items())
            _apply(jobs, got, now)
            now += world.choice((0, 10, 60, 400))
            _settle(jobs, world, now)
            _change_pending(jobs, world, now)
            _move_running(jobs, nodes, world)
            nodes = _change_nodes(nodes, world)
            queues = _change_queues(queues, world)
            for k in range(world.randint(0, 3)):
                src = world.choice(initial)
                key = f"{src.key}-s{step}-{k}"
                jobs[key] = replace(src, key=key, queue_order=now + k, state=JobState.PENDING, placement=())


def test_carrying_engine_decides_as_a_fresh_one() -> None:
    paths: Counter[str] = Counter()
    for seed in range(16):
        run(seed, paths)
    # Each way of carrying was taken, and so was each way of building afresh.
    for path in ("index:carried", "index:equal", "index:built", "accounting:carried", "accounting:built",
                 "order:carried", "order:built"):
        assert paths[path] > 0, (path, paths)



@pytest.mark.parametrize("handed", ["same", "tuples", "equal"])
def test_admissible_shapes_are_carried_only_under_the_same_queues(handed: str) -> None:
    """Which (queue, shape) pairs a queue can admit at all is carried from cycle to cycle (carry.py); a
    queue whose quota shrinks below a shape makes it inadmissible at once, under a carrying engine as
    under a fresh one, and one whose quota grows back admits it again."""
    from tests.unit.engine_factory import IASS, flavor, job, node, queue

    nodes = (node("n1"), node("n2"))
    big = job("big", gpus=8, pods=2)  # 16 GPUs
    carry = Carry()
    outcome = []
    for gpus in (16, 8, 16):
        snap = _handed_over(Snapshot(nodes, (flavor(),), (queue(gpus=gpus),), (big,)), handed)
        got = decide(snap, 10.0, IASS, carry)
        want = decide(snap, 10.0, IASS, Carry())
        assert (got.actions, got.waiting) == (want.actions, want.waiting), gpus
        outcome.append(got.waiting["ns/big"].reason.value if "ns/big" in got.waiting else "admitted")
    assert outcome == ["admitted", "NeverFitsQuota", "admitted"]

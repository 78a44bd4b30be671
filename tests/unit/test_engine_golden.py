"""Golden decisions: the engine's fast paths decide exactly what the straightforward engine decided.

The engine answers most of a long queue through memos and indexes (equivalence per queue and shape, the
victim order computed once per group, nodes indexed by free amount, pools kept across cycles). None of
that may change a decision. These scenarios (random but fixed: clusters with taints, selectors, several
flavors, cohorts with borrowing and lending limits, StrictFIFO, stopped and missing queues, multi-pod-set
gangs) run four cycles under each shipped policy, applying the decisions between cycles (admit, preempt,
checkpoint, victims leaving, jobs finishing, new arrivals), and the decisions of every cycle are hashed.

The digests were recorded with the engine before its fast paths (main at ce294d0, plus the inadmissible
jobs of fit.py), and were equal for 2,800 scenarios of this kind and the bench snapshots. A change that
means to change decisions re-records them: `python tests/unit/test_engine_golden.py` prints the table.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import replace

import pytest

from queue_controller.engine import (
    GPU,
    Admit,
    Checkpoint,
    ClusterQueue,
    Decisions,
    Flavor,
    FlavorQuotas,
    Job,
    JobState,
    Node,
    PodSet,
    Preempt,
    QueueingStrategy,
    Quota,
    ReclaimWithinCohort,
    ResourceGroup,
    Resume,
    Snapshot,
    Taint,
    Toleration,
    WithinClusterQueue,
    decide,
)
from queue_controller.policies import load_policy

pytestmark = pytest.mark.unit

M = 1000
POLICIES = ("fifo", "kueue", "easy", "iass")
FLAVORS = (Flavor("h100", {"f": "h100"}), Flavor("a100", {"f": "a100"}, (), (Toleration("gpu", "Exists"),)),
           Flavor("cpu", {"f": "cpu"}))


def scenario(rng: random.Random, big: bool) -> tuple[tuple[Node, ...], tuple[ClusterQueue, ...], list[Job]]:
    nodes = []
    for i in range(rng.randint(1, 60 if big else 8)):
        fl = rng.choice(("h100", "a100", "cpu"))
        taints = (Taint("gpu", "x"),) if fl == "a100" and rng.random() < 0.5 else ()
        if rng.random() < 0.1:
            taints += (Taint("special", "y"),)
        gpus = rng.choice((4, 8)) if fl != "cpu" else 0
        nodes.append(Node(f"n{i}", {"cpu": 32 * M, "memory": 256 * M, GPU: gpus * M},
                          {"f": fl, "zone": rng.choice("ab")}, taints,
                          ready=rng.random() < 0.9 or i == 0, unschedulable=rng.random() < 0.05,
                          other_usage={GPU: rng.choice((0, 0, 0, 1)) * M} if gpus else {}))
    queues = []
    for q in range(rng.randint(1, 6 if big else 3)):
        cohort = rng.choice((None, "c", "d"))
        groups = []
        if rng.random() < 0.2:
            fqs = [FlavorQuotas(fl, {GPU: Quota(rng.randint(0, 40 if big else 16) * M,
                                                None if cohort is None else rng.choice((None, 0, 4 * M)))})
                   for fl in ("h100", "a100")]
            groups.append(ResourceGroup((GPU,), tuple(fqs)))
            groups.append(ResourceGroup(("cpu", "memory"), (FlavorQuotas("cpu", {
                "cpu": Quota(rng.randint(0, 200) * M), "memory": Quota(rng.randint(0, 2000) * M)}),)))
        else:
            order = ["h100", "a100", "cpu"]
            rng.shuffle(order)
            fqs = []
            for fl in order[:rng.randint(1, 3)]:
                res = {}
                for r in ("cpu", "memory", GPU):
                    nominal = rng.randint(0, 60 if big else 16) * (4 if r != GPU else 1)
                    borrow = None if cohort is None else rng.choice((None, 0, 4))
                    lend = None if cohort is None else rng.choice((None, 0, nominal // 2))
                    res[r] = Quota(nominal * M, None if borrow is None else borrow * M,
                                   None if lend is None else lend * M)
                fqs.append(FlavorQuotas(fl, res))
            groups.append(ResourceGroup(("cpu", "memory", GPU), tuple(fqs)))
        queues.append(ClusterQueue(
            f"q{q}", tuple(groups), cohort=cohort,
            queueing_strategy=rng.choice((QueueingStrategy.BEST_EFFORT_FIFO,) * 3 + (QueueingStrategy.STRICT_FIFO,)),
            within_cluster_queue=rng.choice((None, *WithinClusterQueue)),
            reclaim_within_cohort=rng.choice((None, *ReclaimWithinCohort)),
            backfill_enabled=rng.choice((None, None, True, False)), reservation_depth=rng.choice((None, None, 2)),
            fair_weight=rng.choice((1.0, 1.0, 2.0, 0.0)), stopped=rng.random() < 0.05))
    jobs = []
    shapes = [(rng.randint(1, 4), rng.randint(1, 8), rng.choice((0, 1, 2, 4, 8))) for _ in range(rng.randint(1, 6))]
    for j in range(rng.randint(1, 300 if big else 14)):
        pods, cpu, gpus = (rng.choice(shapes) if rng.random() < 0.8
                           else (rng.randint(1, 5), rng.randint(1, 16), rng.randint(0, 9)))
        sel = {"zone": rng.choice("ab")} if rng.random() < 0.1 else {}
        tol = (Toleration("gpu", "Exists"),) if rng.random() < 0.2 else ()
        sets = [PodSet("main", pods, {"cpu": cpu * M, "memory": cpu * 4 * M, GPU: gpus * M}, sel, tol)]
        if rng.random() < 0.1:
            sets.append(PodSet("side", rng.randint(1, 2), {"cpu": rng.randint(1, 4) * M}))
        queue_names = [q.name for q in queues] + (["q-missing"] if rng.random() < 0.05 else [])
        jobs.append(Job(
            f"ns/j{j}", rng.choice(queue_names), rng.choice((0, 0, 1, 2, 3)), float(rng.randint(0, 50)),
            tuple(sets), checkpointable=rng.random() < 0.6, checkpoint_cost_s=float(rng.randint(0, 30)),
            restore_cost_s=5.0, runtime_estimate_s=rng.choice((None, 50.0, 300.0, 1000.0)),
            checkpoint_interval_s=rng.choice((None, 60.0)), checkpoint_interval_auto=rng.random() < 0.2,
            restore_node_labels={"zone": "a"} if rng.random() < 0.05 else {}))
    return tuple(nodes), tuple(queues), jobs


def _apply(jobs: dict[str, Job], d: Decisions, now: float) -> None:
    for a in d.actions:
        if isinstance(a, Admit | Resume):
            jobs[a.job] = replace(jobs[a.job], state=JobState.ADMITTED, placement=a.placement, started_at=now,
                                  admitted_at=now, backfilled=a.backfill)
        elif isinstance(a, Preempt):
            jobs[a.victim] = replace(jobs[a.victim], vacating=True, preempted_for=a.beneficiary)
        elif isinstance(a, Checkpoint):
            jobs[a.job] = replace(jobs[a.job], last_checkpoint_at=now, checkpoint=f"{a.job}-{now}")


def _settle(jobs: dict[str, Job], rng: random.Random, now: float) -> None:
    for key, j in list(jobs.items()):
        if j.state is not JobState.ADMITTED:
            continue
        if j.vacating:
            if rng.random() < 0.7:
                jobs[key] = replace(j, state=JobState.PENDING, placement=(), vacating=False, backfilled=False,
                                    preempted_for=None, started_at=None,
                                    checkpoint=f"{key}-{now}" if j.checkpointable else j.checkpoint,
                                    run_time_s=j.run_time_s + now - (j.started_at or now))
        elif rng.random() < 0.2:
            del jobs[key]
        elif rng.random() < 0.05:
            jobs[key] = replace(j, checkpointing=True)


def digest(seed: int) -> str:
    """The decisions of four cycles of scenario `seed` under every policy, hashed."""
    rng = random.Random(seed)
    nodes, queues, initial = scenario(rng, big=seed % 4 == 0)
    h = hashlib.sha256()
    for name in POLICIES:
        policy = load_policy(name)
        steps = random.Random(seed * 7 + 1)
        jobs = {j.key: j for j in initial}
        now = 100.0
        for step in range(4):
            # The same node and flavor tuples every cycle, as the simulator passes them.
            d = decide(Snapshot(nodes, FLAVORS, queues, tuple(jobs.values())), now, policy)
            h.update(repr((name, d.actions, sorted(d.waiting.items()), d.next_wakeup)).encode())
            _apply(jobs, d, now)
            now += steps.choice((0, 10, 60, 400))
            _settle(jobs, steps, now)
            for k in range(steps.randint(0, 3)):
                src = steps.choice(initial)
                key = f"{src.key}-s{step}-{k}"
                jobs[key] = replace(src, key=key, queue_order=now + k, state=JobState.PENDING, placement=())
    return h.hexdigest()[:16]


GOLDEN = {
    0: 'dc81ed40ac74805f',
    1: 'd3f9a360db35ef79',
    2: '3c9faa7f7879c67f',
    3: '05e4fd2e7696a3d3',
    4: 'f873ce034c1fd97a',
    5: 'af0241ea346402f4',
    6: 'c770026883e63c42',
    7: '7984776564cb1661',
    8: '3d96e6d2ce2a20b9',
    9: 'a8b86ae4d3737d36',
    10: '47ede1594c7c0573',
    11: 'e65d8a167f4dda52',
    12: '265bbcc449c02a45',
    13: '20147cc95de238a0',
    14: 'e74ffc9223a55fc9',
    15: 'e8be62dbf8773b99',
    16: '222d04a3f00143c6',
    17: '23ae0de2b6147a32',
    18: '097c7de93646a759',
    19: 'c0b529c4ef25a9f4',
    20: '93f2fb6bcb961951',
    21: 'd59a7d399154a471',
    22: 'e9ec07716340c85f',
    23: '80342e48ca3847ed',
    24: '51254e8390d5d0f9',
    25: '79ba7f2d49f70f6e',
    26: 'cf967213ce330a37',
    27: '94a92b3123c39f60',
    28: '015d4796e4d81dd6',
    29: '38dc871227f84858',
    30: '2397b861085b94ef',
    31: 'ed5e341415102ccc',
    32: '72f18e6c2772c137',
    33: 'de7e6a249c0a7d80',
    34: '972ed9af78c8d66d',
    35: '435968e03db8af5c',
    36: '85c525b7dded66cd',
    37: 'fc7dbf533df55b41',
    38: 'c252e37d5cb6afb7',
    39: '50362aa95d7dc376',
    40: '81edd55514d16f09',
    41: 'd9e11fd423e15e99',
    42: '64c70381b44a25e6',
    43: '454298d91165810d',
    44: '7562657281f4e60e',
    45: '3ff85a71b6ed1d62',
    46: '402bc4baf378b701',
    47: '4bc0216d95c84359',
}


@pytest.mark.parametrize("seed", sorted(GOLDEN))
def test_decisions_are_the_recorded_ones(seed: int) -> None:
    assert digest(seed) == GOLDEN[seed]


if __name__ == "__main__":
    for seed in range(48):
        print(f"    {seed}: {digest(seed)!r},")

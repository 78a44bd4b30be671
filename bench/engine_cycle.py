"""One engine decision cycle at scale: a full cycle, and a cycle after one change.

10,000 pending jobs, 1,000 running, 1,000 nodes x 8 GPUs, 20 ClusterQueues in 4 cohorts; 20 cycles per
policy and case. CPU time is the figure that counts (this machine is shared; wall time is printed beside
it). Prints a table and, as its last line, one JSON object with the first policy's figures and every
policy's under "by_policy".

Three cases per policy:
- full: an engine that carries nothing (an empty `Carry`), as after a restart: every part of the cycle
  is worked out from the snapshot;
- one change: the engine that decided the last cycle (its `Carry`: node index, running jobs'
  accounting, queue order, shapes; engine/carry.py), given the previous snapshot plus one new pending
  job, with the same node, flavor and queue tuples and the same Job objects (the simulator's case);
- one change, controller-like: the same, but the running jobs are new objects equal to the last
  cycle's, as the controller converts them afresh every cycle (its waiting jobs' records and its node,
  flavor and queue tuples are kept while unchanged: operator/snapshot.py).

    python bench/engine_cycle.py [--runs 20] [--policies iass,kueue,easy,fifo]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from queue_controller.engine import (
    GPU,
    Admit,
    Carry,
    Checkpoint,
    ClusterQueue,
    Flavor,
    FlavorQuotas,
    Job,
    JobState,
    Node,
    PodSet,
    PodSetPlacement,
    Preempt,
    Quota,
    ResourceGroup,
    Snapshot,
    decide,
)
from queue_controller.engine.decisions import Decisions
from queue_controller.engine.policy import Policy
from queue_controller.policies import load_policy

M = 1000  # milli-units
GIB = 2**30 * M


def build(seed: int = 7, nodes: int = 1000, running: int = 1000, pending: int = 10_000,
          queues: int = 20, cohorts: int = 4) -> Snapshot:
    rng = random.Random(seed)
    flavors = (Flavor("h100", {"ckq.io/flavor": "h100"}), Flavor("a100", {"ckq.io/flavor": "a100"}))
    node_list = []
    for i in range(nodes):
        fl = "h100" if i < nodes // 2 else "a100"
        node_list.append(Node(f"node-{i:04d}", {"cpu": 64 * M, "memory": 512 * GIB, GPU: 8 * M},
                              {"ckq.io/flavor": fl}))
    per_q = nodes * 8 // queues  # GPUs of nominal quota per queue, per flavor half
    cqs = []
    for q in range(queues):
        fqs = tuple(
            FlavorQuotas(fl, {"cpu": Quota(per_q * 8 * M // 2, None, None),
                              "memory": Quota(per_q * 64 * GIB // 2, None, None),
                              GPU: Quota(per_q * M // 2, per_q * M, None)})
            for fl in ("h100", "a100")
        )
        cqs.append(ClusterQueue(f"cq-{q:02d}", (ResourceGroup(("cpu", "memory", GPU), fqs),),
                                cohort=f"cohort-{q % cohorts}"))
    jobs: list[Job] = []
    # Running jobs fill the cluster: 1,000 jobs of 8 GPUs (one whole node each).
    for i in range(running):
        node = node_list[i % nodes]
        fl = node.labels["ckq.io/flavor"]
        q = i % queues
        jobs.append(Job(
            f"ns-{q}/run-{i}", f"cq-{q:02d}", rng.choice((0, 10, 100)), float(i),
            (PodSet("main", 1, {"cpu": 8 * M, "memory": 64 * GIB, GPU: 8 * M}),),
            state=JobState.ADMITTED, checkpointable=rng.random() < 0.8, checkpoint_cost_s=30.0,
            restore_cost_s=20.0, runtime_estimate_s=rng.choice((3600.0, 7200.0, 36000.0)),
            started_at=float(rng.randint(0, 3000)),
            placement=(PodSetPlacement("main", fl, (node.name,)),),
        ))
    shapes = [(1, 1), (1, 2), (1, 4), (1, 8), (2, 8), (4, 8), (8, 8)]
    for i in range(pending):
        pods, gpus = rng.choice(shapes)
        q = rng.randrange(queues)
        jobs.append(Job(
            f"ns-{q}/job-{i}", f"cq-{q:02d}", rng.choice((0, 0, 0, 10, 100)), 4000.0 + i,
            (PodSet("main", pods, {"cpu": gpus * M, "memory": gpus * 8 * GIB, GPU: gpus * M}),),
            checkpointable=rng.random() < 0.8, checkpoint_cost_s=30.0, restore_cost_s=20.0,
            runtime_estimate_s=rng.choice((600.0, 3600.0, 14400.0)),
        ))
    return Snapshot(tuple(node_list), flavors, tuple(cqs), tuple(jobs))


def _p99(sorted_ms: list[float]) -> float:
    return sorted_ms[min(len(sorted_ms) - 1, round(0.99 * (len(sorted_ms) - 1)))]


def _stats(cpu: list[float], wall: list[float]) -> dict[str, float]:
    cpu, wall = sorted(cpu), sorted(wall)
    return {"cpu_p50_ms": round(statistics.median(cpu), 2), "cpu_p99_ms": round(_p99(cpu), 2),
            "p50_ms": round(statistics.median(wall), 2), "p99_ms": round(_p99(wall), 2)}


def _timed(snap: Snapshot, now: float, policy: Policy, carry: Carry, cpu: list[float], wall: list[float]) -> Decisions:
    t, c = time.perf_counter(), time.process_time()
    d = decide(snap, now, policy, carry)
    wall.append((time.perf_counter() - t) * 1000)
    cpu.append((time.process_time() - c) * 1000)
    return d


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--policies", default="iass,kueue,easy,fifo")
    args = ap.parse_args()
    t0 = time.perf_counter()
    snap = build()
    build_s = time.perf_counter() - t0
    rows = []
    results: dict[str, dict[str, object]] = {}
    for name in args.policies.split(","):
        policy = load_policy(name)
        cpu: list[float] = []
        wall: list[float] = []
        d = None
        for _ in range(args.runs):
            # Fresh tuples (`tuple(list(...))`: `tuple()` of a tuple is the same object) and an empty
            # carry: nothing is taken over from an earlier cycle.
            fresh = replace(snap, nodes=tuple(list(snap.nodes)), flavors=tuple(list(snap.flavors)))
            d = _timed(fresh, 5000.0, policy, Carry(), cpu, wall)
        assert d is not None
        full = _stats(cpu, wall)
        counts = {"admit": len(d.of_type(Admit)), "preempt": len(d.of_type(Preempt)),
                  "checkpoint": len(d.of_type(Checkpoint))}
        waiting = len(d.waiting)
        # One change: the same tuples and Job objects, one more pending job than the cycle before.
        one: dict[str, dict[str, float]] = {}
        for case in ("sim", "controller"):
            carry = Carry()
            prev = snap
            decide(prev, 5000.0, policy, carry)
            cpu, wall = [], []
            for i in range(args.runs):
                extra = replace(snap.jobs[-1], key=f"ns-0/extra-{i}", queue_order=10_000_000.0 + i)
                jobs = (*prev.jobs, extra)
                if case == "controller":  # running jobs converted afresh: equal, not the same objects
                    jobs = tuple(replace(j) if j.state is JobState.ADMITTED else j for j in jobs)
                prev = replace(prev, jobs=jobs)
                _timed(prev, 5000.0 + i, policy, carry, cpu, wall)
            one[case] = _stats(cpu, wall)
        rows.append((name, full, one["sim"], one["controller"], counts, waiting))
        results[name] = {**full, "one_change": one["sim"], "one_change_controller": one["controller"]}
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"snapshot: 1000 nodes x 8 GPUs, 1000 running, 10000 pending, 20 queues / 4 cohorts "
          f"(built in {build_s * 1000:.0f} ms); {args.runs} cycles per policy and case; ms of CPU (wall)")
    print(f"{'policy':8} {'full p50':>14} {'full p99':>14} {'1-change p50':>14} {'1-change p99':>14} "
          f"{'ctrl-like p50':>14} {'ctrl-like p99':>14}  decisions / waiting")

    def cell(s: dict[str, float], q: str) -> str:
        return f"{s[f'cpu_{q}_ms']:6.1f} ({s[f'{q}_ms']:5.1f})"

    for name, full, sim, ctrl, counts, waiting in rows:
        print(f"{name:8} {cell(full, 'p50'):>14} {cell(full, 'p99'):>14} {cell(sim, 'p50'):>14} "
              f"{cell(sim, 'p99'):>14} {cell(ctrl, 'p50'):>14} {cell(ctrl, 'p99'):>14}  {counts} / {waiting}")
    print(f"peak RSS: {rss:.0f} MiB; load average while running: {os.getloadavg()[0]:.1f} "
          f"({os.cpu_count()} cores)")
    first = args.policies.split(",")[0]
    print(json.dumps({**results[first], "peak_rss_mib": round(rss, 1), "policy": first,
                      "by_policy": results}))


if __name__ == "__main__":
    main()

"""One engine decision cycle at scale.

10,000 pending jobs, 1,000 running, 1,000 nodes x 8 GPUs, 20 ClusterQueues in 4 cohorts; 20 cycles per
policy. Prints a table and, as its last line, one JSON object with the iass figures:
{"p50_ms": ..., "p99_ms": ..., "peak_rss_mib": ..., "by_policy": {...}}.

Two measurements per policy:
- a full cycle: every cycle gets a snapshot with fresh node and flavor tuples, as the controller builds
  one each cycle, so nothing is carried from one cycle to the next (the p50/p99 columns);
- a cycle after one change (`one change` columns): the previous snapshot plus one new pending job, with
  the same node and flavor tuples, as the simulator passes them. The engine keeps only its node index
  (pools, selector matches) between such cycles; everything else is worked out again.

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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--policies", default="iass,kueue,easy,fifo")
    args = ap.parse_args()
    t0 = time.perf_counter()
    snap = build()
    build_s = time.perf_counter() - t0
    rows = []
    results = {}
    for name in args.policies.split(","):
        policy = load_policy(name)
        times = []
        cpu = []
        d = None
        for _ in range(args.runs):
            # Fresh tuples (`tuple(list(...))`: `tuple()` of a tuple is the same object), made untimed.
            fresh = replace(snap, nodes=tuple(list(snap.nodes)), flavors=tuple(list(snap.flavors)))
            t, c = time.perf_counter(), time.process_time()
            d = decide(fresh, 5000.0, policy)
            times.append((time.perf_counter() - t) * 1000)
            cpu.append((time.process_time() - c) * 1000)
        times.sort()
        cpu_p50 = statistics.median(cpu)
        p50 = statistics.median(times)
        p99 = _p99(times)
        assert d is not None
        counts = {"admit": len(d.of_type(Admit)), "preempt": len(d.of_type(Preempt)),
                  "checkpoint": len(d.of_type(Checkpoint))}
        # One change: the same nodes and flavors, one more pending job than the cycle before.
        changed = []
        prev = replace(snap, nodes=tuple(list(snap.nodes)), flavors=tuple(list(snap.flavors)))
        decide(prev, 5000.0, policy)
        for i in range(args.runs):
            extra = replace(snap.jobs[-1], key=f"ns-0/extra-{i}", queue_order=10_000_000.0 + i)
            prev = replace(prev, jobs=(*prev.jobs, extra))
            t = time.perf_counter()
            decide(prev, 5000.0 + i, policy)
            changed.append((time.perf_counter() - t) * 1000)
        changed.sort()
        rows.append((name, p50, p99, times[-1], cpu_p50, statistics.median(changed), _p99(changed), counts,
                     len(d.waiting)))
        results[name] = {"p50_ms": round(p50, 2), "p99_ms": round(p99, 2), "cpu_p50_ms": round(cpu_p50, 2),
                         "one_change_p50_ms": round(statistics.median(changed), 2),
                         "one_change_p99_ms": round(_p99(changed), 2)}
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"snapshot: 1000 nodes x 8 GPUs, 1000 running, 10000 pending, 20 queues / 4 cohorts "
          f"(built in {build_s * 1000:.0f} ms); {args.runs} cycles per policy")
    # CPU time is printed beside wall time: on a shared 2-core machine it is the steadier figure.
    print(f"{'policy':8} {'p50 ms':>9} {'p99 ms':>9} {'max ms':>9} {'cpu p50':>9} {'1-change p50':>13} "
          f"{'p99':>7}  decisions / waiting")
    for name, p50, p99, mx, cpu_p50, c50, c99, counts, waiting in rows:
        print(f"{name:8} {p50:9.1f} {p99:9.1f} {mx:9.1f} {cpu_p50:9.1f} {c50:13.1f} {c99:7.1f}  "
              f"{counts} / {waiting}")
    print(f"peak RSS: {rss:.0f} MiB; load average while running: {os.getloadavg()[0]:.1f} (2 cores)")
    first = args.policies.split(",")[0]
    print(json.dumps({**results[first], "peak_rss_mib": round(rss, 1), "policy": first,
                      "by_policy": results}))


if __name__ == "__main__":
    main()

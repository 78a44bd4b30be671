"""Simulator scale: a 100,000-job synthetic trace on 1,000 nodes x 8 GPUs, through the real engine.

Goal (issue 6): <= 60 s on the 2-core development machine. Prints a human table, then one JSON object
(last line) with jobs/s, wall time, decide() share and peak RSS.

The trace is the generator's mix with run times scaled down (a high-throughput day: batch median 5 min,
training median 15 min, interactive 5 min) so that 100k jobs arrive within about a simulated day at the
target load; the job count, gang sizes and cluster size are what stress the simulator and the engine.
Decision cycles run at most once per `--sched-interval` simulated seconds (default 60 s, Slurm's
sched_interval default); see docs/simulator.md.

    .venv/bin/python bench/sim_scale.py [--jobs 100000] [--nodes 1000] [--policy iass] [--sched-interval 60]
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import resource
import sys
import time
from pathlib import Path

from queue_controller.engine import Decisions, Policy, Snapshot
from queue_controller.policies import load_policy
from queue_controller.sim.cluster import ClusterSpec
from queue_controller.sim.generate import Mix, generate
from queue_controller.sim.metrics import compute
from queue_controller.sim.simulator import SimConfig, Simulator

RECORD = Path(__file__).resolve().parent.parent / "docs" / "evaluation" / "sim_scale.json"

SCALE_MIX = Mix(
    batch_median_s=300.0, batch_clip_s=(30.0, 3600.0),
    training_median_s=900.0, training_clip_s=(300.0, 4 * 3600.0),
    interactive_median_s=300.0, interactive_clip_s=(60.0, 1800.0),
)


def _watch_slowest(sim: Simulator) -> list[float]:
    """Wrap the simulator's engine call to remember the slowest cycle: [ms, admitted jobs, pending jobs]."""
    from queue_controller.engine import JobState

    real = sim.decide_fn
    worst = [0.0, 0.0, 0.0]

    def timed(snap: Snapshot, now: float, policy: Policy) -> Decisions:
        t0 = time.perf_counter()
        out = real(snap, now, policy)
        ms = 1000 * (time.perf_counter() - t0)
        if ms > worst[0]:
            admitted = sum(1 for j in snap.jobs if j.state is JobState.ADMITTED)
            worst[:] = [ms, admitted, len(snap.jobs) - admitted]
        return out

    sim.decide_fn = timed
    return worst


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=100_000)
    ap.add_argument("--nodes", type=int, default=1000)
    ap.add_argument("--gpus-per-node", type=int, default=8)
    ap.add_argument("--load", type=float, default=0.9)
    ap.add_argument("--policy", default="iass")
    ap.add_argument("--sched-interval", type=float, default=60.0)
    ap.add_argument("--queue-depth", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--goal-s", type=float, default=60.0)
    ap.add_argument("--profile", action="store_true",
                    help="cProfile the run; print the top functions and the slowest decision cycle")
    ap.add_argument("--record", action="store_true",
                    help="also write docs/evaluation/sim_scale.json (bench/policies.py quotes it)")
    args = ap.parse_args(argv)
    if args.jobs < 1 or args.nodes < 1:
        ap.error("--jobs and --nodes must be >= 1")

    t0 = time.perf_counter()
    trace = generate(args.jobs, seed=args.seed, cluster_gpus=args.nodes * args.gpus_per_node, load=args.load,
                     mix=SCALE_MIX)
    gen_s = time.perf_counter() - t0
    cluster = ClusterSpec.uniform(args.nodes, args.gpus_per_node)
    cfg = SimConfig(sched_interval_s=args.sched_interval, queue_depth=args.queue_depth, record_segments=False)
    sim = Simulator(trace, load_policy(args.policy), cluster, config=cfg)
    slowest = _watch_slowest(sim) if args.profile else None
    prof = cProfile.Profile() if args.profile else None
    t1 = time.perf_counter()
    if prof is not None:
        prof.enable()
    res = sim.run()
    if prof is not None:
        prof.disable()
    sim_s = time.perf_counter() - t1
    if prof is not None and slowest is not None:
        print("profile (top 15 by own time):")
        pstats.Stats(prof).sort_stats("tottime").print_stats(15)
        ms, admitted, pending = slowest
        print(f"slowest decision cycle: {ms:.0f} ms with {admitted} admitted and {pending} pending jobs")
    m = compute(res)
    rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0

    figures = {
        "bench": "sim_scale",
        "jobs": args.jobs,
        "nodes": args.nodes,
        "gpus": cluster.total_gpus,
        "policy": args.policy,
        "sched_interval_s": args.sched_interval,
        "queue_depth": args.queue_depth,
        "generate_s": round(gen_s, 2),
        "simulate_s": round(sim_s, 2),
        "jobs_per_s": round(args.jobs / sim_s, 1),
        "decide_calls": res.decide_calls,
        "decide_s": round(res.decide_seconds, 2),
        "decide_ms_mean": round(1000 * res.decide_seconds / max(res.decide_calls, 1), 2),
        "simulator_overhead_s": round(sim_s - res.decide_seconds, 2),
        "peak_rss_mib": round(rss_mib, 1),
        "simulated_hours": round(m["makespan_s"] / 3600.0, 2),
        "jobs_completed": m["jobs_completed"],
        "gpu_utilization": m["gpu_utilization"],
        "goal_s": args.goal_s,
        "meets_goal": sim_s <= args.goal_s,
    }
    width = max(len(k) for k in figures)
    print(f"simulator scale: {args.jobs} jobs, {args.nodes} nodes x {args.gpus_per_node} GPUs, policy {args.policy}")
    print("-" * (width + 20))
    for k, v in figures.items():
        print(f"{k:<{width}}  {v}")
    if args.record:
        RECORD.parent.mkdir(parents=True, exist_ok=True)
        RECORD.write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Policy evaluation: fifo, kueue, easy and iass on the sample trace at moderate and high load.

Load is set by the cluster size: offered load = GPU-seconds of work / (cluster GPUs x arrival span), and
the node count is chosen to hit each target. Writes docs/evaluation.md (tables, goal checks and plots
under docs/evaluation/) and prints a table; the last line is one JSON object with every figure.

    .venv/bin/python bench/policies.py [--trace FILE] [--loads 0.7,1.0] [--out /tmp/ckq-eval] [--no-docs]

With `--full-load`, issue 15's evaluation instead: two seeds of traces of the issue's shape
(`FULL_LOAD_MIX`) at one offered load on 64 nodes, the four policies side by side, where the GPU time went
(the simulator's idle breakdown), and the issue's goals; it rewrites only its own section of
docs/evaluation.md (between the full-load markers) and docs/evaluation/full-load-gpu-time.png.

    .venv/bin/python bench/policies.py --full-load [--jobs 10000] [--seeds 1,2] [--load 0.93] [--workers 8]

To iterate on a rule, one policy on a smaller trace: `--full-load --no-docs --policies iass --jobs 3000
--seeds 1`. `--node-mtbf-days D` models node failures (each node fails after an exponential time of mean
D days and is repaired in an hour); the engine then sizes periodic checkpoints by that rate. The default,
and the figures in docs/evaluation.md, model none.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from queue_controller.sim import SAMPLE_TRACE
from queue_controller.sim.cluster import CheckpointModel, ClusterSpec
from queue_controller.sim.generate import Mix, generate
from queue_controller.sim.runner import run_compare, run_policy
from queue_controller.sim.simulator import SimConfig
from queue_controller.sim.trace import TraceJob, load_any

POLICIES = ("fifo", "kueue", "easy", "iass")
ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "evaluation.md"
DOC_PLOTS = ROOT / "docs" / "evaluation"
HIGH = 1000  # priority of the interactive (urgent) class in the sample trace
FAST_GIB_S = 10.0  # sensitivity run: iass with checkpoint storage five times faster
SCALE_JSON = DOC_PLOTS / "sim_scale.json"  # written by bench/sim_scale.py --record


def offered_load(trace: list[TraceJob], gpus: int) -> float:
    span = max(j.submit_s for j in trace) - min(j.submit_s for j in trace)
    return sum(j.gpus * j.runtime_s for j in trace) / (gpus * max(span, 1.0))


def nodes_for(trace: list[TraceJob], target: float, gpus_per_node: int) -> int:
    span = max(j.submit_s for j in trace) - min(j.submit_s for j in trace)
    work = sum(j.gpus * j.runtime_s for j in trace)
    need = max(j.gpus for j in trace) // gpus_per_node + 1  # every gang must fit somewhere
    return max(need, round(work / (span * gpus_per_node * target)))


def _row(m: dict[str, Any]) -> list[str]:
    p95 = m["p95_wait_s_by_priority"]
    return [
        m["policy"], f"{m['gpu_utilization']:.1%}", f"{m['gpu_utilization_steady']:.1%}",
        f"{m['utilization']:.1%}", f"{m['mean_wait_s']:.0f}", f"{p95.get(str(HIGH), 0.0):.0f}",
        f"{p95.get('100', 0.0):.0f}", f"{p95.get('0', 0.0):.0f}", f"{m['mean_bounded_slowdown']:.1f}",
        f"{m['wasted_gpu_hours']:.1f}", f"{m['wasted_fraction']:.2%}", f"{m['checkpoint_overhead_gpu_hours']:.1f}",
        f"{m['preemptions_checkpoint']}/{m['preemptions_kill']}", str(m["backfilled_runs"]),
        f"{m['makespan_s'] / 3600:.1f}",
    ]


HEAD = ["policy", "GPU util", "GPU util (arrival window)", "goodput", "mean wait s", f"p95 wait s prio {HIGH}",
        "p95 wait s prio 100", "p95 wait s prio 0", "mean BSLD", "wasted GPU-h", "wasted %",
        "ckpt overhead GPU-h", "preempt ckpt/kill", "backfilled runs", "makespan h"]


def goals(ms: dict[str, dict[str, Any]], high: bool) -> list[tuple[str, bool, str]]:
    """The issue's goals for iass. The utilisation goal is about high load only: at moderate load the
    offered load itself caps utilisation."""
    i, k, e = ms["iass"], ms["kueue"], ms["easy"]
    hp = str(HIGH)
    out = []
    if high:
        out.append(("iass GPU utilisation >= 90%", i["gpu_utilization"] >= 0.9,
                    f"{i['gpu_utilization']:.1%} (arrival window {i['gpu_utilization_steady']:.1%})"))
    out += [
        ("iass wasted GPU-hours <= 1%", i["wasted_fraction"] <= 0.01, f"{i['wasted_fraction']:.2%}"),
        (f"iass p95 wait of priority {HIGH} no worse than kueue's",
         i["p95_wait_s_by_priority"].get(hp, 0.0) <= k["p95_wait_s_by_priority"].get(hp, 0.0),
         f"{i['p95_wait_s_by_priority'].get(hp, 0.0):.0f} s vs {k['p95_wait_s_by_priority'].get(hp, 0.0):.0f} s"),
        ("iass GPU utilisation better than easy and kueue",
         i["gpu_utilization"] > max(e["gpu_utilization"], k["gpu_utilization"]),
         f"{i['gpu_utilization']:.1%} vs easy {e['gpu_utilization']:.1%}, kueue {k['gpu_utilization']:.1%}"),
        ("iass goodput better than easy and kueue",
         i["utilization"] > max(e["utilization"], k["utilization"]),
         f"{i['utilization']:.1%} vs easy {e['utilization']:.1%}, kueue {k['utilization']:.1%}"),
    ]
    return out


AUDIT = ("preemption_rounds", "repeated_preemption_rounds", "preemptions_undone", "max_preemptions_of_one_job")


def audit(block: dict[str, Any]) -> str:
    """One line per scenario: does any preemption get planned twice or undone (a preemption loop)?"""
    cells = [f"{p} {'/'.join(str(block['metrics'][p][k]) for k in AUDIT)}" for p in POLICIES if p != "fifo"]
    return ("Preemption check (rounds / repeated rounds / undone preemptions / most preemptions of one job): "
            + ", ".join(cells) + ".")


def _md_table(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(HEAD) + " |", "|" + "---|" * len(HEAD)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _rows(block: dict[str, Any]) -> list[list[str]]:
    rows = [_row(block["metrics"][p]) for p in POLICIES]
    if "iass-fast" in block:
        rows.append(_row(block["iass-fast"]))
        rows[-1][0] = f"iass, {FAST_GIB_S:g} GiB/s ckpt"
    return rows


def write_doc(results: dict[str, dict[str, Any]], cfg: SimConfig, out: Path) -> None:
    DOC_PLOTS.mkdir(parents=True, exist_ok=True)
    for old in DOC_PLOTS.glob("*.png"):
        old.unlink()
    parts = [DOC_INTRO.format(interval=cfg.sched_interval_s, depth=cfg.queue_depth)]
    for key, block in results.items():
        parts.append(f"## {block['title']}\n")
        parts.append(f"{block['nodes']} nodes x 8 GPUs, offered load {block['offered']:.2f}.\n")
        parts.append(_md_table(_rows(block)) + "\n")
        parts.append(audit(block) + "\n")
        parts.append("Goals for iass:\n")
        for name, ok, detail in goals(block["metrics"], block["high"]):
            parts.append(f"- {'met' if ok else '**not met**'}: {name} - {detail}")
        parts.append("")
        src = out / key
        shutil.copy(src / "comparison.png", DOC_PLOTS / f"{key}-comparison.png")
        parts.append(f"![{block['title']}: utilisation over time and headline metrics]"
                     f"(evaluation/{key}-comparison.png)\n")
        for p in ("kueue", "iass"):
            for plot in ("wait_cdf", "timeline"):
                shutil.copy(src / p / f"{plot}.png", DOC_PLOTS / f"{key}-{p}-{plot}.png")
        parts.append(f"Wait-time CDFs: [kueue](evaluation/{key}-kueue-wait_cdf.png), "
                     f"[iass](evaluation/{key}-iass-wait_cdf.png). Node timelines: "
                     f"[kueue](evaluation/{key}-kueue-timeline.png), [iass](evaluation/{key}-iass-timeline.png).\n")
    parts.append(DOC_DISCUSSION)
    if SCALE_JSON.exists():
        sc = json.loads(SCALE_JSON.read_text())
        parts.append(SCALE_SECTION.format(**sc))
    old_text = DOC.read_text() if DOC.exists() else ""
    if FULL_LOAD_BEGIN in old_text:  # `--full-load`'s section, and the notes after it, stay
        parts.append(FULL_LOAD_BEGIN + old_text.split(FULL_LOAD_BEGIN, 1)[1].rstrip("\n"))
    DOC.write_text("\n".join(parts) + "\n")


DOC_INTRO = """# Policy evaluation

Generated by `bench/policies.py` (re-run it to refresh every number and plot here). The simulator
(`docs/simulator.md`) replays the trace through the real engine (`engine.decide`) under each policy
profile in `policies/`.

- Traces: the synthetic mix of `queue_controller/sim/generate.py` (70% short batch jobs at priority 0,
  10% multi-pod training gangs of 16-64 GPUs at priority 100, 20% bursty interactive jobs at priority
  1000, which are not checkpointable). By GPU-seconds the training gangs are over 90% of the work. Two
  traces: the shipped sample, sized for a ~16-node cluster, and a larger one sized for ~64 nodes.
- Cluster: nodes of 8 GPUs, 64 CPUs, 512 GiB; one ClusterQueue whose nominal quota is the cluster's
  capacity (the simulator's default layout, as an admin would set it).
- Load is set by the node count. Offered load = GPU-seconds of work / (cluster GPUs x arrival span);
  *moderate* is about 0.7, *high* about 1.2 (the backlog does not clear while jobs arrive, so
  utilisation measures how well a policy packs, not how much work there is).
- Simulator settings: decision cycle at most every {interval:g} s, queue depth {depth}, kill grace 30 s,
  checkpoint 5 s + size / (2 GiB/s per pod), restore 10 s + size / (2 GiB/s per pod), no node failures.
- Metrics (definitions in `docs/simulator.md`): *GPU util* = GPU-seconds allocated / (GPUs x makespan);
  *arrival window* = the same between first and last arrival (no drain tail); *goodput* = useful
  GPU-seconds (completed jobs' run time) / (GPUs x makespan); *wasted* = progress lost to kills plus kill
  grace; *ckpt overhead* = time spent checkpointing and restoring. The *preemption check* under each
  table counts decision cycles in which a job had victims preempted for it (*rounds*), rounds for a job
  still waiting on an earlier round (*repeated*: the engine planning room twice for one start), and
  preemptions whose victim ran again on its old node before the beneficiary started (*undone*: room
  made for nothing). A preemption loop shows in the last two.
"""

DOC_DISCUSSION = """## Discussion

The goal lines under each table are computed from the numbers and are the authority; this section
explains the mechanisms behind them, as observed with the engine of this run. Figures quoted from an
earlier run are from the run before the engine fixes described under "Engine findings".

- **Wasted work: met.** kueue and easy preempt by kill, so each preemption of a running batch or
  training job throws away its progress since start: 6.0% (kueue) and 2.2% (easy) of the allocated
  GPU-hours on the sample trace at high load, about 1.9% on the larger one. iass checkpoints
  checkpointable victims instead; what it still wastes (at most 0.03%) comes from killing
  non-checkpointable victims (interactive jobs, when a higher-priority job needs their GPUs). With every
  job checkpointable iass wastes nothing (a unit test checks this). Its price is checkpoint overhead,
  time spent dumping and restoring, shown separately; at high load it is smaller than the work kueue
  and easy throw away (159 vs 299-849 GPU-hours on the sample trace, 699 vs about 1,070 on the larger).
- **Urgent jobs: not met** (except on the larger trace at moderate load). Priority-1000 jobs preempt
  under kueue, easy and iass. Under iass the victim is dumped before its GPUs free up: 50-200 s at
  2 GiB/s per pod for the checkpoint sizes of this mix (24 GiB per GPU plus half the host memory),
  against kueue's 30 s kill grace, hence a p95 of 155-194 s against 32-38 s at high load. With storage
  five times faster (the "10 GiB/s ckpt" rows) the p95 drops to 43-49 s, still 5-17 s behind kueue.
  Closing the gap needs the engine to pick, for an urgent beneficiary, the victims that free up fastest
  (small checkpoints, or kill a victim whose progress since its last checkpoint is shorter than its
  dump + restore), or to keep a little headroom for the urgent class. fifo has no preemption, so urgent
  jobs wait behind the head of the queue.
- **Utilisation >= 90% at high load: met on the larger trace, not on the sample.** On the larger trace
  iass reaches 92.8%, the highest of the four, with the best goodput and the least waste. On the
  13-node sample cluster no policy reaches 90% (iass 85.6%, best of the four), because of gang
  fragmentation: training gangs of up to 8 whole nodes are over 90% of the work, and the engine idles
  many GPUs while it gathers empty nodes for the next gang. That is a property of a small cluster with
  large gangs more than of a policy. The drain after the last arrival lowers every makespan-based
  figure; the arrival-window column leaves it out.
- **Better than easy and kueue: met at high load; at moderate load only for allocated GPU time.** At
  moderate load (offered load 0.7) every policy completes the same work and utilisation is capped by
  the offered load: the policies are within 0.5 points, and iass's slightly lower goodput on the larger
  trace is only its longer makespan (126.1 h vs 125.8 h: checkpoint and restore time stretch the
  tail), since the useful work is identical. Allocated GPU time alone does not rank policies well
  (kueue's and easy's include work they later throw away); compare goodput.
- **Waits by priority.** On the larger trace at high load easy has by far the lowest mean wait
  (17,652 s) and priority-0 p95 (64,628 s); iass (44,249 s; 190,873 s) and kueue (51,099 s; 168,884 s)
  make low-priority jobs wait much longer, while iass gives the best priority-100 (training) p95. We
  have not isolated why iass treats priority-0 jobs so much worse than easy here; it is a cost of
  iass that the goals above do not measure.
- **easy vs kueue.** The engine tries preemption before a reservation, so a blocked training job that
  can preempt batch jobs does that rather than reserve; easy's reservations (and backfill) matter only
  for jobs with nothing to preempt. The textbook single-priority example in the unit tests shows the
  policies' difference in isolation. With the engine fixes (in particular no more preempting for jobs
  the backfill check then refuses) easy kills far less: on the larger trace at high load 1,136 kills
  instead of 4,738 in the earlier run, and a mean wait of 17,652 s instead of 68,030 s.

## Engine findings

The simulator found four engine problems, all fixed in the engine now, and runs without any
work-around for them (details in `docs/simulator.md`): a preemption loop (a preemptor did not keep the
room it made, so later jobs took it and it preempted again; ~17,000 preemptions for the 800-job sample
under iass), preemptions for jobs the backfill check then refused, no reservations for jobs blocked on
a quota equal to capacity, and `Snapshot.node_mtbf_s` ignored for Young's interval. The preemption
check lines above show the loop is gone: no repeated rounds or undone preemptions on the sample trace
or on the larger trace at moderate load (with the engine before the fixes, on the sample trace at 16
nodes, 594 of 679 preemption rounds under kueue were repeats).

Still open, reported to the lead with reproducers; they are the likely causes of the 12-17 repeated
rounds (about 2-3% of all rounds) and the few undone preemptions on the larger trace at high load:

1. *Vacating victims are re-shared every cycle.* Victims already being vacated are offered to the
   waiting preemptors in queue order, at cost 0 with ties broken by victim name, not kept for the job
   they were preempted for; an earlier preemptor can take a later one's victim, and the later one
   preempts a new victim it does not need. Under kueue on the larger trace at high load, 12 of the 13
   repeated rounds come one cycle after the first round with nothing admitted onto the first victims'
   nodes in between, and the one traced in detail is exactly this; the 13th is a training job whose
   room was taken by a priority-1000 job that arrived meanwhile (priority order, not a fault).
2. *A preemption in the cycle costs a large job its reservation.* The room held for a preemptor is
   counted in the backfill profile as taken for ever, so in a cycle with a preemption a job that needs
   (nearly) the whole pool gets no reservation, and a later job gets it (and may preempt) instead
   (easy and iass only).
3. *Cycle cost*: see "Cycle cost" in `docs/simulator.md` and the scale figures below.
"""


SCALE_SECTION = """## Simulator scale

`bench/sim_scale.py` (last recorded run): {jobs} jobs on {nodes} nodes ({gpus} GPUs), policy {policy},
scheduling interval {sched_interval_s:g} s, queue depth {queue_depth}: **{simulate_s} s** to simulate
({jobs_per_s} jobs/s; goal <= {goal_s:g} s: {meets_goal}), peak RSS {peak_rss_mib} MiB, {simulated_hours} simulated
hours. {decide_calls} decision cycles took {decide_s} s ({decide_ms_mean} ms each); the simulator itself
{simulator_overhead_s} s. The engine's cycle cost is what misses the goal: see "Cycle cost" in
`docs/simulator.md`.
"""


def traces(large_jobs: int) -> dict[str, tuple[str, list[TraceJob]]]:
    """The shipped sample (a 16-node-sized workload) and a larger seeded one (a 64-node-sized workload,
    same mix): gangs of up to 8 nodes fragment a small cluster far more than a large one."""
    return {
        "sample": ("sample trace (`queue_controller/sim/data/sample.jsonl`, 800 jobs)", load_any(SAMPLE_TRACE)),
        "large": (f"larger trace (`generate({large_jobs}, seed=2026, cluster_gpus=512, load=1.0)`)",
                  generate(large_jobs, seed=2026, cluster_gpus=512, load=1.0)),
    }


# ---- full load (issue 15's shape) ---------------------------------------------------------------

# The shape of issue 15's held-out trace, built with the generator: ~87% of GPU-hours are checkpointable
# training gangs of 16-64 GPUs at priority 100, ~9% are not checkpointable (interactive jobs at priority
# 1000, 60% of the batch jobs at priority 0); run times from minutes to days; estimates 1.5-3x too long;
# bursty interactive arrivals; checkpoint images of ~17-140 GiB per pod.
FULL_LOAD_MIX = Mix(
    batch_fraction=0.62, training_fraction=0.08, batch_checkpointable=0.4,
    batch_gpus=((1, 0.4), (2, 0.3), (4, 0.2), (8, 0.1)), batch_median_s=1500.0, batch_sigma=1.2,
    batch_clip_s=(120.0, 24 * 3600.0),
    interactive_median_s=2400.0, interactive_clip_s=(300.0, 4 * 3600.0),
    training_median_s=3 * 3600.0, training_sigma=1.1, training_clip_s=(600.0, 96 * 3600.0),
    overestimate=(1.5, 3.0), checkpoint_gib_per_gpu=15.0, checkpoint_host_fraction=0.05)
FULL_LOAD_BEGIN = "<!-- full-load: generated by bench/policies.py --full-load -->"
FULL_LOAD_END = "<!-- /full-load -->"


def full_load_goals(ms: dict[str, dict[str, Any]]) -> list[tuple[str, bool, str]]:
    """Issue 15's goals for iass."""
    i, k = ms["iass"], ms["kueue"]
    hp = str(HIGH)
    best = max(ms[p]["gpu_utilization"] for p in POLICIES if p != "iass")
    ip, kp = i["p95_wait_s_by_priority"].get(hp, 0.0), k["p95_wait_s_by_priority"].get(hp, 0.0)
    return [
        ("GPU utilisation >= 85%", i["gpu_utilization"] >= 0.85, f"{i['gpu_utilization']:.1%}"),
        ("GPU utilisation above every baseline", i["gpu_utilization"] > best,
         f"{i['gpu_utilization']:.1%} vs best baseline {best:.1%}"),
        ("useful utilisation >= 84%", i["utilization"] >= 0.84, f"{i['utilization']:.1%}"),
        ("wasted <= 1%", i["wasted_fraction"] <= 0.01, f"{i['wasted_fraction']:.2%}"),
        (f"p95 wait of priority {HIGH} <= kueue's + 30 s", ip <= kp + 30.0, f"{ip:.0f} s vs kueue {kp:.0f} s"),
    ]


def _full_load_run(args: tuple[int, int, str, int, float, float, float | None]) -> tuple[int, str, dict[str, Any]]:
    seed, jobs, policy, nodes, load, interval, mtbf_days = args
    trace = generate(jobs, seed=seed, cluster_gpus=nodes * 8, load=load, mix=FULL_LOAD_MIX)
    cfg = SimConfig(sched_interval_s=interval, record_segments=False,
                    node_mtbf_s=None if mtbf_days is None else mtbf_days * 86400.0, seed=seed)
    run = run_policy(trace, policy, ClusterSpec.uniform(nodes), None, cfg, None, plots=False)
    return seed, policy, run.metrics


GT_HEAD = ["policy", "working", "ckpt periodic", "ckpt preempt", "restore", "kill grace", "idle: placement",
           "idle: quota", "idle: reservation", "idle: victims leaving", "idle: gang > free", "idle: nothing waits",
           "idle: other", "idle: between cycles"]


def _gt_row(policy: str, gt: dict[str, float]) -> list[str]:
    keys = ["working", "checkpoint_periodic", "checkpoint_preempt", "restore", "kill_grace", "idle_placement",
            "idle_quota", "idle_reservation", "idle_victims", "idle_gang_too_big", "idle_no_job", "idle_other",
            "idle_between_cycles"]
    return [policy, *(f"{gt.get(k, 0.0):.1%}" for k in keys)]


def full_load(args: argparse.Namespace) -> int:
    """Issue 15's evaluation: two seeds of FULL_LOAD_MIX at `--load` on `--nodes` nodes, the four
    policies, runs in parallel (`--workers`); a section of docs/evaluation.md and a plot."""
    from concurrent.futures import ProcessPoolExecutor, as_completed

    from queue_controller.sim.plots import gpu_time_plot

    seeds = [int(x) for x in args.seeds.split(",")]
    chosen = [p for p in args.policies.split(",") if p] if args.policies else list(POLICIES)
    unknown = sorted(set(chosen) - set(POLICIES))
    if unknown:
        print(f"--policies: unknown policy {', '.join(unknown)} (known: {', '.join(POLICIES)})", file=sys.stderr)
        return 2
    if set(chosen) != set(POLICIES) and not args.no_docs:
        # The section compares iass with every baseline: a subset is for iterating, never for the docs.
        print("--policies: a subset of the policies needs --no-docs", file=sys.stderr)
        return 2
    work = [(s, args.jobs, p, args.nodes, args.load, args.sched_interval, args.node_mtbf_days)
            for s in seeds for p in chosen]
    t0 = time.perf_counter()
    out = args.out / "full-load"
    out.mkdir(parents=True, exist_ok=True)
    metrics: dict[int, dict[str, dict[str, Any]]] = {}
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        for fut in as_completed([pool.submit(_full_load_run, w) for w in work]):
            seed, policy, m = fut.result()
            metrics.setdefault(seed, {})[policy] = m
            # Each run's metrics as soon as it ends: a long run cut short still leaves the others.
            (out / f"seed{seed}-{policy}.json").write_text(json.dumps(m, indent=1) + "\n")
            print(f"  seed {seed} {policy}: {m['gpu_utilization']:.1%} GPU util, {m['wall_seconds']:.0f} s", flush=True)
    cmd = (f"bench/policies.py --full-load --jobs {args.jobs} --seeds {args.seeds} --nodes {args.nodes} "
           f"--load {args.load} --sched-interval {args.sched_interval:g}")
    parts = [FULL_LOAD_BEGIN, "## Full load: issue 15's shape (simulated)\n",
             f"Command: `{cmd}` ({time.perf_counter() - t0:.0f} s wall with {args.workers} workers). Traces: "
             f"`generate({args.jobs}, seed, cluster_gpus={args.nodes * 8}, load={args.load}, mix=FULL_LOAD_MIX)` "
             "(bench/policies.py: ~87% of GPU-hours checkpointable training gangs of 16-64 GPUs at priority "
             "100, ~9% not checkpointable, estimates 1.5-3x too long, bursty interactive jobs at priority "
             f"1000, checkpoints of ~17-140 GiB per pod); {args.nodes} nodes x 8 GPUs. Every figure is from "
             "the simulator, not a cluster.\n"]
    summary: dict[str, Any] = {"bench": "policies-full-load", "command": cmd}
    if set(chosen) != set(POLICIES):  # iterating on a subset: the per-run figures above, and the JSON
        print(json.dumps({f"seed{s}.{p}": {k: m[k] for k in (
            "gpu_utilization", "utilization", "wasted_fraction", "p95_wait_s_by_priority", "mean_wait_s",
            "preemptions_checkpoint", "preemptions_kill", "checkpoint_overhead_gpu_hours")}
            for s, ps in metrics.items() for p, m in ps.items()}))
        return 0
    for seed in seeds:
        ms = metrics[seed]
        trace = generate(args.jobs, seed=seed, cluster_gpus=args.nodes * 8, load=args.load, mix=FULL_LOAD_MIX)
        offered = offered_load(trace, args.nodes * 8)
        parts.append(f"### Seed {seed} ({args.jobs} jobs, offered load {offered:.2f})\n")
        parts.append(_md_table([_row(ms[p]) for p in POLICIES]) + "\n")
        parts.append("Where the GPU time went (fractions of GPUs x makespan; idle reasons from the engine's "
                     "waiting reasons each cycle, see `docs/simulator.md`):\n")
        lines = ["| " + " | ".join(GT_HEAD) + " |", "|" + "---|" * len(GT_HEAD)]
        lines += ["| " + " | ".join(_gt_row(p, ms[p]["gpu_time"])) + " |" for p in POLICIES]
        parts.append("\n".join(lines) + "\n")
        parts.append("Goals for iass:\n")
        for name, ok, detail in full_load_goals(ms):
            parts.append(f"- {'met' if ok else '**not met**'}: {name} - {detail}")
            print(f"  seed {seed} [{'met' if ok else 'NOT met'}] {name}: {detail}")
        parts.append("")
        for p in POLICIES:
            summary[f"seed{seed}.{p}"] = {k: ms[p][k] for k in (
                "gpu_utilization", "gpu_utilization_steady", "utilization", "wasted_fraction",
                "p95_wait_s_by_priority", "mean_wait_s", "preemptions_checkpoint", "preemptions_kill",
                "makespan_s", "gpu_time")}
    plot = DOC_PLOTS / "full-load-gpu-time.png"
    if not args.no_docs:
        DOC_PLOTS.mkdir(parents=True, exist_ok=True)
        gpu_time_plot({f"seed {s}": {p: metrics[s][p]["gpu_time"] for p in POLICIES} for s in seeds}, plot)
        parts.append("![Where the GPU time went, per policy and seed](evaluation/full-load-gpu-time.png)\n")
        parts.append(FULL_LOAD_END)
        section = "\n".join(parts)
        text = DOC.read_text() if DOC.exists() else ""
        if FULL_LOAD_BEGIN in text and FULL_LOAD_END in text:
            head, rest = text.split(FULL_LOAD_BEGIN, 1)
            text = head + section + rest.split(FULL_LOAD_END, 1)[1]
        else:
            text = text.rstrip("\n") + "\n\n" + section + "\n"
        DOC.write_text(text)
        print(f"wrote the full-load section of {DOC.relative_to(ROOT)} and {plot.relative_to(ROOT)}")
    print(json.dumps(summary))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--loads", default="0.7,1.2", help="moderate,high offered loads")
    ap.add_argument("--large-jobs", type=int, default=3000, help="jobs in the larger generated trace")
    ap.add_argument("--out", type=Path, default=Path("/tmp/ckq-eval"))
    ap.add_argument("--sched-interval", type=float, default=10.0)
    ap.add_argument("--no-docs", action="store_true", help="do not rewrite docs/evaluation.md")
    ap.add_argument("--full-load", action="store_true",
                    help="issue 15's evaluation instead: FULL_LOAD_MIX traces, one load, two seeds")
    ap.add_argument("--jobs", type=int, default=10000, help="--full-load: jobs per trace")
    ap.add_argument("--seeds", default="1,2", help="--full-load: trace seeds")
    ap.add_argument("--nodes", type=int, default=64, help="--full-load: nodes of 8 GPUs")
    ap.add_argument("--load", type=float, default=0.93, help="--full-load: offered load")
    ap.add_argument("--workers", type=int, default=1, help="--full-load: simulations run in parallel")
    ap.add_argument("--node-mtbf-days", type=float, default=None,
                    help="--full-load: model node failures with this mean time between failures per node")
    ap.add_argument("--policies", default="", help="--full-load with --no-docs: only these policies "
                    "(comma-separated), to iterate on a smaller trace")
    args = ap.parse_args(argv)
    if args.full_load:
        return full_load(args)
    loads = [float(x) for x in args.loads.split(",")]
    if len(loads) != 2 or min(loads) <= 0:
        ap.error("--loads takes two positive numbers: moderate,high")
    cfg = SimConfig(sched_interval_s=args.sched_interval)
    results: dict[str, dict[str, Any]] = {}
    t0 = time.perf_counter()
    for tname, (tdesc, trace) in traces(args.large_jobs).items():
        for label, target in zip(("moderate", "high"), loads, strict=True):
            key = f"{tname}-{label}"
            nodes = nodes_for(trace, target, 8)
            cluster = ClusterSpec.uniform(nodes)
            runs = run_compare(trace, POLICIES, cluster, None, cfg, args.out / key)
            block: dict[str, Any] = {
                "title": f"{tdesc}, {label} load", "nodes": nodes, "high": label == "high",
                "offered": offered_load(trace, cluster.total_gpus),
                "metrics": {r.result.policy: r.metrics for r in runs}}
            if label == "high":
                # Sensitivity: how much of iass's cost is checkpoint bandwidth.
                fast = replace(cfg, checkpoint=CheckpointModel(bandwidth_gib_s=FAST_GIB_S,
                                                               restore_bandwidth_gib_s=FAST_GIB_S))
                block["iass-fast"] = run_policy(trace, "iass", cluster, None, fast, None, plots=False).metrics
            results[key] = block
            print(f"\n{block['title']}: {nodes} nodes x 8 GPUs, offered load {block['offered']:.2f}")
            widths = [max(len(h), 9) for h in HEAD]
            print("  ".join(h[:w].rjust(w) for h, w in zip(HEAD, widths, strict=True)))
            for row in _rows(block):
                print("  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)))
            print(f"  {audit(block)}")
            for name, ok, detail in goals(block["metrics"], block["high"]):
                print(f"  [{'met' if ok else 'NOT met'}] {name}: {detail}")
    if not args.no_docs:
        write_doc(results, cfg, args.out)
        print(f"\nwrote {DOC.relative_to(ROOT)} and plots under {DOC_PLOTS.relative_to(ROOT)}/")
    summary: dict[str, Any] = {"bench": "policies", "seconds": round(time.perf_counter() - t0, 1)}
    for key, block in results.items():
        for p, m in block["metrics"].items():
            summary[f"{key}.{p}"] = {k: m[k] for k in (
                "gpu_utilization", "gpu_utilization_steady", "utilization", "mean_wait_s", "p95_wait_s_by_priority",
                "mean_bounded_slowdown", "wasted_gpu_hours", "wasted_fraction", "checkpoint_overhead_gpu_hours",
                "preemptions_checkpoint", "preemptions_kill", "makespan_s", "jobs_completed", *AUDIT)}
        if "iass-fast" in block:
            summary[f"{key}.iass-fast"] = {k: block["iass-fast"][k] for k in (
                "gpu_utilization", "utilization", "p95_wait_s_by_priority", "wasted_fraction",
                "checkpoint_overhead_gpu_hours")}
        summary[f"{key}.nodes"] = block["nodes"]
        summary[f"{key}.goals_met"] = [name for name, ok, _ in goals(block["metrics"], block["high"]) if ok]
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())

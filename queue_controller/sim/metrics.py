"""Metrics of a simulation run (definitions as in docs/simulator.md and the JSSPP literature).

- wait = first start - submit; response = completion - submit; bounded slowdown =
  max(1, response / max(runtime, 10 s)).
- makespan = last completion - first submit.
- gpu_utilization = GPU-seconds allocated to jobs (whatever they did with them) / (GPUs x makespan).
  `gpu_utilization_steady` is the same over the arrival window [first submit, last submit], where work
  keeps arriving: it leaves out the drain at the end, when no scheduler can keep a cluster busy.
- utilization = useful GPU-seconds (the completed jobs' run time x GPUs) / (GPUs x makespan): goodput.
  On a cluster without GPUs, both use CPU cores instead.
- wasted_gpu_hours: work thrown away - progress lost to kills and node failures, plus kill grace
  periods. checkpoint_overhead_gpu_hours: time spent dumping (periodic and preemption checkpoints) and
  restoring. wasted_fraction = wasted / allocated GPU-hours.
- preemption_rounds: decision cycles in which victims were preempted for a job (summed over jobs);
  repeated_preemption_rounds: those that came while the job was still pending from an earlier round,
  i.e. the engine planning room for the same start twice (a preemption loop shows up here);
  preemptions_undone: preemptions whose victim ran again on a node it was preempted from before its
  beneficiary had started (room made for nothing: the beneficiary was overtaken, or could not start).
- gpu_time: where the GPU capacity went, as fractions of GPUs x makespan that add up to 1: `working`
  (jobs making progress, including progress later lost to kills), `checkpoint_periodic`,
  `checkpoint_preempt` (victims dumping), `restore`, `kill_grace`, and idle time by reason:
  `idle_<reason>` for the simulator's `IDLE_REASONS` (the engine's waiting reasons at each cycle), and
  `idle_between_cycles` (GPUs released after a cycle, idle until the next one).
- drain_hours: last completion - last submit; drain_idle_fraction: the GPU time idle in that drain, as
  a fraction of GPUs x makespan (part of the idle time above: what no scheduler can fill once nothing
  arrives, and what the order of the last jobs decides).
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from queue_controller.sim.simulator import IDLE_REASONS, Phase, SimJob, SimResult

BSLD_TAU_S = 10.0


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default), q in [0, 100]; 0.0 for no values."""
    if not values:
        return 0.0
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def _integrate(usage: list[tuple[float, int, int]], start: float, end: float, col: int) -> float:
    """Integral of a step function (value holds from its time until the next) over [start, end]."""
    total = 0.0
    for i, row in enumerate(usage):
        t0 = max(row[0], start)
        t1 = min(usage[i + 1][0] if i + 1 < len(usage) else end, end)
        if t1 > t0:
            total += row[col] * (t1 - t0)
    return total


def wait_s(sj: SimJob) -> float | None:
    return None if sj.first_start is None else sj.first_start - sj.trace.submit_s


def bounded_slowdown(sj: SimJob) -> float | None:
    if sj.end is None:
        return None
    return max(1.0, (sj.end - sj.trace.submit_s) / max(sj.trace.runtime_s, BSLD_TAU_S))


def idle_breakdown(res: SimResult) -> dict[str, float]:
    """Idle GPU-seconds by reason over [first submit, makespan end]. The idle GPUs at any time are the
    capacity less the allocation; the last cycle's reasons cover at most as many GPUs as were idle right
    after it (in its proportions), and any more are `between_cycles`."""
    total = res.cluster.total_gpus
    out = {k: 0.0 for k in (*IDLE_REASONS, "between_cycles")}
    start, end = res.first_submit, res.makespan_end
    marks = res.idle_marks
    usage = res.usage
    times = sorted({*(u[0] for u in usage), *(m[0] for m in marks)})
    ui = mi = 0
    alloc = 0
    mark: tuple[float, int, dict[str, int]] | None = None
    for i, t in enumerate(times):
        while ui < len(usage) and usage[ui][0] <= t:
            alloc = usage[ui][1]
            ui += 1
        while mi < len(marks) and marks[mi][0] <= t:
            mark = marks[mi]
            mi += 1
        t0 = max(t, start)
        t1 = min(times[i + 1] if i + 1 < len(times) else end, end)
        if t1 <= t0:
            continue
        idle = total - alloc
        if idle <= 0:
            continue
        dt = t1 - t0
        known = 0
        if mark is not None and mark[1] > 0:
            known = min(idle, mark[1])
            for k, g in mark[2].items():
                out[k] += g * known / mark[1] * dt
        out["between_cycles"] += (idle - known) * dt
    return out


def compute(res: SimResult) -> dict[str, Any]:
    jobs = res.jobs
    completed = [j for j in jobs if j.phase is Phase.DONE]
    span = max(res.makespan_end - res.first_submit, 1e-9)
    gpus_total = res.cluster.total_gpus
    use_gpu = gpus_total > 0
    capacity = gpus_total if use_gpu else res.cluster.total_cpu * 1000
    col = 1 if use_gpu else 2

    def weight(j: SimJob) -> float:
        return float(j.gpus) if use_gpu else j.cpu_milli

    allocated = _integrate(res.usage, res.first_submit, res.makespan_end, col)
    window = res.last_submit - res.first_submit
    steady = (_integrate(res.usage, res.first_submit, res.last_submit, col) / (capacity * window)
              if window > 0 else 0.0)
    useful = sum(j.trace.runtime_s * weight(j) for j in completed)
    wasted = sum((j.lost_work + j.grace_time) * weight(j) for j in jobs)
    overhead = sum((j.periodic_time + j.vacate_ckpt_time + j.restore_time) * weight(j) for j in jobs)
    cpu_alloc = _integrate(res.usage, res.first_submit, res.makespan_end, 2)

    waits = [w for j in jobs if (w := wait_s(j)) is not None]
    by_prio: dict[int, list[float]] = {}
    for j in jobs:
        w = wait_s(j)
        if w is not None:
            by_prio.setdefault(j.trace.priority, []).append(w)
    bslds = [b for j in completed if (b := bounded_slowdown(j)) is not None]
    unit = 3600.0 if use_gpu else 3600.0 * 1000
    gpu_time: dict[str, float] = {}
    if use_gpu:
        cap_s = capacity * span
        gpu_time = {
            "working": sum(j.working_time * j.gpus for j in jobs) / cap_s,
            "checkpoint_periodic": sum(j.periodic_time * j.gpus for j in jobs) / cap_s,
            "checkpoint_preempt": sum(j.vacate_ckpt_time * j.gpus for j in jobs) / cap_s,
            "restore": sum(j.restore_time * j.gpus for j in jobs) / cap_s,
            "kill_grace": sum(j.grace_time * j.gpus for j in jobs) / cap_s,
            **{f"idle_{k}": v / cap_s for k, v in idle_breakdown(res).items()},
        }
        gpu_time = {k: round(v, 6) for k, v in gpu_time.items()}
    drain = max(res.makespan_end - res.last_submit, 0.0)
    drain_idle = capacity * drain - _integrate(res.usage, res.last_submit, res.makespan_end, col)
    return {
        "gpu_time": gpu_time,
        "drain_hours": round(drain / 3600.0, 3),
        "drain_idle_fraction": round(drain_idle / (capacity * span), 6),
        "policy": res.policy,
        "utilization": round(useful / (capacity * span), 6),
        "gpu_utilization": round(allocated / (capacity * span), 6) if use_gpu else 0.0,
        "gpu_utilization_steady": round(steady, 6) if use_gpu else 0.0,
        "cpu_utilization": round(cpu_alloc / (res.cluster.total_cpu * 1000 * span), 6),
        "mean_wait_s": round(sum(waits) / len(waits), 3) if waits else 0.0,
        "p95_wait_s": round(percentile(waits, 95), 3),
        "mean_wait_s_by_priority": {str(p): round(sum(v) / len(v), 3) for p, v in sorted(by_prio.items())},
        "p95_wait_s_by_priority": {str(p): round(percentile(v, 95), 3) for p, v in sorted(by_prio.items())},
        "mean_bounded_slowdown": round(sum(bslds) / len(bslds), 4) if bslds else 0.0,
        "wasted_gpu_hours": round(wasted / unit, 4),
        "wasted_fraction": round(wasted / allocated, 6) if allocated > 0 else 0.0,
        "checkpoints": res.checkpoints,
        "periodic_checkpoints": sum(j.periodic for j in jobs),
        "checkpoint_overhead_gpu_hours": round(overhead / unit, 4),
        "allocated_gpu_hours": round(allocated / unit, 4),
        "useful_gpu_hours": round(useful / unit, 4),
        "preemptions": sum(j.preempt_ckpt + j.preempt_kill for j in jobs),
        "preemptions_checkpoint": sum(j.preempt_ckpt for j in jobs),
        "preemptions_kill": sum(j.preempt_kill for j in jobs),
        "max_preemptions_of_one_job": max((j.preempt_ckpt + j.preempt_kill for j in jobs), default=0),
        "preemption_rounds": sum(j.preempt_rounds for j in jobs),
        "repeated_preemption_rounds": sum(j.repeat_preempt_rounds for j in jobs),
        "preemptions_undone": sum(j.undone for j in jobs),
        "node_failures": res.node_failures,
        "backfilled_runs": sum(j.backfill_runs for j in jobs),
        "makespan_s": round(span, 3),
        "jobs_total": len(jobs),
        "jobs_completed": len(completed),
        "jobs_never_started": sum(1 for j in jobs if j.first_start is None),
        "nodes": res.cluster.node_count,
        "gpus": gpus_total,
        "sched_interval_s": res.config.sched_interval_s,
        "queue_depth": res.config.queue_depth,
        "decide_calls": res.decide_calls,
        "decide_seconds": round(res.decide_seconds, 3),
        "wall_seconds": round(res.wall_seconds, 3),
    }


CSV_FIELDS = (
    "id", "queue", "cluster_queue", "priority", "gpus", "pods", "checkpointable", "submit_s", "runtime_s",
    "estimate_s", "first_start_s", "end_s", "wait_s", "response_s", "bounded_slowdown", "runs",
    "backfill_runs", "preemptions_checkpoint", "preemptions_kill", "preemption_rounds", "failures",
    "periodic_checkpoints",
    "lost_gpu_s", "overhead_gpu_s", "held_gpu_s", "state",
)


def job_rows(res: SimResult) -> list[dict[str, Any]]:
    rows = []
    for j in res.jobs:
        t = j.trace
        w = wait_s(j)
        b = bounded_slowdown(j)
        state = "completed" if j.phase is Phase.DONE else ("never_started" if j.first_start is None else "unfinished")
        rows.append({
            "id": t.id, "queue": t.queue, "cluster_queue": j.cluster_queue, "priority": t.priority,
            "gpus": t.gpus, "pods": t.pods, "checkpointable": t.checkpointable, "submit_s": t.submit_s,
            "runtime_s": t.runtime_s, "estimate_s": "" if t.estimate_s is None else t.estimate_s,
            "first_start_s": "" if j.first_start is None else round(j.first_start, 3),
            "end_s": "" if j.end is None else round(j.end, 3),
            "wait_s": "" if w is None else round(w, 3),
            "response_s": "" if j.end is None else round(j.end - t.submit_s, 3),
            "bounded_slowdown": "" if b is None else round(b, 4),
            "runs": j.runs, "backfill_runs": j.backfill_runs, "preemptions_checkpoint": j.preempt_ckpt,
            "preemptions_kill": j.preempt_kill, "preemption_rounds": j.preempt_rounds, "failures": j.failures,
            "periodic_checkpoints": j.periodic,
            "lost_gpu_s": round((j.lost_work + j.grace_time) * j.gpus, 3),
            "overhead_gpu_s": round((j.periodic_time + j.vacate_ckpt_time + j.restore_time) * j.gpus, 3),
            "held_gpu_s": round(j.held_time * j.gpus, 3), "state": state,
        })
    return rows


def write_outputs(res: SimResult, metrics: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    with (out / "jobs.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=CSV_FIELDS)
        w.writeheader()
        w.writerows(job_rows(res))

"""Run one policy (or several side by side) on a trace and write metrics, the per-job CSV and plots."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from queue_controller.policies import load_policy
from queue_controller.sim.cluster import ClusterSpec, QueueLayout
from queue_controller.sim.metrics import compute, write_outputs
from queue_controller.sim.simulator import SimConfig, SimResult, simulate
from queue_controller.sim.trace import TraceJob

HEADLINE = (
    "gpu_utilization", "gpu_utilization_steady", "utilization", "mean_wait_s", "p95_wait_s_by_priority",
    "mean_bounded_slowdown", "wasted_gpu_hours", "wasted_fraction", "checkpoints",
    "checkpoint_overhead_gpu_hours", "preemptions", "makespan_s", "jobs_completed",
)


@dataclass(slots=True)
class Run:
    result: SimResult
    metrics: dict[str, Any]


def run_policy(trace: list[TraceJob], policy: str, cluster: ClusterSpec, layout: QueueLayout | None,
               config: SimConfig, out: Path | None, plots: bool = True) -> Run:
    res = simulate(trace, load_policy(policy), cluster, layout, config)
    metrics = compute(res)
    if out is not None:
        write_outputs(res, metrics, out)
        if plots:
            from queue_controller.sim.plots import write_plots

            write_plots(res, out)
    return Run(res, metrics)


def run_compare(trace: list[TraceJob], policies: Sequence[str], cluster: ClusterSpec,
                layout: QueueLayout | None, config: SimConfig, out: Path, plots: bool = True) -> list[Run]:
    runs = [run_policy(trace, p, cluster, layout, config, out / p, plots) for p in policies]
    summary = {r.result.policy: r.metrics for r in runs}
    out.mkdir(parents=True, exist_ok=True)
    (out / "comparison.json").write_text(json.dumps(summary, indent=2) + "\n")
    if plots:
        from queue_controller.sim.plots import comparison_plot

        comparison_plot([r.result for r in runs], summary, out / "comparison.png")
    return runs

"""PNG plots of a simulation run: utilisation over time, wait-time CDF by priority, node timeline, and a
side-by-side comparison of policies. Uses matplotlib's Agg backend (no display needed)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.artist import Artist
from matplotlib.patches import Rectangle

from queue_controller.sim.metrics import wait_s
from queue_controller.sim.simulator import Phase, SimResult

_PHASE_COLORS = {
    int(Phase.WORKING): "#4c72b0",
    int(Phase.RESTORING): "#dd8452",
    int(Phase.PAUSED): "#c44e52",
    int(Phase.VACATE_CKPT): "#8172b3",
    int(Phase.VACATE_KILL): "#222222",
}
_BACKFILL_COLOR = "#55a868"
_PHASE_LABELS = {
    int(Phase.WORKING): "running",
    int(Phase.RESTORING): "restoring",
    int(Phase.PAUSED): "periodic checkpoint",
    int(Phase.VACATE_CKPT): "preemption checkpoint",
    int(Phase.VACATE_KILL): "kill grace",
}


def _steps(res: SimResult, col: int, capacity: float) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for row in res.usage:
        xs.append(row[0] / 3600.0)
        ys.append(row[col] / capacity if capacity else 0.0)
    xs.append(res.makespan_end / 3600.0)
    ys.append(ys[-1] if ys else 0.0)
    return xs, ys


def utilization_plot(res: SimResult, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(10, 3.5))
    if res.cluster.total_gpus:
        xs, ys = _steps(res, 1, res.cluster.total_gpus)
        ax.step(xs, ys, where="post", lw=0.8, label="GPUs allocated")
    xs, ys = _steps(res, 2, res.cluster.total_cpu * 1000)
    ax.step(xs, ys, where="post", lw=0.6, alpha=0.6, label="CPUs allocated")
    ax.axvline(res.last_submit / 3600.0, color="grey", ls=":", lw=0.8, label="last arrival")
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("simulated time (h)")
    ax.set_ylabel("fraction of capacity")
    ax.set_title(f"Utilisation over time - policy {res.policy}")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def wait_cdf_plot(res: SimResult, path: Path) -> None:
    by_prio: dict[int, list[float]] = {}
    for j in res.jobs:
        w = wait_s(j)
        if w is not None:
            by_prio.setdefault(j.trace.priority, []).append(max(w, 1.0))
    fig, ax = plt.subplots(figsize=(7, 4))
    for prio in sorted(by_prio, reverse=True):
        xs = sorted(by_prio[prio])
        ys = [(i + 1) / len(xs) for i in range(len(xs))]
        ax.step(xs, ys, where="post", label=f"priority {prio} (n={len(xs)})")
    ax.set_xscale("log")
    ax.set_xlabel("wait until first start (s, log; waits under 1 s shown at 1 s)")
    ax.set_ylabel("fraction of jobs")
    ax.set_ylim(0, 1.02)
    ax.set_title(f"Wait-time CDF by priority - policy {res.policy}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def timeline_plot(res: SimResult, path: Path, max_nodes: int = 24, max_hours: float | None = None) -> None:
    """Per node: phases of the runs placed on it (backfilled runs in green), preemptions and failures."""
    names = sorted({n for seg in res.segments for n in seg[5]})[:max_nodes]
    row = {n: i for i, n in enumerate(names)}
    fig, ax = plt.subplots(figsize=(12, max(3.0, 0.28 * len(names) + 1.5)))
    end_h = max_hours if max_hours is not None else res.makespan_end / 3600.0
    bars: dict[tuple[int, str], list[tuple[float, float]]] = {}
    for start, end, phase, _idx, backfilled, nodes in res.segments:
        if start / 3600.0 > end_h:
            continue
        color = _BACKFILL_COLOR if backfilled and phase == int(Phase.WORKING) else _PHASE_COLORS.get(phase, "grey")
        for n in dict.fromkeys(nodes):
            if n in row:
                bars.setdefault((row[n], color), []).append((start / 3600.0, (end - start) / 3600.0))
    for (r, color), spans in bars.items():
        ax.broken_barh(spans, (r - 0.4, 0.8), facecolors=color, edgecolors="white", linewidth=0.2)
    marks = {"preempt-checkpoint": ("v", "#8172b3"), "preempt-kill": ("x", "#c44e52"), "failure": ("*", "k")}
    for kind, (marker, color) in marks.items():
        pts = [(t / 3600.0, row[n]) for t, k, _i, nodes in res.events if k == kind
               for n in dict.fromkeys(nodes) if n in row and t / 3600.0 <= end_h]
        if pts:
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], marker=marker, color=color, s=18, zorder=3,
                       label=kind)
    handles: list[Artist] = [Rectangle((0, 0), 1, 1, color=c) for c in _PHASE_COLORS.values()]
    labels = list(_PHASE_LABELS.values())
    handles.append(Rectangle((0, 0), 1, 1, color=_BACKFILL_COLOR))
    labels.append("running (backfilled)")
    h2, l2 = ax.get_legend_handles_labels()
    ax.legend(handles + list(h2), labels + list(l2), fontsize=7, ncol=4, loc="upper center",
              bbox_to_anchor=(0.5, -0.12))
    ax.set_yticks(range(len(names)))
    ax.set_yticklabels(names, fontsize=6)
    ax.set_xlim(0, end_h)
    ax.set_xlabel("simulated time (h)")
    ax.set_title(f"Node timeline (first {len(names)} nodes) - policy {res.policy}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_plots(res: SimResult, out: Path) -> list[Path]:
    paths = [out / "utilization.png", out / "wait_cdf.png", out / "timeline.png"]
    utilization_plot(res, paths[0])
    wait_cdf_plot(res, paths[1])
    if res.segments:
        timeline_plot(res, paths[2])
    else:
        paths.pop()
    return paths


def comparison_plot(results: Sequence[SimResult], metrics: Mapping[str, Mapping[str, Any]], path: Path) -> None:
    """Utilisation over time for every policy, and bars of the headline metrics."""
    fig = plt.figure(figsize=(13, 7))
    ax = fig.add_subplot(2, 1, 1)
    for res in results:
        col, cap = (1, res.cluster.total_gpus) if res.cluster.total_gpus else (2, res.cluster.total_cpu * 1000)
        xs, ys = _steps(res, col, cap)
        ax.step(xs, ys, where="post", lw=0.8, label=res.policy)
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("simulated time (h)")
    ax.set_ylabel("GPUs allocated (fraction)")
    ax.legend(fontsize=8, ncol=len(results))
    names = [r.policy for r in results]
    panels = [("gpu_utilization", "GPU utilisation"), ("mean_wait_s", "mean wait (s)"),
              ("wasted_fraction", "wasted fraction"), ("mean_bounded_slowdown", "mean bounded slowdown")]
    for i, (key, title) in enumerate(panels):
        bx = fig.add_subplot(2, len(panels), len(panels) + i + 1)
        vals = [float(metrics[n].get(key, 0.0)) for n in names]
        bx.bar(names, vals, color=[f"C{k}" for k in range(len(names))])
        bx.set_title(title, fontsize=9)
        bx.tick_params(labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


GPU_TIME_COLOURS = {
    "working": "#2ca02c", "checkpoint_periodic": "#98df8a", "checkpoint_preempt": "#1f77b4",
    "restore": "#aec7e8", "kill_grace": "#d62728", "idle_placement": "#ff7f0e", "idle_quota": "#ffbb78",
    "idle_reservation": "#9467bd", "idle_victims": "#c5b0d5", "idle_gang_too_big": "#8c564b",
    "idle_no_job": "#c7c7c7", "idle_other": "#7f7f7f", "idle_between_cycles": "#e377c2",
}


def gpu_time_plot(blocks: Mapping[str, Mapping[str, Mapping[str, float]]], path: Path) -> None:
    """Stacked bars: where the GPU capacity went (metrics' `gpu_time`), one bar per policy and trace.
    `blocks`: trace label -> policy -> gpu_time fractions."""
    labels: list[str] = []
    rows: list[Mapping[str, float]] = []
    for trace, by_policy in blocks.items():
        for policy, gt in by_policy.items():
            labels.append(f"{policy}\n{trace}")
            rows.append(gt)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(labels)), 4.5))
    bottom = [0.0] * len(labels)
    for key, colour in GPU_TIME_COLOURS.items():
        vals = [100.0 * r.get(key, 0.0) for r in rows]
        if not any(vals):
            continue
        ax.bar(range(len(labels)), vals, bottom=bottom, color=colour, label=key)
        bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
    ax.set_xticks(range(len(labels)), labels, fontsize=7)
    ax.set_ylabel("% of GPU capacity x makespan")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    ax.set_title("Where the GPU time went")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

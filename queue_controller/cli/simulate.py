"""`ckq simulate`: replay a workload trace through the engine and write metrics and plots."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

_POLICY_HELP = "Policy profile (fifo, kueue, easy, iass, fair) or a path to a policy YAML file."


def _policies(policy: str, compare: str | None) -> list[str]:
    from queue_controller.policies import PolicyError, load_policy

    names = [p.strip() for p in compare.split(",") if p.strip()] if compare else [policy]
    if not names:
        raise typer.BadParameter("give at least one policy, e.g. fifo,kueue,easy,iass", param_hint="--compare")
    if len(set(names)) != len(names):
        raise typer.BadParameter(f"policies repeat in {compare!r}", param_hint="--compare")
    for n in names:
        try:
            load_policy(n)
        except PolicyError as e:
            raise typer.BadParameter(str(e), param_hint="--compare" if compare else "--policy") from None
    return names


def simulate(
    trace: Annotated[Path, typer.Option("--trace", help="Trace: JSONL (ckq format) or SWF (.swf).")],
    out: Annotated[Path, typer.Option("--out", help="Directory for metrics.json, jobs.csv and plots.")],
    policy: Annotated[str, typer.Option("--policy", help=_POLICY_HELP)] = "iass",
    compare: Annotated[str | None, typer.Option(
        "--compare", help="Comma-separated policies to run side by side, e.g. fifo,kueue,easy,iass; "
        "writes DIR/<policy>/ for each plus comparison.png.")] = None,
    nodes: Annotated[int, typer.Option("--nodes", min=1, help="Number of nodes.")] = 64,
    gpus_per_node: Annotated[int, typer.Option("--gpus-per-node", min=0)] = 8,
    cpu_per_node: Annotated[float, typer.Option("--cpu-per-node", min=0.001)] = 64.0,
    memory_gib_per_node: Annotated[float, typer.Option("--memory-gib-per-node", min=0.001)] = 512.0,
    queues: Annotated[Path | None, typer.Option(
        "--queues", help="Queue layout YAML (trace queue -> ClusterQueue); default: one queue.")] = None,
    trace_format: Annotated[str, typer.Option("--format", help="auto, jsonl or swf.")] = "auto",
    sched_interval: Annotated[float, typer.Option(
        "--sched-interval", min=0.0, help="At most one decision cycle per this many simulated seconds.")] = 10.0,
    queue_depth: Annotated[int, typer.Option(
        "--queue-depth", min=1, help="Pending jobs (in queue order) the engine sees per cycle.")] = 1000,
    node_mtbf_hours: Annotated[float | None, typer.Option(
        "--node-mtbf-hours", min=0.001, help="Mean time between failures of one node; default: none.")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed for node failures.")] = 0,
    no_plots: Annotated[bool, typer.Option("--no-plots", help="Skip the PNG plots.")] = False,
) -> None:
    """Replay a workload trace through the engine and write metrics and plots."""
    from rich.console import Console
    from rich.table import Table

    from queue_controller.sim.cluster import ClusterSpec, LayoutError, QueueLayout, load_layout
    from queue_controller.sim.runner import run_compare, run_policy
    from queue_controller.sim.simulator import SimConfig, SimulationError
    from queue_controller.sim.trace import TraceError, load_any

    names = _policies(policy, compare)
    if trace_format not in ("auto", "jsonl", "swf"):
        raise typer.BadParameter(f"{trace_format!r}: use auto, jsonl or swf", param_hint="--format")
    try:
        jobs = load_any(trace, trace_format)
    except TraceError as e:
        raise typer.BadParameter(str(e), param_hint="--trace") from None
    layout: QueueLayout | None = None
    if queues is not None:
        try:
            layout = load_layout(queues)
        except LayoutError as e:
            raise typer.BadParameter(str(e), param_hint="--queues") from None
    cluster = ClusterSpec.uniform(nodes, gpus_per_node, cpu_per_node, memory_gib_per_node)
    config = SimConfig(sched_interval_s=sched_interval, queue_depth=queue_depth,
                       node_mtbf_s=None if node_mtbf_hours is None else node_mtbf_hours * 3600.0, seed=seed)
    console = Console()
    if not console.is_terminal:
        console = Console(width=160)  # piped or captured: do not squash the table to 80 columns
    console.print(f"[bold]simulating[/] {len(jobs)} jobs on {nodes} nodes x {gpus_per_node} GPUs "
                  f"with {', '.join(names)}")
    try:
        if compare:
            runs = run_compare(jobs, names, cluster, layout, config, out, plots=not no_plots)
        else:
            runs = [run_policy(jobs, names[0], cluster, layout, config, out, plots=not no_plots)]
    except SimulationError as e:
        console.print(f"[red]simulation invariant broken:[/] {e}")
        raise typer.Exit(1) from None

    table = Table(title=f"{trace.name}: {nodes} nodes x {gpus_per_node} GPUs")
    cols = ["policy", "GPU util", "steady util", "mean wait", "p95 wait (highest prio)", "BSLD", "wasted GPU-h",
            "ckpt overhead GPU-h", "preemptions", "completed"]
    for c in cols:
        table.add_column(c, justify="left" if c == "policy" else "right")
    for r in runs:
        m = r.metrics
        p95 = m["p95_wait_s_by_priority"]
        top = max(p95, key=int) if p95 else None
        table.add_row(
            m["policy"], f"{m['gpu_utilization']:.1%}", f"{m['gpu_utilization_steady']:.1%}",
            f"{m['mean_wait_s']:.0f}s", f"{p95[top]:.0f}s (p{top})" if top is not None else "-",
            f"{m['mean_bounded_slowdown']:.2f}", f"{m['wasted_gpu_hours']:.1f}",
            f"{m['checkpoint_overhead_gpu_hours']:.1f}", str(m["preemptions"]),
            f"{m['jobs_completed']}/{m['jobs_total']}",
        )
    console.print(table)
    where = f"{out}/" + ("<policy>/" if compare else "")
    console.print(f"wrote {where}metrics.json and {where}jobs.csv" + ("" if no_plots else ", and PNG plots"))

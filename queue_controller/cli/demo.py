"""`ckq demo`: the product working on a local real control plane (default), or, with `--engine-only`, a
built-in scenario played through the engine alone, step by step, as rich tables.

The engine-only mode shows the decisions the controller acts on: admission by priority within quota, a high-priority
arrival preempting a training job by checkpoint, backfill of idle GPUs, and the resume from the
checkpoint, with no progress lost.
"""

from __future__ import annotations

from dataclasses import replace

import typer
from rich.console import Console
from rich.table import Table

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
    Policy,
    Preempt,
    PreemptMode,
    Quota,
    ResourceGroup,
    Resume,
    Snapshot,
    decide,
)
from queue_controller.policies import PolicyError, load_policy

M = 1000
GIB = 2**30 * M


def _scenario() -> tuple[Snapshot, dict[float, list[Job]], dict[str, float]]:
    nodes = tuple(Node(f"gpu-node-{i}", {"cpu": 64 * M, "memory": 512 * GIB, GPU: 8 * M},
                       {"ckq.io/flavor": "h100"}) for i in range(2))
    flavors = (Flavor("h100", {"ckq.io/flavor": "h100"}),)

    def cq(name: str, gpus: int) -> ClusterQueue:
        q = {"cpu": Quota(64 * M), "memory": Quota(512 * GIB), GPU: Quota(gpus * M)}
        return ClusterQueue(name, (ResourceGroup(("cpu", "memory", GPU), (FlavorQuotas("h100", q),)),),
                            cohort="ml")

    def job(name: str, queue: str, prio: int, t: float, gpus: int, pods: int, est: float,
            ckpt: bool = True) -> Job:
        return Job(f"team/{name}", queue, prio, t,
                   (PodSet("worker", pods, {"cpu": 4 * M, "memory": 32 * GIB, GPU: gpus * M}),),
                   checkpointable=ckpt, checkpoint_cost_s=40.0, restore_cost_s=25.0, runtime_estimate_s=est,
                   checkpoint_interval_s=600.0)

    arrivals = {
        0.0: [job("llm-pretrain", "research", 0, 0.0, 8, 2, 3600.0),
              job("eval-sweep", "research", 0, 1.0, 2, 1, 900.0, ckpt=False)],
        300.0: [job("urgent-finetune", "prod", 100, 300.0, 8, 1, 600.0)],
        330.0: [job("notebook", "prod", 50, 330.0, 1, 1, 300.0)],
    }
    work = {"team/llm-pretrain": 3600.0, "team/eval-sweep": 900.0, "team/urgent-finetune": 600.0,
            "team/notebook": 300.0}
    snap = Snapshot(nodes, flavors, (cq("research", 8), cq("prod", 8)), ())
    return snap, arrivals, work


def demo(
    policy: str = typer.Option("iass", help="Policy profile: fifo, kueue, easy, iass, fair, or a YAML file."),
    engine_only: bool = typer.Option(False, "--engine-only", help="No cluster: play the scenario through the "
                                     "engine alone and show every decision."),
    steps: int = typer.Option(30, min=1, max=200, help="--engine-only: scheduling cycles to show."),
    keep: bool = typer.Option(False, "--keep", help="Leave the demo cluster running afterwards."),
    timeout: float = typer.Option(300.0, min=30, help="Stop the live demo after this many seconds."),
) -> None:
    """Show the product working: a local cluster, the controller, jobs queued, preempted by checkpoint and
    resumed (live table). `--engine-only` needs no cluster."""
    try:
        pol = load_policy(policy)
    except PolicyError as e:
        raise typer.BadParameter(str(e), param_hint="--policy") from None
    if not engine_only:
        from queue_controller.cli.demo_cluster import run_cluster_demo
        from queue_controller.devcluster import DevClusterError

        try:
            run_cluster_demo(policy, keep, timeout)
        except (DevClusterError, RuntimeError) as e:
            Console(stderr=True).print(f"[red]error:[/] {e}")
            raise typer.Exit(1) from None
        return
    _engine_demo(pol, steps)


def _engine_demo(pol: Policy, steps: int) -> None:
    console = Console()
    base, arrivals, work = _scenario()
    jobs: dict[str, Job] = {}
    done_at: dict[str, float] = {}
    modes: dict[str, tuple[PreemptMode, float]] = {}
    lost = 0.0
    finished: list[str] = []
    now = 0.0
    console.print(f"[bold]ckq engine demo[/] — policy [cyan]{pol.name}[/]: {pol.description}")
    for _ in range(steps):
        for t in sorted(arrivals):
            if t <= now:
                for j in arrivals.pop(t):
                    jobs[j.key] = j
        # Jobs whose work is done finish; victims finish leaving (checkpoint or kill).
        for key, j in list(jobs.items()):
            if j.state is JobState.ADMITTED and j.started_at is not None:
                ran = now - j.started_at
                if j.vacating:
                    mode, at = modes.pop(key)
                    ran = at - j.started_at
                    kept = ran
                    if mode is PreemptMode.KILL:
                        # A kill keeps only what the last periodic checkpoint saved.
                        last = j.last_checkpoint_at
                        kept = last - j.started_at if last is not None and last > j.started_at else 0.0
                        lost += ran - kept
                        console.print(f"  [red]{key} was killed and lost {ran - kept:.0f} s of progress[/]")
                    jobs[key] = replace(j, state=JobState.PENDING, placement=(), vacating=False, started_at=None,
                                        backfilled=False, run_time_s=j.run_time_s + kept)
                elif j.run_time_s + ran >= work[key]:
                    finished.append(key)
                    done_at[key] = now
                    del jobs[key]
        d = decide(replace(base, jobs=tuple(jobs.values())), now, pol)
        table = Table(title=f"t = {now:>5.0f} s", title_justify="left", expand=False)
        for col in ("decision", "job", "detail"):
            table.add_column(col)
        for a in d.actions:
            if isinstance(a, Admit | Resume):
                kind = "resume" if isinstance(a, Resume) else "admit"
                where = ", ".join(f"{pl.name}→{'/'.join(pl.nodes)}" for pl in a.placement)
                extra = f" from {a.checkpoint}" if isinstance(a, Resume) else ""
                table.add_row(f"[green]{kind}[/]" + (" (backfill)" if a.backfill else ""), a.job, where + extra)
                j = jobs[a.job]
                jobs[a.job] = replace(j, state=JobState.ADMITTED, placement=a.placement, started_at=now,
                                      admitted_at=now, backfilled=a.backfill)
            elif isinstance(a, Preempt):
                colour = "yellow" if a.mode is PreemptMode.CHECKPOINT else "red"
                table.add_row(f"[{colour}]preempt ({a.mode})[/]", a.victim,
                              f"for {a.beneficiary}: {a.reason}, cost {a.cost:.0f} GPU·s")
                j = jobs[a.victim]
                ckpt = f"{a.victim.split('/')[1]}-{now:.0f}" if a.mode is PreemptMode.CHECKPOINT else j.checkpoint
                jobs[a.victim] = replace(j, vacating=True, checkpoint=ckpt)
                modes[a.victim] = (a.mode, now)
            elif isinstance(a, Checkpoint):
                table.add_row("[blue]checkpoint[/]", a.job, str(a.reason))
                name = f"{a.job.split('/')[1]}-{now:.0f}"
                jobs[a.job] = replace(jobs[a.job], last_checkpoint_at=now, checkpoint=name)
        for w in sorted(d.waiting.values(), key=lambda w: (w.job.split("/")[0], w.position)):
            table.add_row("[dim]wait[/]", w.job, f"#{w.position} {w.reason}: {w.message}")
        for key in finished:
            table.add_row("[bold green]finished[/]", key, f"at t={done_at[key]:.0f} s after {work[key]:.0f} s of work")
        finished.clear()
        if table.row_count:
            console.print(table)
        if not jobs and not arrivals:
            break
        now += 300.0
    console.print(f"Progress lost to preemption: [bold]{lost:.0f} s[/] of job run time. "
                  "Try --policy kueue to compare; `ckq simulate` does this for whole workloads.")

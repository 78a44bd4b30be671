"""A cohort for fair-sharing tests, and a loop that applies the engine's decisions until nothing moves.

Two teams' ClusterQueues with no quota of their own (`team-a`, `team-b`) and a third (`pool`) that owns
the GPUs and lends them all, in one cohort; 4 nodes of 8 GPUs: a contended pool of 32 GPUs."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

from queue_controller.engine import (
    Admit,
    ClusterQueue,
    Decisions,
    Job,
    JobState,
    Node,
    Policy,
    Preempt,
    Resume,
    Snapshot,
    decide,
)
from tests.unit.engine_factory import job, node, queue, snapshot


def pool_queues(weights: tuple[float, float] = (1.0, 3.0), nominal: tuple[int, int] = (0, 0),
                pool_gpus: int = 32, **kw: object) -> list[ClusterQueue]:
    a, b = weights
    return [
        queue("team-a", gpus=nominal[0], cohort="c", fair_weight=a, **kw),  # type: ignore[arg-type]
        queue("team-b", gpus=nominal[1], cohort="c", fair_weight=b, **kw),  # type: ignore[arg-type]
        queue("pool", gpus=pool_gpus - sum(nominal), cohort="c"),
    ]


def nodes(n: int = 4) -> list[Node]:
    return [node(f"n{i}") for i in range(n)]


def team_jobs(team: str, n: int, gpus: int = 4, t: float = 0.0, priority: int = 0, **kw: object) -> list[Job]:
    return [job(f"{team}-{i}", gpus=gpus, cq=f"team-{team}", t=t + i / 100, priority=priority,
                **kw)  # type: ignore[arg-type]
            for i in range(n)]


def gpus_of(jobs: Iterable[Job], cq: str) -> int:
    return sum(j.gpus for j in jobs if j.state is JobState.ADMITTED and j.cluster_queue == cq) // 1000


def step(jobs: dict[str, Job], d: Decisions, now: float) -> None:
    """Apply one cycle's decisions. A victim leaves at once (checkpointed or killed) and waits again."""
    for key, j in list(jobs.items()):
        if j.vacating:
            jobs[key] = replace(j, state=JobState.PENDING, placement=(), vacating=False, backfilled=False,
                                preempted_for=None, started_at=None,
                                checkpoint=f"{key}@{now}" if j.checkpointable else j.checkpoint)
    for a in d.actions:
        if isinstance(a, Admit | Resume):
            jobs[a.job] = replace(jobs[a.job], state=JobState.ADMITTED, placement=a.placement, started_at=now,
                                  admitted_at=now, backfilled=a.backfill)
        elif isinstance(a, Preempt):
            jobs[a.victim] = replace(jobs[a.victim], vacating=True, preempted_for=a.beneficiary)


def run_until_still(nodes_: list[Node], queues: list[ClusterQueue], initial: Iterable[Job], policy: Policy,
                    cycles: int = 60, now: float = 1000.0) -> tuple[dict[str, Job], list[Decisions]]:
    """Decide and apply until a cycle admits, resumes and preempts nothing and no victim is leaving.
    Fails if that takes more than `cycles` cycles: a preemption loop."""
    jobs = {j.key: j for j in initial}
    history: list[Decisions] = []
    for _ in range(cycles):
        snap: Snapshot = snapshot(nodes_, queues, jobs.values())
        d = decide(snap, now, policy)
        history.append(d)
        moved = any(isinstance(a, Admit | Resume | Preempt) for a in d.actions)
        if not moved and not any(j.vacating for j in jobs.values()):
            return jobs, history
        step(jobs, d, now)
        now += 10.0
    moves = [[a for a in d.actions if isinstance(a, Admit | Resume | Preempt)] for d in history[-6:]]
    raise AssertionError(f"no fixed point after {cycles} cycles; the last ones: {moves}")

"""The victim order: which preemption candidate is tried first (Kueue's `preemption/common/ordering`).

Candidates are sorted by `VictimOrder`, whose fields are the criteria, compared in this order:

1. `new_victim`: jobs already being vacated (False) come before new victims: their room comes back at
   no extra cost.
2. `for_another_job`: among those, the ones vacated for this very job before the others.
3. `kills`: under a checkpoint-first policy, checkpointable victims before the ones it would have to kill.
   A non-checkpointable victim is taken only when the checkpointable candidates cannot make the room
   (the minimal-set walk then drops any victim it does not need, the killed ones first): whatever its
   progress now, killing it throws work away and restarts it from scratch, while a checkpoint keeps all
   of it. (Under a kill policy every victim is killed: this criterion ties.)
4. `lost_work`: the least work lost first, in GPU-seconds (CPU-seconds for jobs without GPUs). Under a
   checkpoint-first policy a checkpointable victim loses its checkpoint plus restore time; any other
   victim loses its progress since it started or last checkpointed (plus a restore when it has a
   checkpoint to restart from). This is the checkpoint-first rule: a cheap checkpoint beats killing long
   progress.
5. `priority`: the lowest priority first.
6. `newest`: the most recently admitted first.
7. `key`: the job key, so the order is total and deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass

from queue_controller.engine.decisions import PreemptMode, PreemptReason
from queue_controller.engine.policy import Policy, PreemptionMode
from queue_controller.engine.snapshot import Job
from queue_controller.engine.workspace import Running


def weight(job: Job) -> float:
    """Size used to turn seconds into lost work: GPUs, or CPU cores for CPU-only jobs."""
    gpus = job.gpus
    if gpus:
        return gpus / 1000.0
    return max(job.total_requests().get("cpu", 0) / 1000.0, 0.001)


def lost_work(job: Job, now: float, policy: Policy) -> tuple[PreemptMode, float]:
    """How a running job would be preempted now, and the work that would cost."""
    w = weight(job)
    if policy.preemption.mode is PreemptionMode.CHECKPOINT and job.checkpointable:
        return PreemptMode.CHECKPOINT, (job.checkpoint_cost_s + job.restore_cost_s) * w
    since = job.started_at if job.started_at is not None else now
    if job.last_checkpoint_at is not None and job.last_checkpoint_at > since:
        since = job.last_checkpoint_at
    restore = job.restore_cost_s if job.checkpoint else 0.0
    return PreemptMode.KILL, (max(now - since, 0.0) + restore) * w


@dataclass(frozen=True, slots=True, order=True)
class VictimOrder:
    """A candidate's place in the victim order: smaller goes first. Fields compare in declaration order."""

    new_victim: bool
    for_another_job: bool
    kills: bool
    lost_work: float
    priority: int
    newest: float  # minus the admission (or start) time
    key: str

    @classmethod
    def leaving(cls, victim: Job, beneficiary: str) -> VictimOrder:
        """A job already being vacated: no work lost by taking its room."""
        return cls(False, victim.preempted_for != beneficiary, False, 0.0, 0, 0.0, victim.key)

    @classmethod
    def running(cls, victim: Job, lost: float, kills: bool = False) -> VictimOrder:
        """A running job that would lose `lost` GPU-seconds (`kills`: killed under a checkpoint-first
        policy)."""
        newest = -(victim.admitted_at or victim.started_at or 0.0)
        return cls(True, False, kills, lost, victim.priority, newest, victim.key)


@dataclass(frozen=True, slots=True)
class Candidate:
    """A running job that may be preempted for the job at hand, with its place in the victim order."""

    run: Running
    reason: PreemptReason | None  # None: already being vacated
    mode: PreemptMode
    lost_work: float
    order: VictimOrder

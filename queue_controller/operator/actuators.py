"""The actuators: carry out the engine's decisions, each on one job — Admit, Resume, Preempt, and a
periodic Checkpoint.

Admit and Resume write the admission first (phase `Admitted`, or `Restoring` from a checkpoint) and
then create the pods; a restart between the two is repaired by the job lifecycle, which creates the
pods an admitted job is missing. Preempt checkpoints a checkpointable victim (it keeps its resources
until the checkpoint completes, see `checkpoints`) or kills and requeues it. A periodic Checkpoint
leaves the job running. The decisions of one cycle concern different jobs, so the loop runs them
concurrently.
"""

from __future__ import annotations

from collections.abc import Coroutine, Mapping
from typing import Any

from queue_controller.api.common import ConditionStatus
from queue_controller.api.job import Admission, PodSetAssignment
from queue_controller.engine import Admit, Checkpoint, Preempt, PreemptMode, Resume
from queue_controller.operator import metrics
from queue_controller.operator.cache import Cache
from queue_controller.operator.checkpoints import Checkpoints
from queue_controller.operator.records import JobRecord
from queue_controller.operator.runs import Runs
from queue_controller.operator.snapshot import MODE_CONDITION
from queue_controller.operator.status import JobStatusPatch, StatusWriter, job_conditions, merge_patch
from queue_controller.operator.waiting import Waiting
from queue_controller.wire import WAITING_PHASES, parse_time, to_datetime


def admitted(job: JobRecord, action: Admit | Resume, now: float, priority: int | None,
             checkpoints: tuple[ConditionStatus, str, str] | None = None) -> tuple[JobStatusPatch, str, str]:
    """The status of a job admitted (or resumed) by `action` at `now`, the Event's reason and message;
    `checkpoints`: the CheckpointModeUnavailable condition its placement gives it (what checkpoints it)."""
    resume = isinstance(action, Resume)
    admission = Admission(
        cluster_queue=action.cluster_queue,
        pod_set_assignments=[PodSetAssignment(name=p.name, flavor=p.flavor, nodes=list(p.nodes), count=len(p.nodes))
                             for p in action.placement],
        backfill=action.backfill, time=to_datetime(now))
    verb = "Resumed" if resume else "Admitted"
    msg = f"{verb} to ClusterQueue {action.cluster_queue}"
    if isinstance(action, Resume):
        msg += f" from checkpoint {action.checkpoint}"
    if action.backfill:
        msg += " (backfill: vacated by checkpoint when a reservation comes due)"
    changes: dict[str, tuple[ConditionStatus, str, str]] = {
        "QuotaReserved": ("True", "QuotaReserved", msg), "Admitted": ("True", verb, msg),
        "Preempted": ("False", verb, ""), "Suspended": ("False", verb, "")}
    if checkpoints is not None:
        changes[MODE_CONDITION] = checkpoints
    patch = JobStatusPatch(
        phase="Restoring" if resume else "Admitted", admission=admission,
        attempt=int(job.status.get("attempt") or 0) + 1, run_start_time=None,
        pending_reason=None, message=msg, priority=priority, conditions=job_conditions(job.status, changes, now))
    return patch, verb, msg


def refused(job: JobRecord, reason: str, message: str, now: float) -> JobStatusPatch:
    """The status of a job whose placement its checkpoint mode cannot serve: it keeps waiting, saying why."""
    patch = JobStatusPatch(pending_reason=MODE_CONDITION, message=message,
                           conditions=job_conditions(job.status, {
                               MODE_CONDITION: ("True", reason, message),
                               "QuotaReserved": ("False", MODE_CONDITION, message)}, now))
    if job.status.get("phase") not in WAITING_PHASES:
        patch.phase = "Pending"
    return patch


def checkpointing_for(job: JobRecord, action: Preempt, checkpoint: str, now: float) -> JobStatusPatch:
    """The status of a victim being checkpointed out for `action.beneficiary`."""
    msg = f"preempted for {action.beneficiary} ({action.reason})"
    return JobStatusPatch(
        phase="Checkpointing", preemptions=int(job.status.get("preemptions") or 0) + 1,
        preempted_for=action.beneficiary, message=f"{msg}: checkpointing to {checkpoint}",
        conditions=job_conditions(job.status, {
            "Preempted": ("True", str(action.reason), msg),
            "Checkpointing": ("True", "Preemption", f"checkpoint {checkpoint}")}, now))


class Actuators:
    def __init__(self, cache: Cache, writer: StatusWriter, runs: Runs, checkpoints: Checkpoints,
                 waiting: Waiting) -> None:
        self.cache = cache
        self.writer = writer
        self.runs = runs
        self.checkpoints = checkpoints
        self.waiting = waiting
        self.admissions = 0

    async def act(self, action: Admit | Resume | Preempt | Checkpoint, now: float,
                  priorities: Mapping[str, int]) -> None:
        if isinstance(action, Admit | Resume):
            write = self.admit(action, now, priorities)
            if write is not None:
                await write
            return
        job = self.cache.jobs.get(action.victim if isinstance(action, Preempt) else action.job)
        if job is None:
            return
        if isinstance(action, Preempt):
            await self._preempt(job, action, now)
        else:
            await self.checkpoints.take(job, "Periodic", True, now)

    def admit(self, action: Admit | Resume, now: float,
              priorities: Mapping[str, int]) -> Coroutine[Any, Any, None] | None:
        """Decide the admission's status now and have the cache assume it (so the next cycle sees the
        quota taken); the write and the pods' creation that follow, to be awaited in the background or
        at once. None when there is nothing to write."""
        job = self.cache.jobs.get(action.job)
        if job is None:
            return None
        queued_since = parse_time(job.status.get("queuedTime")) or job.created
        # The admission check placed the job only where its checkpoint mode can be served; a placement
        # across node kinds that no one backend serves is refused here, before it takes any quota.
        placed = self.runs.backends.resolve(job, (n for p in action.placement for n in p.nodes))
        if not placed.available:
            if (job.status.get("pendingReason"), job.status.get("message")) == (MODE_CONDITION, placed.message):
                return None
            return self._refuse(job, refused(job, placed.reason, placed.message, now), placed.message, now)
        patch, verb, msg = admitted(job, action, now, priorities.get(job.key), placed.condition())
        body = merge_patch(patch)
        self.cache.assume(job.key, body)
        return self._write_admission(job, action, body, verb, msg, now, queued_since)

    async def _refuse(self, job: JobRecord, patch: JobStatusPatch, message: str, now: float) -> None:
        await self.writer.job(job, patch)
        self.writer.event(job, MODE_CONDITION, message, now, warning=True)

    async def _write_admission(self, job: JobRecord, action: Admit | Resume, body: Mapping[str, Any], verb: str,
                               msg: str, now: float, queued_since: float) -> None:
        updated = await self.writer.job(job, body)
        if updated is None:
            return
        self.admissions += 1
        metrics.ADMISSIONS.labels(action.cluster_queue).inc()
        metrics.TIME_TO_ADMISSION.labels(action.cluster_queue).observe(max(now - queued_since, 0.0))
        self.waiting.forget(job.key)
        self.writer.event(updated, verb, msg, now)
        await self.runs.start(updated, action.checkpoint if isinstance(action, Resume) else None, now)

    async def _preempt(self, job: JobRecord, action: Preempt, now: float) -> None:
        metrics.PREEMPTIONS.labels(str(action.mode), str(action.reason)).inc()
        msg = f"preempted for {action.beneficiary} ({action.reason})"
        if action.mode is PreemptMode.CHECKPOINT:
            ckpt = await self.checkpoints.take(job, "Preemption", False, now)
            if ckpt is None:
                return
            await self.writer.job(job, checkpointing_for(job, action, ckpt, now))
            self.writer.event(job, "Preempted", f"{msg}; checkpointing to {ckpt}", now)
            return
        await self.runs.requeue(job, now, f"{msg}: killed", cause="preemption",
                                counters=JobStatusPatch(preemptions=int(job.status.get("preemptions") or 0) + 1),
                                conditions={"Preempted": ("True", str(action.reason), msg)})
        self.writer.event(job, "Preempted", f"{msg}; killed and requeued", now, warning=True)

"""A run of a job: the pods of one admission, started fresh or restored from a checkpoint, stopped when
the job is checkpointed out, killed, suspended or fails; and the requeue that puts a stopped job back
in its queue.

Each admission is an attempt (`status.attempt`), and the attempt is in every pod name
(`wire.pod_name`), so creating a run's pods again after a restart is a harmless 409 and two runs never
collide. A requeued job keeps only the progress its newest completed checkpoint saved; the rest is
counted as lost (`status.lostRunTimeSeconds` and the `ckq_lost_run_time_seconds_total` metric).
"""

from __future__ import annotations

import asyncio

from queue_controller.api.common import ConditionStatus
from queue_controller.api.job import JobPhase
from queue_controller.checkpoint.base import RestoreSource
from queue_controller.operator import metrics
from queue_controller.operator.backends import JobBackends, artifacts
from queue_controller.operator.cache import Cache
from queue_controller.operator.kube import ApiError, Kube
from queue_controller.operator.pods import build_pod
from queue_controller.operator.records import JobRecord
from queue_controller.operator.snapshot import latest_completed_checkpoint
from queue_controller.operator.status import ConditionChanges, JobStatusPatch, StatusWriter, job_conditions
from queue_controller.wire import parse_time, to_datetime


def run_time_now(job: JobRecord, now: float) -> float:
    """The job's progress at `now`: what earlier runs kept plus the current run so far."""
    start = parse_time(job.status.get("runStartTime"))
    ran = max(now - start, 0.0) if start is not None and job.phase in ("Running", "Checkpointing") else 0.0
    return float(job.status.get("runTimeSeconds") or 0.0) + ran


def requeued(job: JobRecord, now: float, message: str, kept: float, *, phase: JobPhase = "Pending",
             counters: JobStatusPatch | None = None, conditions: ConditionChanges | None = None
             ) -> tuple[JobStatusPatch, float]:
    """The status of a job stopped and queued again at `now`, keeping `kept` seconds of progress; and the
    seconds of progress lost."""
    lost = max(run_time_now(job, now) - kept, 0.0)
    changes: dict[str, tuple[ConditionStatus, str, str]] = {
        "QuotaReserved": ("False", "Requeued", message), "Admitted": ("False", "Requeued", message),
        "Running": ("False", "Requeued", message), "Checkpointing": ("False", "Requeued", ""),
    }
    patch = JobStatusPatch(
        phase=phase, admission=None, run_start_time=None, run_time_seconds=kept, preempted_for=None,
        lost_run_time_seconds=float(job.status.get("lostRunTimeSeconds") or 0.0) + lost,
        queued_time=to_datetime(now), message=message + (f"; lost {lost:.0f}s of progress" if lost else ""),
        conditions=job_conditions(job.status, {**changes, **(conditions or {})}, now),
    )
    return (patch if counters is None else JobStatusPatch.merge(patch, counters)), lost


def template_rejected(job: JobRecord, message: str, now: float) -> JobStatusPatch:
    """The status of a job whose pods the API server refuses: it fails, and gives its quota back."""
    return JobStatusPatch(phase="Failed", admission=None, message=message, conditions=job_conditions(
        job.status, {"Finished": ("True", "PodTemplateRejected", message),
                     "QuotaReserved": ("False", "Failed", message)}, now))


class Runs:
    def __init__(self, cache: Cache, kube: Kube, writer: StatusWriter, backends: JobBackends) -> None:
        self.cache = cache
        self.kube = kube
        self.writer = writer
        self.backends = backends

    async def start(self, job: JobRecord, checkpoint: str | None, now: float) -> None:
        """Create the pods of the job's current admission that do not exist yet, restoring them from
        `checkpoint` when one is given."""
        attempt = int(job.status.get("attempt") or 0)
        existing = {p.name for p in self.cache.job_pods(job.key)}
        restore = None
        if checkpoint:
            rec = self.cache.checkpoints.get(f"{job.namespace}/{checkpoint}")
            restore = RestoreSource(checkpoint, artifacts(rec) if rec is not None else ())
        tasks = []
        for a in (job.status.get("admission") or {}).get("podSetAssignments") or ():
            flavor = self.cache.flavors.get(a.get("flavor") or "")
            for i, node in enumerate(a.get("nodes") or ()):
                info = self.backends.pod_info(job, a["name"], i, node, restore)
                pod = build_pod(job, a["name"], i, attempt, node, flavor, info)
                if pod["metadata"]["name"] not in existing:
                    tasks.append(self.kube.create(self.kube.core_path("pods", job.namespace), pod))
        invalid = None
        for result in await asyncio.gather(*tasks, return_exceptions=True):
            if isinstance(result, ApiError):
                self.writer.event(job, "PodCreationFailed", result.message, now, warning=True)
                if result.status in (400, 422):
                    invalid = result.message
            elif isinstance(result, BaseException):
                raise result
            elif result is not None and self.cache.fresh("pod", result):
                self.cache.upsert_pod(result)
        if invalid is not None:
            # The template itself is rejected: retrying cannot help, and holding quota would block others.
            await self.stop(job)
            msg = f"the API server rejects this job's pods: {invalid}"
            await self.writer.job(job, template_rejected(job, msg, now))
            self.writer.event(job, "Failed", msg, now, warning=True)

    async def stop(self, job: JobRecord, grace: int | None = 0) -> None:
        """Delete the job's pods (those not already terminating)."""
        paths = [self.kube.core_path("pods", p.namespace, p.name) for p in self.cache.job_pods(job.key)
                 if not p.terminating]
        await asyncio.gather(*(self.kube.delete(path, grace) for path in paths))

    async def requeue(self, job: JobRecord, now: float, message: str, cause: str, *, phase: JobPhase = "Pending",
                      counters: JobStatusPatch | None = None, conditions: ConditionChanges | None = None) -> None:
        """Stop the job's pods and put it back in the queue at its place, keeping only the progress its
        newest checkpoint saved (`cause` labels the lost run time)."""
        latest = latest_completed_checkpoint(self.cache, job.key)
        patch, lost = requeued(job, now, message, latest[2] if latest else 0.0, phase=phase, counters=counters,
                               conditions=conditions)
        if lost:
            metrics.LOST_RUNTIME.labels(cause).inc(lost)
        await self.stop(job)
        await self.writer.job(job, patch)

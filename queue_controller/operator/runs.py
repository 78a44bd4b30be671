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
from queue_controller.api.job import JobPhase, LastCheckpoint
from queue_controller.checkpoint.base import LaunchRefused, RestoreImpossible, RestoreSource
from queue_controller.operator import metrics
from queue_controller.operator.backends import JobBackends, artifacts
from queue_controller.operator.cache import Cache
from queue_controller.operator.kube import ApiError, Kube
from queue_controller.operator.pods import build_pod
from queue_controller.operator.records import JobRecord, PodRecord
from queue_controller.operator.snapshot import MODE_CONDITION, latest_completed_checkpoint
from queue_controller.operator.status import (
    CheckpointStatusPatch,
    ConditionChanges,
    JobStatusPatch,
    StatusWriter,
    job_conditions,
)
from queue_controller.wire import KWOK_NODE, POD_DONE_PHASES, parse_time, pod_name, to_datetime


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

    async def start(self, job: JobRecord, checkpoint: str | None, now: float) -> bool:
        """Create the pods of the job's current admission that do not exist yet, restoring them from
        `checkpoint` when one is given. False when the run cannot start: its backend refused the pods
        (the job waits again, with the CheckpointModeUnavailable condition), the checkpoint cannot be
        restored (the job falls back to the one before it), or the API server rejects the template (the
        job fails)."""
        attempt = int(job.status.get("attempt") or 0)
        existing = {p.name for p in self.cache.job_pods(job.key)}
        restore = None
        if checkpoint:
            # Only a Checkpoint of this job, in its namespace (the cache key), is ever restored from.
            rec = self.cache.checkpoints.get(f"{job.namespace}/{checkpoint}")
            if rec is not None and rec.job != job.name:
                await self.restore_failed(job, checkpoint, f"checkpoint {checkpoint} belongs to job {rec.job}, "
                                          f"not {job.name}: a job restores only its own checkpoints", now)
                return False
            restore = RestoreSource(checkpoint, artifacts(rec) if rec is not None else ())
        pods = []
        try:  # every pod of the gang is built before any is created: a refusal creates none
            for a in (job.status.get("admission") or {}).get("podSetAssignments") or ():
                flavor = self.cache.flavors.get(a.get("flavor") or "")
                for i, node in enumerate(a.get("nodes") or ()):
                    if pod_name(job.name, attempt, a["name"], i) in existing:
                        continue
                    info = self.backends.pod_info(job, a["name"], i, node, restore)
                    pods.append(build_pod(job, a["name"], i, attempt, node, flavor, info))
        except LaunchRefused as e:
            await self._refused(job, e.reason, e.message, now)
            return False
        except RestoreImpossible as e:
            assert checkpoint is not None
            await self.restore_failed(job, checkpoint, str(e), now)
            return False
        tasks = [self.kube.create(self.kube.core_path("pods", job.namespace), pod) for pod in pods]
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
            await self.stop(job, keep_finished=True)
            msg = f"the API server rejects this job's pods: {invalid}"
            await self.writer.job(job, template_rejected(job, msg, now))
            self.writer.event(job, "Failed", msg, now, warning=True)
            return False
        return True

    async def _refused(self, job: JobRecord, reason: str, message: str, now: float) -> None:
        """The job's backend cannot run its pods here: it gives its quota back and waits (the admission
        check refuses it from now on, or places it where it can run), saying why."""
        await self.stop(job)
        kept = float(job.status.get("runTimeSeconds") or 0.0)
        patch, _ = requeued(job, now, message, kept, conditions={
            MODE_CONDITION: ("True", reason, message), "QuotaReserved": ("False", MODE_CONDITION, message)})
        patch.pending_reason = MODE_CONDITION
        await self.writer.job(job, patch)
        self.writer.event(job, MODE_CONDITION, message, now, warning=True)

    async def restore_failed(self, job: JobRecord, checkpoint: str, why: str, now: float) -> None:
        """The checkpoint cannot be restored: it is failed (never picked again) and the job goes back to
        its queue, to resume from the checkpoint before it, or from the beginning; counted and said."""
        rec = self.cache.checkpoints.get(f"{job.namespace}/{checkpoint}")
        if rec is not None:
            await self.writer.checkpoint(rec, CheckpointStatusPatch(phase="Failed",
                                                                    message=f"cannot be restored: {why}"))
        latest = latest_completed_checkpoint(self.cache, job.key)
        where = f"falls back to checkpoint {latest[0]}" if latest else "falls back to a fresh start"
        last = LastCheckpoint(name=latest[0], time=to_datetime(latest[1])) if latest else None
        await self.requeue(job, now, f"{why}; {where}", cause="restore-failure",
                           counters=JobStatusPatch(last_checkpoint=last))
        self.writer.event(job, "RestoreFailed", f"{why}; {where}", now, warning=True)

    def _grace(self, job: JobRecord, pod: PodRecord, grace: int | None) -> int | None:
        """A pod's deletion grace: `grace` when given; none for a pod that has finished; the template's own
        terminationGracePeriodSeconds when it sets one (None: the API server applies it); else the
        cluster's deleteGraceSeconds. A pod on a kwok node runs no process: nothing to give grace to, and
        a pod left terminating there would hold its node's room for the whole period."""
        if grace is not None:
            return grace
        if pod.phase in POD_DONE_PHASES:
            return 0
        node = self.cache.nodes.get(pod.node) if pod.node else None
        if node is not None and node.kind == KWOK_NODE:
            return 0
        template = (job.templates.get(pod.pod_set) or {}).get("spec") or {}
        if template.get("terminationGracePeriodSeconds") is not None:
            return None
        return self.backends.settings.delete_grace_seconds

    def current_pods(self, job: JobRecord) -> tuple[dict[tuple[str, int], str], dict[tuple[str, int], PodRecord]]:
        """The pods the job's admission expects ((pod set, index) -> node) and those of its current
        attempt that exist."""
        attempt = int(job.status.get("attempt") or 0)
        expected = {(a["name"], i): node for a in (job.status.get("admission") or {}).get("podSetAssignments") or ()
                    for i, node in enumerate(a.get("nodes") or ())}
        pods = {(p.pod_set, p.index): p for p in self.cache.job_pods(job.key) if p.attempt == attempt}
        return expected, pods

    def all_succeeded(self, job: JobRecord) -> bool:
        """Every pod of the job's current run exists and succeeded: its work is done."""
        expected, pods = self.current_pods(job)
        return bool(expected) and len(pods) == len(expected) and all(p.phase == "Succeeded" for p in pods.values())

    async def stop(self, job: JobRecord, grace: int | None = None, *, keep_finished: bool = False) -> None:
        """Delete the job's pods (those not already terminating) with their grace period, so workloads and
        ckq-run get SIGTERM (`grace` 0: only when a dump has stopped them). `keep_finished`: leave the pods
        that have finished, as batch/v1 Job does, so their logs stay readable until the job is deleted."""
        pods = [p for p in self.cache.job_pods(job.key)
                if not p.terminating and not (keep_finished and p.phase in POD_DONE_PHASES)]
        await asyncio.gather(*(self.kube.delete(self.kube.core_path("pods", p.namespace, p.name),
                                                self._grace(job, p, grace)) for p in pods))

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

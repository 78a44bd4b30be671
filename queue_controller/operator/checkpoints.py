"""The Checkpoint object's lifecycle: created for a job (reason Preemption, Periodic or User), begun,
polled through the job's backend until it completes or fails, then applied to the job, and pruned.

A completed checkpoint that was to vacate the job (`leaveRunning: false`) stops its pods and suspends
it with the progress it saved; a periodic one (`leaveRunning: true`) only moves `lastCheckpoint`. A
failed one leaves a periodic checkpoint's job running, and otherwise follows the policy's
`onCheckpointFailure`: requeue the job from its previous checkpoint, or leave it running. A checkpoint
the controller gives up on — its job stopped running, a pod of the run died before the node agents
could freeze or dump it (nothing can cover it then), or its backend has no result once the policy's
`timeoutSeconds` have passed — is failed and cancelled through its backend.

The name of a Checkpoint is deterministic (`wire.checkpoint_name`, from the job's counters) and
everything a backend needs to go on is in the object (its spec and `status.startTime`), so a
controller restarted mid-checkpoint creates nothing twice and carries on.
"""

from __future__ import annotations

import logging
from typing import Any

from queue_controller.api import Checkpoint
from queue_controller.api.checkpoint import Artifact, CheckpointReason, CheckpointSpec, RestoreConstraints
from queue_controller.api.common import API_VERSION, ObjectMeta, OwnerReference
from queue_controller.api.job import CheckpointableJob, LastCheckpoint
from queue_controller.checkpoint.base import CheckpointResult
from queue_controller.checkpoint.injection import EXIT_CHECKPOINTED
from queue_controller.engine import Policy
from queue_controller.engine.policy import OnCheckpointFailure
from queue_controller.operator import metrics
from queue_controller.operator.backends import JobBackends, artifacts, observed
from queue_controller.operator.cache import Cache
from queue_controller.operator.failures import Intervals
from queue_controller.operator.kube import ApiError, Kube
from queue_controller.operator.records import CheckpointRecord, JobRecord, NodeRecord
from queue_controller.operator.runs import Runs, run_time_now
from queue_controller.operator.status import CheckpointStatusPatch, JobStatusPatch, StatusWriter, job_conditions
from queue_controller.wire import (
    ACTIVE_PHASES,
    ATTEMPT_LABEL,
    CHECKPOINT_RUNTIME_ANNOTATION,
    IN_FLIGHT_CHECKPOINT_PHASES,
    JOB_LABEL,
    checkpoint_name,
    parse_time,
    to_datetime,
)

log = logging.getLogger("ckq.controller")

# Node labels a restored process depends on: the same GPU product and CPU architecture.
RESTORE_LABELS = ("nvidia.com/gpu.product", "kubernetes.io/arch", "nvidia.com/cuda.driver.major")


def checkpoint_object(job: JobRecord, name: str, reason: CheckpointReason, leave_running: bool,
                      run_time_s: float) -> dict[str, Any]:
    """The Checkpoint to create for the job, owned by it (garbage-collected with it)."""
    owner = OwnerReference(api_version=API_VERSION, kind=CheckpointableJob.KIND, name=job.name, uid=job.uid,
                           controller=True, block_owner_deletion=True)
    labels = {JOB_LABEL: job.name, ATTEMPT_LABEL: str(int(job.status.get("attempt") or 0))}
    return Checkpoint(
        metadata=ObjectMeta(name=name, namespace=job.namespace, labels=labels,
                            annotations={CHECKPOINT_RUNTIME_ANNOTATION: f"{run_time_s:.3f}"},
                            owner_references=[owner]),
        spec=CheckpointSpec(job_name=job.name, reason=reason, leave_running=leave_running),
    ).to_wire()


def restore_constraints(job: JobRecord, nodes: dict[str, NodeRecord]) -> dict[str, str]:
    """The labels a node must carry to restore the job's checkpoint: those of the nodes it ran on."""
    labels: dict[str, str] = {}
    for a in (job.status.get("admission") or {}).get("podSetAssignments") or ():
        for node in a.get("nodes") or ():
            rec = nodes.get(node)
            if rec is None:
                continue
            for k in RESTORE_LABELS:
                if k in rec.labels:
                    labels[k] = rec.labels[k]
    return labels


def completed(result: CheckpointResult, now: float, constraints: dict[str, str]) -> CheckpointStatusPatch:
    return CheckpointStatusPatch(
        phase="Completed", completion_time=to_datetime(now), duration_seconds=round(result.duration_s, 3),
        size_bytes=result.size_bytes,
        artifacts=[Artifact(pod_set=a.pod_set, index=a.index, container=a.container, node=a.node, uri=a.uri,
                            sha256=a.sha256, size_bytes=a.size_bytes, encryption_key_id=a.encryption_key_id)
                   for a in result.artifacts],
        restore_constraints=RestoreConstraints(node_labels=constraints), message=result.message or "completed")


def job_checkpointed(job: JobRecord, ckpt: CheckpointRecord, result: CheckpointResult, now: float
                     ) -> tuple[JobStatusPatch, str]:
    """The job's status once `ckpt` completed, and the Event's message: still running with a newer
    `lastCheckpoint`, or (not `leaveRunning`) suspended with the progress the checkpoint kept."""
    last = LastCheckpoint(name=ckpt.name, time=to_datetime(now), size_bytes=result.size_bytes)
    count = int(job.status.get("checkpoints") or 0) + 1
    if ckpt.leave_running:
        patch = JobStatusPatch(last_checkpoint=last, checkpoints=count, conditions=job_conditions(
            job.status, {"Checkpointing": ("False", "Completed", f"checkpoint {ckpt.name} completed")}, now))
        return patch, (f"{ckpt.reason} checkpoint {ckpt.name} completed "
                       f"({result.size_bytes} bytes in {result.duration_s:.1f}s)")
    kept = ckpt.kept_run_time
    reason = "SuspendedByUser" if ckpt.reason == "User" else "Preempted"
    msg = f"checkpointed to {ckpt.name} and suspended; resumes from it"
    patch = JobStatusPatch(
        phase="Suspended", admission=None, run_start_time=None, run_time_seconds=kept, preempted_for=None,
        last_checkpoint=last, checkpoints=count, queued_time=to_datetime(now), message=msg,
        conditions=job_conditions(job.status, {
            "Suspended": ("True", reason, msg), "Checkpointing": ("False", "Completed", msg),
            "QuotaReserved": ("False", reason, msg), "Admitted": ("False", reason, msg),
            "Running": ("False", reason, msg)}, now))
    return patch, f"{msg} ({result.duration_s:.1f}s, {result.size_bytes} bytes)"


def needs_result(ckpt: CheckpointRecord) -> bool:
    """In flight, or failed by a node agent and not yet applied: the controller stamps `completionTime`
    when it applies a result, agents never do."""
    return ckpt.phase in IN_FLIGHT_CHECKPOINT_PHASES or (
        ckpt.phase == "Failed" and not ckpt.status.get("completionTime"))


def recorded(ckpt: CheckpointRecord) -> CheckpointResult:
    """The result a Checkpoint's status records (for one whose result was written but not applied)."""
    st = observed(ckpt)
    if st.phase == "Completed":
        return CheckpointResult(True, st.duration_seconds or 0.0, st.size_bytes or 0, artifacts(ckpt),
                                st.message or "")
    return CheckpointResult(False, st.duration_seconds or 0.0, message=st.message or "failed (no message)")


class Checkpoints:
    def __init__(self, cache: Cache, kube: Kube, writer: StatusWriter, backends: JobBackends, runs: Runs,
                 policy: Policy, intervals: Intervals | None = None) -> None:
        self.intervals = intervals
        self.cache = cache
        self.kube = kube
        self.writer = writer
        self.backends = backends
        self.runs = runs
        self.policy = policy

    def in_flight(self) -> bool:
        return any(needs_result(c) for c in self.cache.checkpoints.values())

    async def take(self, job: JobRecord, reason: CheckpointReason, leave_running: bool, now: float) -> str | None:
        """Create a Checkpoint of the job and begin it; its name, or None when the API refused it."""
        # Counters from status, not the number of objects (pruning deletes some): a restarted controller
        # computes the same name, so creating it again is a harmless 409.
        n = int(job.status.get("checkpoints") or 0) + int(job.status.get("checkpointFailures") or 0) + 1
        attempt = int(job.status.get("attempt") or 0)
        name = checkpoint_name(job.name, attempt, reason, n)
        # A controller stopped between finishing a checkpoint and counting it in the job's status finds
        # that one under the next name: it is done (and applied by `reconcile`), so the next number is
        # free. One in flight keeps its name: creating it again is a harmless 409.
        while (done := self.cache.checkpoints.get(f"{job.namespace}/{name}")) is not None and not needs_result(done):
            n += 1
            name = checkpoint_name(job.name, attempt, reason, n)
        body = checkpoint_object(job, name, reason, leave_running, run_time_now(job, now))
        try:
            created = await self.kube.create(self.kube.path(Checkpoint, job.namespace), body)
        except ApiError as e:
            self.writer.event(job, "CheckpointRefused", e.message, now, warning=True)
            return None
        if created is not None and self.cache.fresh("checkpoint", created):
            await self._begin(self.cache.upsert_checkpoint(created), job, now)
        return name

    async def _begin(self, ckpt: CheckpointRecord, job: JobRecord, now: float) -> None:
        # The progress it keeps: what the controller noted when it created it, or (a Checkpoint its user
        # created) the job's run time now, as the dump begins.
        kept = ckpt.kept_run_time if CHECKPOINT_RUNTIME_ANNOTATION in ckpt.annotations else run_time_now(job, now)
        try:
            # Only onto the version this controller saw: a node agent may have taken the Checkpoint on
            # (agents act on Pending ones too) and even failed it already, and an unconditional merge
            # patch would then write it back to Running — a checkpoint nobody is working on, which held
            # the job's next periodic checkpoint back until the timeout (e2e, store read-only, in CI).
            ckpt = await self.writer.checkpoint(ckpt, CheckpointStatusPatch(
                phase="Running", start_time=to_datetime(now), job_run_time_seconds=round(kept, 3)),
                resource_version=self.cache.version("checkpoint", ckpt.key))
        except ApiError as e:
            if e.status != 409:
                raise
            # Changed meanwhile: note the progress it keeps and nothing else (the phase and start time are
            # the agent's now); the watch brings the rest, and `reconcile` goes on from there.
            ckpt = await self.writer.checkpoint(ckpt, CheckpointStatusPatch(job_run_time_seconds=round(kept, 3)))
        await self.backends.for_job(job).begin(self.backends.request(ckpt, job, now), api=self.backends.api)

    async def reconcile(self, now: float) -> None:
        """Move every checkpoint in flight on: begin it, poll its backend, apply its result (or the
        failure a node agent reported); give up on one whose job stopped running or that outlived its
        timeout."""
        for ckpt in list(self.cache.checkpoints.values()):
            if not needs_result(ckpt):
                continue
            job = self.cache.jobs.get(ckpt.job_key)
            if job is None:
                if ckpt.phase in IN_FLIGHT_CHECKPOINT_PHASES and not ckpt.status.get("startTime"):
                    # Never begun and no such job (a user's typo; ours are garbage-collected with theirs).
                    await self._no_job(ckpt, now)
                continue
            if job.spec is None:
                continue
            if job.phase not in ACTIVE_PHASES or not job.status.get("admission"):
                # Its job was requeued or failed meanwhile: there is nothing left to checkpoint. The
                # backend is told first, so the reason written here is the one that stays.
                if ckpt.phase in IN_FLIGHT_CHECKPOINT_PHASES:
                    await self._cancel(ckpt, job, now)
                    await self.writer.checkpoint(ckpt, CheckpointStatusPatch(
                        phase="Failed", completion_time=to_datetime(now),
                        message=f"job is {job.phase}: nothing to checkpoint"))
                else:
                    await self.writer.checkpoint(ckpt, CheckpointStatusPatch(completion_time=to_datetime(now)))
                continue
            if not ckpt.leave_running and self.runs.all_succeeded(job):
                continue  # the job finished meanwhile: completion wins (the job lifecycle ends it)
            if ckpt.phase == "Failed":  # a node agent failed it
                await self._failed(ckpt, job, recorded(ckpt), now)
                continue
            dead = self._died_uncovered(ckpt, job)
            if dead is not None:
                await self._failed(ckpt, job, CheckpointResult(False, self._elapsed(ckpt, now), message=dead), now)
                continue
            if not ckpt.status.get("startTime"):
                await self._begin(ckpt, job, now)
                continue
            request = self.backends.request(ckpt, job, now)
            backend = self.backends.for_job(job)
            result = await backend.progress(request, now, api=self.backends.api)
            if result is None and now - request.started_at >= request.timeout_s:
                # A backend that enforces the timeout itself has reported it by now; this one has not.
                await self._cancel(ckpt, job, now)
                result = CheckpointResult(False, now - request.started_at,
                                          message=f"timed out after {request.timeout_s:.0f}s")
            if result is None:
                continue
            if result.ok:
                await self._completed(ckpt, job, result, now)
            else:
                await self._failed(ckpt, job, result, now)

    def _died_uncovered(self, ckpt: CheckpointRecord, job: JobRecord) -> str | None:
        """Why `ckpt` can never complete, when a pod of the job's run died before any of its containers
        was frozen or dumped for it; else None. The node agents act only on containers running under
        ckq-run, so such a pod (ckq-run killed, the container OOM-killed just before the freeze) would
        leave the checkpoint Running, and the job Checkpointing, until the policy's timeout. A pod that
        exits 75 (ckq-run stopped it after its dump) is the expected end of a vacating dump, and a
        container frozen or dumped already is the agents' to report on."""
        if not self.backends.for_job(job).dumps_pods:
            return None
        st = ckpt.status
        covered = {(m.get("podSet"), m.get("index"), m.get("container"))
                   for m in [*(st.get("frozen") or ()), *(st.get("artifacts") or ())]}
        for pod in self.runs.current_pods(job)[1].values():
            if pod.phase != "Failed" or pod.ckq_run_exit == EXIT_CHECKPOINTED:
                continue
            lost = [c for c in pod.containers if (pod.pod_set, pod.index, c) not in covered]
            if lost:
                code = f" (exit code {pod.exit_code})" if pod.exit_code is not None else ""
                return (f"pod {pod.name} failed{code} before container(s) {', '.join(lost)} could be frozen or "
                        "dumped: their processes are gone, so no node agent can checkpoint them")
        return None

    @staticmethod
    def _elapsed(ckpt: CheckpointRecord, now: float) -> float:
        started = parse_time(ckpt.status.get("startTime"))
        return max(now - started, 0.0) if started is not None else 0.0

    async def _no_job(self, ckpt: CheckpointRecord, now: float) -> None:
        msg = f"job {ckpt.job!r} does not exist in namespace {ckpt.namespace!r}: nothing to checkpoint"
        await self.writer.checkpoint(ckpt, CheckpointStatusPatch(phase="Failed", completion_time=to_datetime(now),
                                                                 message=msg))
        self.writer.checkpoint_event(ckpt, "JobNotFound", msg, now)

    async def catch_up(self, now: float) -> None:
        """Apply the completed leave-running checkpoints a job's status does not count yet: the controller
        stopped between writing a checkpoint's result and applying it to the job."""
        for ckpt in list(self.cache.checkpoints.values()):
            if not ckpt.leave_running or ckpt.phase != "Completed" or not ckpt.status.get("completionTime"):
                continue
            job = self.cache.jobs.get(ckpt.job_key)
            if job is None or job.spec is None or job.phase not in ACTIVE_PHASES:
                continue
            last = job.status.get("lastCheckpoint") or {}
            done = parse_time(ckpt.status.get("completionTime")) or 0.0
            if last.get("name") == ckpt.name or (parse_time(last.get("time")) or 0.0) >= done:
                continue
            await self._apply_completed(job, ckpt, recorded(ckpt), now)

    def vacating(self, job: JobRecord) -> bool:
        """A checkpoint that is to stop the job (not leaveRunning) is in flight."""
        return any(needs_result(c) and not c.leave_running for c in self.cache.job_checkpoints(job.key))

    async def resume_interrupted(self, job: JobRecord, now: float) -> None:
        """A job Checkpointing with no checkpoint left to wait for: the controller stopped between writing
        its checkpoint's result and applying it to the job (or the checkpoint was deleted). Apply it now."""
        mine = [c for c in self.cache.job_checkpoints(job.key) if not c.leave_running]
        if any(needs_result(c) for c in self.cache.job_checkpoints(job.key)):
            return
        last = max(mine, key=lambda c: (c.created, c.name), default=None)
        if last is None:
            await self._apply_failed(job, None, CheckpointResult(False, 0.0, message="its checkpoint is gone"), now)
        elif last.phase == "Completed":
            await self._apply_completed(job, last, recorded(last), now)
        else:
            await self._apply_failed(job, last, recorded(last), now)

    async def _cancel(self, ckpt: CheckpointRecord, job: JobRecord, now: float) -> None:
        """Tell the backend to give up on `ckpt` (best effort: the Checkpoint is failed either way)."""
        if not ckpt.status.get("startTime"):
            return  # never begun
        try:
            await self.backends.for_job(job).cancel(self.backends.request(ckpt, job, now), api=self.backends.api)
        except Exception as e:  # a backend that cannot clean up must not stop the loop
            log.warning("checkpoint %s: cancel failed: %s", ckpt.key, e)

    async def _completed(self, ckpt: CheckpointRecord, job: JobRecord, result: CheckpointResult, now: float) -> None:
        ckpt = await self.writer.checkpoint(ckpt, completed(result, now, restore_constraints(job, self.cache.nodes)))
        metrics.CHECKPOINT_DURATION.labels(ckpt.reason).observe(result.duration_s)
        metrics.CHECKPOINT_SIZE.labels(ckpt.reason).observe(result.size_bytes)
        await self._apply_completed(job, ckpt, result, now)

    async def _apply_completed(self, job: JobRecord, ckpt: CheckpointRecord, result: CheckpointResult,
                               now: float) -> None:
        patch, message = job_checkpointed(job, ckpt, result, now)
        if ckpt.leave_running and self.intervals is not None:
            # Its cost is measured now: the interval its next checkpoints follow may have moved.
            interval = self.intervals.of(job.key)
            if interval is not None:
                patch.checkpoint_interval = interval
        if ckpt.reason == "Preemption" and job.phase != "Checkpointing":
            # The controller stopped between creating the preemption's checkpoint and marking the job
            # Checkpointing (which counts the preemption): count it now.
            patch.preemptions = int(job.status.get("preemptions") or 0) + 1
        if not ckpt.leave_running:
            # Without a grace period only when the dump stopped the processes (ckq-run exited 75).
            await self.runs.stop(job, 0 if self.backends.for_job(job).stops_workload else None)
        await self.writer.job(job, patch)
        self.writer.event(job, "Checkpointed" if ckpt.leave_running else "Suspended", message, now)
        await self._prune(job)

    async def _failed(self, ckpt: CheckpointRecord, job: JobRecord, result: CheckpointResult, now: float) -> None:
        await self.writer.checkpoint(ckpt, CheckpointStatusPatch(
            phase="Failed", completion_time=to_datetime(now), duration_seconds=round(result.duration_s, 3),
            message=result.message or "failed"))
        metrics.CHECKPOINT_FAILURES.labels(ckpt.reason).inc()
        await self._apply_failed(job, ckpt, result, now)

    async def _apply_failed(self, job: JobRecord, ckpt: CheckpointRecord | None, result: CheckpointResult,
                            now: float) -> None:
        failures = int(job.status.get("checkpointFailures") or 0) + 1
        name = ckpt.name if ckpt is not None else "(gone)"
        msg = f"checkpoint {name} failed: {result.message}"
        self.writer.event(job, "CheckpointFailed", msg, now, warning=True)
        if ckpt is not None and ckpt.leave_running:
            await self.writer.job(job, JobStatusPatch(checkpoint_failures=failures, conditions=job_conditions(
                job.status, {"Checkpointing": ("False", "Failed", msg)}, now)))
            return
        reason = ckpt.reason if ckpt is not None else ("User" if job.spec is not None and job.spec.suspend else "")
        if self.policy.preemption.on_checkpoint_failure is OnCheckpointFailure.KEEP_RUNNING and reason != "User":
            await self.writer.job(job, JobStatusPatch(
                phase="Running", checkpoint_failures=failures, message=msg, conditions=job_conditions(
                    job.status, {"Checkpointing": ("False", "Failed", msg), "Preempted": ("False", "Failed", msg)},
                    now)))
            return
        await self.runs.requeue(job, now, msg + "; killed instead", cause="checkpoint-failure",
                                phase="Suspended" if reason == "User" else "Pending",
                                counters=JobStatusPatch(checkpoint_failures=failures))

    async def _prune(self, job: JobRecord) -> None:
        """Keep the newest `retain` completed checkpoints (and as many failed ones); delete the rest."""
        assert job.spec is not None
        retain = job.spec.checkpoint.retain
        for phase in ("Completed", "Failed"):
            done = [c for c in self.cache.job_checkpoints(job.key) if c.phase == phase]
            if phase == "Completed":
                done.sort(key=lambda c: (parse_time(c.status.get("completionTime")) or c.created, c.name))
            for old in done[:-retain] if len(done) > retain else []:
                await self.kube.delete(self.kube.path(Checkpoint, old.namespace, old.name))
                self.cache.delete_checkpoint(old.namespace, old.name)

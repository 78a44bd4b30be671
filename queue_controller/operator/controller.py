"""The scheduling loop and its actuators.

One loop: reconcile what is in flight (checkpoints, pods), take a snapshot of the cache, call
`engine.decide()`, and carry out the decisions. Handlers never decide; they only feed the cache and
kick the loop. Every step is idempotent and every durable fact lives in Kubernetes objects (job and
checkpoint status, annotations, deterministic pod and checkpoint names), so a restarted controller
rebuilds its cache and carries on without creating anything twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from queue_controller.api import Checkpoint as CheckpointObject
from queue_controller.api import CheckpointableJob, ClusterQueue, LocalQueue
from queue_controller.api.common import API_VERSION, KubeObject
from queue_controller.checkpoint.base import CheckpointBackend, CheckpointRequest, CheckpointResult, PodRef
from queue_controller.checkpoint.simulated import SIMULATED_RUNTIME_ANNOTATION
from queue_controller.engine import (
    Admit,
    Checkpoint,
    Decisions,
    Job,
    JobState,
    Policy,
    Preempt,
    PreemptMode,
    Resume,
    Snapshot,
    decide,
)
from queue_controller.engine.policy import OnCheckpointFailure
from queue_controller.operator import metrics
from queue_controller.operator.cache import Cache, CheckpointRecord, JobRecord
from queue_controller.operator.kube import ApiError, Kube
from queue_controller.operator.pods import build_pod
from queue_controller.operator.snapshot import Unqueued, build, latest_completed_checkpoint
from queue_controller.wire import (
    ACTIVE_PHASES,
    CHECKPOINT_RUNTIME_ANNOTATION,
    JOB_LABEL,
    checkpoint_name,
    format_time,
    parse_time,
)

log = logging.getLogger("ckq.controller")

# Node labels a restored process depends on: the same GPU product and CPU architecture.
RESTORE_LABELS = ("nvidia.com/gpu.product", "kubernetes.io/arch", "nvidia.com/cuda.driver.major")
POSITION_REFRESH_S = 10.0  # queue positions are rewritten at most this often per job


@dataclass(slots=True)
class _Published:
    reason: str
    message: str
    position: int | None
    at: float


class Controller:
    def __init__(self, cache: Cache, kube: Kube, policy: Policy, backends: Mapping[str, CheckpointBackend],
                 clock: Callable[[], float] = time.time) -> None:
        self.cache = cache
        self.kube = kube
        self.policy = policy
        self.backends = dict(backends)
        self.clock = clock
        self.kicked = asyncio.Event()
        self.next_wakeup: float | None = None
        self._published: dict[str, _Published] = {}
        self._queue_status: dict[str, Any] = {}
        self._priority: dict[str, int] = {}
        self.concurrency = 64
        self._background: set[asyncio.Task[None]] = set()
        # Called after every cycle; set by main to plan the APScheduler wake-up at `next_wakeup`. Without
        # it (tests driving cycles by hand) the loop falls back to a timeout of its own.
        self.on_cycle: Callable[[], None] | None = None
        self.cycles = 0
        self.last_cycle_at = 0.0
        self.admissions = 0

    # ---- plumbing ---------------------------------------------------------------------------------

    def kick(self) -> None:
        self.kicked.set()

    def backend_for(self, job: JobRecord) -> CheckpointBackend:
        mode = job.spec.checkpoint.mode if job.spec is not None else "Simulated"
        return self.backends.get(mode) or self.backends["Simulated"]

    def _pod_refs(self, job: JobRecord) -> list[PodRef]:
        assert job.spec is not None
        sets = {ps.name: ps for ps in job.spec.pod_sets}
        refs = []
        assignments = (job.status.get("admission") or {}).get("podSetAssignments") or []
        for a in assignments:
            ps = sets.get(a["name"])
            if ps is None:
                continue
            req = job.requests.get(ps.name) or {}
            containers = tuple(c.name for c in ps.template.spec.containers)
            for i, node in enumerate(a.get("nodes") or ()):
                refs.append(PodRef(f"{job.name}-{i}", ps.name, i, node, containers,
                                   req.get("memory", 0) // 1000, req.get("nvidia.com/gpu", 0) // 1000))
        return refs

    def estimate(self, job: JobRecord) -> tuple[float, float]:
        if job.spec is None:
            return 0.0, 0.0
        refs = self._pod_refs(job)
        if not refs:
            refs = [PodRef("", ps.name, 0, "", (), (job.requests.get(ps.name) or {}).get("memory", 0) // 1000)
                    for ps in job.spec.pod_sets]
        return self.backend_for(job).estimate(refs)

    async def run(self, debounce_s: float = 0.05) -> None:
        """Run cycles whenever something changed, or when a due date comes. Never returns."""
        while True:
            timeout = None
            if self.next_wakeup is not None and self.on_cycle is None:
                timeout = max(self.next_wakeup - self.clock(), 0.0)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.kicked.wait(), timeout)
            await asyncio.sleep(debounce_s)  # let a burst of events land in the cache first
            self.kicked.clear()
            try:
                await self.cycle()
            except Exception:  # one bad cycle must not stop the loop; the next one retries
                log.exception("scheduling cycle failed; retrying")
                await asyncio.sleep(1.0)
                self.kick()

    async def event(self, job: JobRecord, reason: str, message: str, warning: bool = False) -> None:
        """Record a Kubernetes Event in the background: it never delays a transition."""
        task = asyncio.create_task(self._post_event(job, reason, message, warning))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _post_event(self, job: JobRecord, reason: str, message: str, warning: bool) -> None:
        now = format_time(self.clock())
        body = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"generateName": f"{job.name}.", "namespace": job.namespace},
            "involvedObject": {"apiVersion": API_VERSION, "kind": "CheckpointableJob", "name": job.name,
                               "namespace": job.namespace, "uid": job.uid},
            "reason": reason, "message": message[:1000], "type": "Warning" if warning else "Normal",
            "firstTimestamp": now, "lastTimestamp": now, "count": 1,
            "source": {"component": "ckq-controller"}, "reportingComponent": "ckq-controller",
        }
        try:
            await self.kube.create(self.kube.core_path("events", job.namespace), body)
        except ApiError as e:  # events are best effort
            log.debug("event not recorded: %s", e)

    async def patch_job(self, job: JobRecord, status: Mapping[str, Any],
                        conditions: Mapping[str, tuple[str, str, str]] | None = None) -> JobRecord | None:
        """Merge `status` into the job's status (None deletes a field) and set conditions
        {type: (status, reason, message)}; feed the result back into the cache."""
        patch = dict(status)
        if conditions:
            patch["conditions"] = self._conditions(job.status.get("conditions") or [], conditions)
        try:
            body = await self.kube.patch_status(CheckpointableJob, job.namespace, job.name, patch)
        except ApiError as e:
            if e.status == 404:
                self.cache.delete_job(job.namespace, job.name)
                return None
            raise
        if self.cache.fresh("job", body):
            return self.cache.upsert_job(body)
        return self.cache.jobs.get(job.key)

    def _conditions(self, current: list[dict[str, Any]], changes: Mapping[str, tuple[str, str, str]]
                    ) -> list[dict[str, Any]]:
        now = format_time(self.clock())
        out = [dict(c) for c in current]
        for type_, (status, reason, message) in changes.items():
            existing = next((c for c in out if c.get("type") == type_), None)
            if existing is None:
                out.append({"type": type_, "status": status, "reason": reason, "message": message[:1000],
                            "lastTransitionTime": now})
            else:
                if existing.get("status") != status:
                    existing["lastTransitionTime"] = now
                existing.update(status=status, reason=reason, message=message[:1000])
        return out

    # ---- the cycle --------------------------------------------------------------------------------

    async def cycle(self) -> Decisions:
        started = time.perf_counter()
        now = self.clock()
        await self._reconcile_checkpoints(now)
        await self._reconcile_jobs(now)
        snap, unqueued = build(self.cache, self.estimate)
        self._priority = {j.key: j.priority for j in snap.jobs}
        decisions = decide(snap, now, self.policy)
        # Each decision concerns a different job, so they are carried out concurrently (bounded).
        await self._bounded([self._act(action, now) for action in decisions.actions])
        await self._publish_waiting(decisions, unqueued, now)
        await self._publish_queues(snap, now)
        self._plan_wakeup(decisions, now)
        self.cycles += 1
        self.last_cycle_at = now
        if self.on_cycle is not None:
            self.on_cycle()
        metrics.CYCLE_SECONDS.observe(time.perf_counter() - started)
        return decisions

    async def _act(self, action: Admit | Resume | Preempt | Checkpoint, now: float) -> None:
        job = self.cache.jobs.get(action.victim if isinstance(action, Preempt) else action.job)
        if job is None:
            return
        if isinstance(action, Admit | Resume):
            await self._admit(job, action, now)
        elif isinstance(action, Preempt):
            await self._preempt(job, action, now)
        else:
            await self._checkpoint(job, "Periodic", True, now)

    async def _bounded(self, coros: list[Any]) -> None:
        """Run API work concurrently, at most `concurrency` at a time; the first unexpected error is raised
        after all finished (an API error concerns one job and is already reported on it)."""
        if not coros:
            return
        sem = asyncio.Semaphore(self.concurrency)

        async def one(c: Any) -> None:
            async with sem:
                await c

        errors = [r for r in await asyncio.gather(*(one(c) for c in coros), return_exceptions=True)
                  if isinstance(r, BaseException)]
        for e in errors:
            if not isinstance(e, ApiError):
                raise e
            log.warning("API request failed: %s", e)

    def _plan_wakeup(self, decisions: Decisions, now: float) -> None:
        wake = decisions.next_wakeup
        inflight = [c for c in self.cache.checkpoints.values() if c.phase in ("Pending", "Running")]
        if inflight:
            # Backends are polled: soon, but not in a busy loop.
            wake = min(wake or now + 1.0, now + 1.0)
        self.next_wakeup = wake

    # ---- admission --------------------------------------------------------------------------------

    async def _admit(self, job: JobRecord, action: Admit | Resume, now: float) -> None:
        attempt = int(job.status.get("attempt") or 0) + 1
        resume = isinstance(action, Resume)
        admission = {
            "clusterQueue": action.cluster_queue,
            "podSetAssignments": [{"name": p.name, "flavor": p.flavor, "nodes": list(p.nodes), "count": len(p.nodes)}
                                  for p in action.placement],
            "backfill": action.backfill,
            "time": format_time(now),
        }
        verb = "Resumed" if resume else "Admitted"
        msg = f"{verb} to ClusterQueue {action.cluster_queue}" + (f" from checkpoint {action.checkpoint}"
                                                                  if resume else "")
        if action.backfill:
            msg += " (backfill: vacated by checkpoint when a reservation comes due)"
        queued_since = parse_time(job.status.get("queuedTime")) or job.created
        updated = await self.patch_job(job, {
            "phase": "Restoring" if resume else "Admitted", "admission": admission, "attempt": attempt,
            "runStartTime": None, "queuePosition": None, "pendingReason": None, "message": msg,
            "priority": self._priority.get(job.key),
        }, {"QuotaReserved": ("True", "QuotaReserved", msg), "Admitted": ("True", verb, msg),
            "Preempted": ("False", verb, ""), "Suspended": ("False", verb, "")})
        if updated is None:
            return
        self.admissions += 1
        metrics.ADMISSIONS.labels(action.cluster_queue).inc()
        metrics.TIME_TO_ADMISSION.labels(action.cluster_queue).observe(max(now - queued_since, 0.0))
        self._published.pop(job.key, None)
        await self._create_pods(updated, action.checkpoint if resume else None)
        await self.event(updated, verb, msg)

    def _remaining(self, job: JobRecord) -> float | None:
        needed = job.annotations.get(SIMULATED_RUNTIME_ANNOTATION)
        if needed is None:
            return None
        try:
            total = float(needed)
        except ValueError:
            return None
        return max(total - float(job.status.get("runTimeSeconds") or 0.0), 1.0)

    async def _create_pods(self, job: JobRecord, checkpoint: str | None) -> None:
        attempt = int(job.status.get("attempt") or 0)
        existing = {p.name for p in self.cache.job_pods(job.key)}
        backend = self.backend_for(job)
        remaining = self._remaining(job)
        adm = job.status.get("admission") or {}
        tasks = []
        for a in adm.get("podSetAssignments") or ():
            flavor = self.cache.flavors.get(a.get("flavor") or "")
            for i, node in enumerate(a.get("nodes") or ()):
                restore = None
                if checkpoint:
                    restore = backend.restore_info(job.namespace, job.name, checkpoint, a["name"], i)
                pod = build_pod(job, a["name"], i, attempt, node, flavor, restore, remaining)
                if pod["metadata"]["name"] not in existing:
                    tasks.append(self.kube.create(self.kube.core_path("pods", job.namespace), pod))
        invalid = None
        for result in await asyncio.gather(*tasks, return_exceptions=True):
            if isinstance(result, ApiError):
                await self.event(job, "PodCreationFailed", result.message, warning=True)
                if result.status in (400, 422):
                    invalid = result.message
            elif isinstance(result, BaseException):
                raise result
            elif result is not None and self.cache.fresh("pod", result):
                self.cache.upsert_pod(result)
        if invalid is not None:
            # The template itself is rejected: retrying cannot help, and holding quota would block others.
            await self._delete_pods(job)
            msg = f"the API server rejects this job's pods: {invalid}"
            await self.patch_job(job, {"phase": "Failed", "admission": None, "message": msg},
                                 {"Finished": ("True", "PodTemplateRejected", msg),
                                  "QuotaReserved": ("False", "Failed", msg)})
            await self.event(job, "Failed", msg, warning=True)

    async def _delete_pods(self, job: JobRecord, grace: int | None = 0) -> None:
        paths = [self.kube.core_path("pods", p.namespace, p.name) for p in self.cache.job_pods(job.key)
                 if not p.terminating]
        await asyncio.gather(*(self.kube.delete(path, grace) for path in paths))

    # ---- preemption and checkpoints ---------------------------------------------------------------

    async def _preempt(self, job: JobRecord, action: Preempt, now: float) -> None:
        metrics.PREEMPTIONS.labels(str(action.mode), str(action.reason)).inc()
        preemptions = int(job.status.get("preemptions") or 0) + 1
        msg = f"preempted for {action.beneficiary} ({action.reason})"
        if action.mode is PreemptMode.CHECKPOINT:
            ckpt = await self._checkpoint(job, "Preemption", False, now)
            if ckpt is None:
                return
            await self.patch_job(job, {"phase": "Checkpointing", "preemptions": preemptions,
                                       "preemptedFor": action.beneficiary,
                                       "message": f"{msg}: checkpointing to {ckpt}"},
                                 {"Preempted": ("True", str(action.reason), msg),
                                  "Checkpointing": ("True", "Preemption", f"checkpoint {ckpt}")})
            await self.event(job, "Preempted", f"{msg}; checkpointing to {ckpt}")
            return
        await self._requeue(job, now, f"{msg}: killed", cause="preemption", counters={"preemptions": preemptions},
                            conditions={"Preempted": ("True", str(action.reason), msg)})
        await self.event(job, "Preempted", f"{msg}; killed and requeued", warning=True)

    def _run_time_now(self, job: JobRecord, now: float) -> float:
        start = parse_time(job.status.get("runStartTime"))
        ran = max(now - start, 0.0) if start is not None and job.phase in ("Running", "Checkpointing") else 0.0
        return float(job.status.get("runTimeSeconds") or 0.0) + ran

    async def _requeue(self, job: JobRecord, now: float, message: str, cause: str,
                       counters: Mapping[str, int] | None = None,
                       conditions: Mapping[str, tuple[str, str, str]] | None = None, phase: str = "Pending") -> None:
        """Stop the job's pods and put it back in the queue at its place, keeping only the progress its
        newest checkpoint saved."""
        latest = latest_completed_checkpoint(self.cache, job.key)
        kept = latest[2] if latest else 0.0
        progressed = self._run_time_now(job, now)
        lost = max(progressed - kept, 0.0)
        if lost:
            metrics.LOST_RUNTIME.labels(cause).inc(lost)
        await self._delete_pods(job)
        status: dict[str, Any] = {
            "phase": phase, "admission": None, "runStartTime": None, "runTimeSeconds": kept, "preemptedFor": None,
            "lostRunTimeSeconds": float(job.status.get("lostRunTimeSeconds") or 0.0) + lost,
            "queuedTime": format_time(now), "message": message + (f"; lost {lost:.0f}s of progress" if lost else ""),
        }
        status.update(counters or {})
        conds = {"QuotaReserved": ("False", "Requeued", message), "Admitted": ("False", "Requeued", message),
                 "Running": ("False", "Requeued", message), "Checkpointing": ("False", "Requeued", "")}
        conds.update(conditions or {})
        await self.patch_job(job, status, conds)

    async def _checkpoint(self, job: JobRecord, reason: str, leave_running: bool, now: float) -> str | None:
        """Create a Checkpoint object for the job (deterministic name: creating it twice is harmless)."""
        # Counters from status, not the number of objects (pruning deletes some): a restarted controller
        # computes the same name, so creating it again is a harmless 409.
        n = int(job.status.get("checkpoints") or 0) + int(job.status.get("checkpointFailures") or 0) + 1
        attempt = int(job.status.get("attempt") or 0)
        name = checkpoint_name(job.name, attempt, reason, n)
        body = {
            "apiVersion": API_VERSION, "kind": "Checkpoint",
            "metadata": {
                "name": name, "namespace": job.namespace,
                "labels": {JOB_LABEL: job.name},
                "annotations": {CHECKPOINT_RUNTIME_ANNOTATION: f"{self._run_time_now(job, now):.3f}"},
                "ownerReferences": [{"apiVersion": API_VERSION, "kind": "CheckpointableJob", "name": job.name,
                                     "uid": job.uid, "controller": True, "blockOwnerDeletion": True}],
            },
            "spec": {"jobName": job.name, "reason": reason, "leaveRunning": leave_running},
        }
        try:
            created = await self.kube.create(self.kube.path(CheckpointObject, job.namespace), body)
        except ApiError as e:
            await self.event(job, "CheckpointRefused", e.message, warning=True)
            return None
        if created is not None and self.cache.fresh("checkpoint", created):
            rec = self.cache.upsert_checkpoint(created)
            await self._begin(rec, job, now)
        return name

    def _request(self, ckpt: CheckpointRecord, job: JobRecord) -> CheckpointRequest:
        assert job.spec is not None
        start = parse_time(ckpt.status.get("startTime")) or self.clock()
        return CheckpointRequest(job.namespace, job.name, ckpt.name, ckpt.reason, ckpt.leave_running,
                                 tuple(self._pod_refs(job)), start, float(job.spec.checkpoint.timeout_seconds))

    async def _patch_checkpoint(self, ckpt: CheckpointRecord, status: Mapping[str, Any]) -> CheckpointRecord:
        body = await self.kube.patch_status(CheckpointObject, ckpt.namespace, ckpt.name, status)
        if self.cache.fresh("checkpoint", body):
            return self.cache.upsert_checkpoint(body)
        return self.cache.checkpoints.get(ckpt.key, ckpt)

    async def _begin(self, ckpt: CheckpointRecord, job: JobRecord, now: float) -> None:
        ckpt = await self._patch_checkpoint(ckpt, {"phase": "Running", "startTime": format_time(now)})
        await self.backend_for(job).begin(self._request(ckpt, job))

    async def _reconcile_checkpoints(self, now: float) -> None:
        for ckpt in list(self.cache.checkpoints.values()):
            if ckpt.phase not in ("Pending", "Running"):
                continue
            job = self.cache.jobs.get(ckpt.job_key)
            if job is None or job.spec is None:
                continue
            if job.phase not in ACTIVE_PHASES or not job.status.get("admission"):
                await self._patch_checkpoint(ckpt, {"phase": "Failed", "completionTime": format_time(now),
                                                    "message": f"job is {job.phase}: nothing to checkpoint"})
                continue
            if not ckpt.status.get("startTime"):
                await self._begin(ckpt, job, now)
                continue
            request = self._request(ckpt, job)
            result = await self.backend_for(job).progress(request, now)
            if result is None:
                continue
            if result.ok:
                await self._checkpoint_done(ckpt, job, result, now)
            else:
                await self._checkpoint_failed(ckpt, job, result, now)

    def _restore_constraints(self, job: JobRecord) -> dict[str, str]:
        labels: dict[str, str] = {}
        for a in (job.status.get("admission") or {}).get("podSetAssignments") or ():
            for node in a.get("nodes") or ():
                rec = self.cache.nodes.get(node)
                if rec is None:
                    continue
                for k in RESTORE_LABELS:
                    if k in rec.labels:
                        labels[k] = rec.labels[k]
        return labels

    async def _checkpoint_done(self, ckpt: CheckpointRecord, job: JobRecord, result: CheckpointResult,
                               now: float) -> None:
        await self._patch_checkpoint(ckpt, {
            "phase": "Completed", "completionTime": format_time(now), "durationSeconds": round(result.duration_s, 3),
            "sizeBytes": result.size_bytes,
            "artifacts": [{"podSet": a.pod_set, "index": a.index, "container": a.container, "node": a.node,
                           "uri": a.uri, "sha256": a.sha256, "sizeBytes": a.size_bytes} for a in result.artifacts],
            "restoreConstraints": {"nodeLabels": self._restore_constraints(job)},
            "message": result.message or "completed",
        })
        metrics.CHECKPOINT_DURATION.labels(ckpt.reason).observe(result.duration_s)
        metrics.CHECKPOINT_SIZE.labels(ckpt.reason).observe(result.size_bytes)
        last = {"name": ckpt.name, "time": format_time(now), "sizeBytes": result.size_bytes}
        count = int(job.status.get("checkpoints") or 0) + 1
        if ckpt.leave_running:
            await self.patch_job(job, {"lastCheckpoint": last, "checkpoints": count},
                                 {"Checkpointing": ("False", "Completed", f"checkpoint {ckpt.name} completed")})
            await self.event(job, "Checkpointed", f"{ckpt.reason} checkpoint {ckpt.name} completed "
                             f"({result.size_bytes} bytes in {result.duration_s:.1f}s)")
        else:
            kept = float(ckpt.annotations.get(CHECKPOINT_RUNTIME_ANNOTATION, "0") or 0)
            await self._delete_pods(job)
            reason = "SuspendedByUser" if ckpt.reason == "User" else "Preempted"
            msg = f"checkpointed to {ckpt.name} and suspended; resumes from it"
            await self.patch_job(job, {
                "phase": "Suspended", "admission": None, "runStartTime": None, "runTimeSeconds": kept,
                "preemptedFor": None,
                "lastCheckpoint": last, "checkpoints": count, "queuedTime": format_time(now), "message": msg,
            }, {"Suspended": ("True", reason, msg), "Checkpointing": ("False", "Completed", msg),
                "QuotaReserved": ("False", reason, msg), "Admitted": ("False", reason, msg),
                "Running": ("False", reason, msg)})
            await self.event(job, "Suspended", f"{msg} ({result.duration_s:.1f}s, {result.size_bytes} bytes)")
        await self._prune(job)

    async def _prune(self, job: JobRecord) -> None:
        assert job.spec is not None
        retain = job.spec.checkpoint.retain
        done = [c for c in self.cache.job_checkpoints(job.key) if c.phase == "Completed"]
        done.sort(key=lambda c: (parse_time(c.status.get("completionTime")) or c.created, c.name))
        for old in done[:-retain] if len(done) > retain else []:
            await self.kube.delete(self.kube.path(CheckpointObject, old.namespace, old.name))
            self.cache.delete_checkpoint(old.namespace, old.name)
        failed = [c for c in self.cache.job_checkpoints(job.key) if c.phase == "Failed"]
        for old in failed[:-retain] if len(failed) > retain else []:
            await self.kube.delete(self.kube.path(CheckpointObject, old.namespace, old.name))
            self.cache.delete_checkpoint(old.namespace, old.name)

    async def _checkpoint_failed(self, ckpt: CheckpointRecord, job: JobRecord, result: CheckpointResult,
                                 now: float) -> None:
        await self._patch_checkpoint(ckpt, {"phase": "Failed", "completionTime": format_time(now),
                                            "durationSeconds": round(result.duration_s, 3),
                                            "message": result.message or "failed"})
        metrics.CHECKPOINT_FAILURES.labels(ckpt.reason).inc()
        failures = int(job.status.get("checkpointFailures") or 0) + 1
        msg = f"checkpoint {ckpt.name} failed: {result.message}"
        await self.event(job, "CheckpointFailed", msg, warning=True)
        if ckpt.leave_running:
            await self.patch_job(job, {"checkpointFailures": failures},
                                 {"Checkpointing": ("False", "Failed", msg)})
            return
        if self.policy.preemption.on_checkpoint_failure is OnCheckpointFailure.KEEP_RUNNING and ckpt.reason != "User":
            await self.patch_job(job, {"phase": "Running", "checkpointFailures": failures, "message": msg},
                                 {"Checkpointing": ("False", "Failed", msg), "Preempted": ("False", "Failed", msg)})
            return
        phase = "Suspended" if ckpt.reason == "User" else "Pending"
        await self._requeue(job, now, msg + "; killed instead", cause="checkpoint-failure", phase=phase,
                            counters={"checkpointFailures": failures})

    # ---- jobs: pods, failures, completion, user suspend -------------------------------------------

    async def _reconcile_jobs(self, now: float) -> None:
        for job in list(self.cache.jobs.values()):
            if job.spec is None:
                continue
            phase = job.phase
            if phase in ("Succeeded", "Failed"):
                continue
            if phase not in ACTIVE_PHASES:
                if job.spec.suspend and phase != "Suspended":
                    await self.patch_job(job, {"phase": "Suspended", "message": "suspended by its user",
                                               "queuePosition": None, "pendingReason": None},
                                         {"Suspended": ("True", "SuspendedByUser", "spec.suspend is true")})
                    self._published.pop(job.key, None)
                continue
            if not job.status.get("admission"):
                continue
            await self._reconcile_active(job, now)

    async def _reconcile_active(self, job: JobRecord, now: float) -> None:
        assert job.spec is not None
        attempt = int(job.status.get("attempt") or 0)
        adm = job.status["admission"]
        expected = {(a["name"], i): node for a in adm.get("podSetAssignments") or ()
                    for i, node in enumerate(a.get("nodes") or ())}
        pods = {(p.pod_set, p.index): p for p in self.cache.job_pods(job.key) if p.attempt == attempt}
        phase = job.phase
        # Node failure: a node the job runs on is gone or NotReady.
        lost_nodes = sorted({n for n in expected.values()
                             if n not in self.cache.nodes or not self.cache.nodes[n].ready})
        failed = [p for p in pods.values() if p.phase == "Failed"]
        if phase != "Checkpointing" and (lost_nodes or failed):
            why = (f"node {', '.join(lost_nodes)} is NotReady or gone" if lost_nodes
                   else f"pod {failed[0].name} failed")
            await self._fail_run(job, now, why)
            return
        if phase == "Checkpointing":
            return
        if job.spec.suspend:
            if job.spec.checkpoint.mode != "None":
                name = await self._checkpoint(job, "User", False, now)
                if name is not None:
                    await self.patch_job(job, {"phase": "Checkpointing", "message": f"suspending: checkpoint {name}"},
                                         {"Checkpointing": ("True", "User", f"checkpoint {name}")})
            else:
                await self._requeue(job, now, "suspended by its user (not checkpointable: stopped)", cause="suspend",
                                    phase="Suspended",
                                    conditions={"Suspended": ("True", "SuspendedByUser", "spec.suspend is true")})
            return
        missing = [k for k in expected if k not in pods]
        if missing and phase in ("Admitted", "Restoring"):
            # Pods not created yet (or a restart between the status write and the pods): create them.
            ckpt = (job.status.get("lastCheckpoint") or {}).get("name") if phase == "Restoring" else None
            await self._create_pods(job, ckpt)
            return
        if pods and len(pods) == len(expected):
            if all(p.phase == "Succeeded" for p in pods.values()):
                start = parse_time(job.status.get("runStartTime")) or now
                # The run ended when the last pod finished, not when this cycle noticed it.
                finished = [p.finish_time for p in pods.values()]
                end = max(f for f in finished if f is not None) if any(finished) else now
                total = float(job.status.get("runTimeSeconds") or 0.0) + max(min(end, now) - start, 0.0)
                msg = "all pods succeeded"
                await self.patch_job(job, {"phase": "Succeeded", "runTimeSeconds": round(total, 3),
                                           "runStartTime": None, "message": msg, "completionTime": format_time(now)},
                                     {"Finished": ("True", "Succeeded", msg), "Running": ("False", "Succeeded", msg),
                                      "QuotaReserved": ("False", "Finished", msg)})
                await self.event(job, "Succeeded", f"{msg} after {total:.0f}s of run time")
                return
            if phase in ("Admitted", "Restoring") and all(p.phase in ("Running", "Succeeded") for p in pods.values()):
                starts = [p.start_time for p in pods.values() if p.start_time is not None]
                start = max(starts) if starts else now
                msg = "restored from checkpoint and running" if phase == "Restoring" else "all pods running"
                await self.patch_job(job, {"phase": "Running", "runStartTime": format_time(start), "message": msg},
                                     {"Running": ("True", "PodsRunning", msg)})

    async def _fail_run(self, job: JobRecord, now: float, why: str) -> None:
        assert job.spec is not None
        restarts = int(job.status.get("restarts") or 0) + 1
        if restarts > job.spec.max_restarts:
            await self._delete_pods(job)
            msg = f"{why}; restarts exhausted ({job.spec.max_restarts})"
            await self.patch_job(job, {"phase": "Failed", "restarts": restarts, "admission": None,
                                       "runStartTime": None, "message": msg},
                                 {"Finished": ("True", "Failed", msg), "Running": ("False", "Failed", msg),
                                  "QuotaReserved": ("False", "Failed", msg)})
            await self.event(job, "Failed", msg, warning=True)
            return
        latest = latest_completed_checkpoint(self.cache, job.key)
        where = f"restarts from checkpoint {latest[0]}" if latest else "restarts from the beginning"
        await self._requeue(job, now, f"{why}; {where}", cause="failure", counters={"restarts": restarts})
        await self.event(job, "Restarting", f"{why}; {where}", warning=True)

    # ---- status of waiting jobs and queues --------------------------------------------------------

    async def _publish_waiting(self, d: Decisions, unqueued: Unqueued, now: float) -> None:
        items: list[tuple[str, str, str, int | None]] = [
            (w.job, str(w.reason), w.message, w.position) for w in d.waiting.values()
        ] + [(key, reason, message, None) for key, (reason, message) in unqueued.reasons.items()]
        writes = []
        for key, reason, message, position in items:
            job = self.cache.jobs.get(key)
            if job is None:
                continue
            last = self._published.get(key)
            same = (job.status.get("pendingReason") == reason and job.status.get("queuePosition") == position
                    and job.status.get("phase") in ("Suspended", "Pending"))
            if last is None and same:
                self._published[key] = _Published(reason, message, position, now)
                continue
            if last is not None and last.reason == reason and last.message == message and (
                    last.position == position or now - last.at < POSITION_REFRESH_S):
                continue
            self._published[key] = _Published(reason, message, position, now)
            status: dict[str, Any] = {"pendingReason": reason, "queuePosition": position, "message": message}
            if key in self._priority:
                status["priority"] = self._priority[key]
            if job.status.get("phase") not in ("Suspended", "Pending"):
                status["phase"] = "Pending"
            if "queuedTime" not in job.status:
                status["queuedTime"] = format_time(job.created)
            writes.append(self.patch_job(job, status, {"QuotaReserved": ("False", reason, message)}))
        await self._bounded(writes)

    async def _publish_queues(self, snap: Snapshot, now: float) -> None:
        """Counts and usage on every ClusterQueue and LocalQueue (written only when they change)."""
        by_cq = _tally(snap.jobs, lambda j: j.cluster_queue)

        def local_queue(j: Job) -> str | None:
            rec = self.cache.jobs.get(j.key)
            return f"{rec.namespace}/{rec.spec.queue_name}" if rec is not None and rec.spec is not None else None

        by_lq = _tally(snap.jobs, local_queue)
        for name in self.cache.cluster_queues:
            tally = by_cq.get(name, _Tally())
            for state, n in tally.counts.items():
                metrics.JOBS.labels(name, state).set(n)
            for (flavor, res), q in tally.usage.items():
                metrics.QUOTA_USAGE.labels(name, flavor, res).set(q / 1000)
            await self._write_queue_status(ClusterQueue, None, name, tally.status())
        for key, lq in self.cache.local_queues.items():
            await self._write_queue_status(LocalQueue, lq.namespace, lq.name,
                                          by_lq.get(key, _Tally()).status())

    async def _write_queue_status(self, kind: type[KubeObject], namespace: str | None, name: str,
                                  status: dict[str, Any]) -> None:
        key = f"{kind.PLURAL}/{namespace or ''}/{name}"
        if self._queue_status.get(key) == status:
            return
        try:
            await self.kube.patch_status(kind, namespace, name, status)
            self._queue_status[key] = status
        except ApiError as e:
            log.warning("%s %s status not written: %s", kind.KIND, name, e)


@dataclass(slots=True)
class _Tally:
    counts: dict[str, int] = field(default_factory=lambda: {"pending": 0, "admitted": 0, "suspended": 0})
    usage: dict[tuple[str, str], int] = field(default_factory=dict)  # (flavor, resource) -> milli

    def status(self) -> dict[str, Any]:
        flavors: dict[str, list[dict[str, Any]]] = {}
        for (flavor, res), q in sorted(self.usage.items()):
            flavors.setdefault(flavor, []).append({"name": res, "total": _fmt(res, q)})
        return {"pendingWorkloads": self.counts["pending"], "admittedWorkloads": self.counts["admitted"],
                "suspendedWorkloads": self.counts["suspended"],
                "flavorsUsage": [{"name": f, "resources": rs} for f, rs in flavors.items()]}


def _tally(jobs: Iterable[Job], key: Callable[[Job], str | None]) -> dict[str, _Tally]:
    """Jobs per state and quota in use, grouped by `key` (a queue name)."""
    out: dict[str, _Tally] = {}
    for j in jobs:
        k = key(j)
        if k is None:
            continue
        t = out.setdefault(k, _Tally())
        if j.state is JobState.ADMITTED:
            t.counts["admitted"] += 1
            reqs = {ps.name: ps.requests for ps in j.pod_sets}
            for pl in j.placement:
                for r, q in reqs.get(pl.name, {}).items():
                    t.usage[(pl.flavor, r)] = t.usage.get((pl.flavor, r), 0) + q * len(pl.nodes)
        elif j.checkpoint:
            t.counts["suspended"] += 1
        else:
            t.counts["pending"] += 1
    return out


def _fmt(resource: str, milli: int) -> str:
    from queue_controller.api.quantity import format_milli

    return format_milli(milli, "BinarySI" if resource == "memory" else "DecimalSI")

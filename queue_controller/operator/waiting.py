"""Waiting and queue status: why each waiting job waits and where it stands, and what each queue holds.

Every waiting job carries the engine's reason (`pendingReason`), its `queuePosition` and a message; a
job the engine never sees (its LocalQueue or PriorityClass is missing, its spec is invalid, its
namespace is not admitted) carries the reason it is not queued. Positions move with every admission,
so a job's status is rewritten only when its reason or message changes, or when its position changed
and at least POSITION_REFRESH_S passed since its last write. ClusterQueues and LocalQueues carry their
counts and the quota in use, written only when they change.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from queue_controller.api.common import ConditionStatus
from queue_controller.api.quantity import format_milli
from queue_controller.api.queues import FlavorUsage, QueueStatus, ResourceUsage
from queue_controller.engine import Decisions, Job, JobState, Snapshot
from queue_controller.operator import metrics
from queue_controller.operator.cache import Cache
from queue_controller.operator.records import JobRecord
from queue_controller.operator.snapshot import MODE_CONDITION, Unqueued
from queue_controller.operator.status import (
    ClusterQueueStatusPatch,
    JobStatusPatch,
    LocalQueueStatusPatch,
    StatusWriter,
    job_conditions,
)
from queue_controller.wire import WAITING_PHASES, to_datetime

Q = TypeVar("Q", bound=QueueStatus)
POSITION_REFRESH_S = 10.0  # queue positions are rewritten at most this often per job


@dataclass(slots=True)
class _Published:
    reason: str
    message: str
    position: int | None
    at: float


def mode_condition(job: JobRecord, refused: str | None, message: str) -> tuple[ConditionStatus, str, str] | None:
    """The CheckpointModeUnavailable condition of a waiting job: True with `refused` as its reason while
    its checkpoint mode cannot be served; back to False once it is queued again; else unchanged (None)."""
    if refused is not None:
        return "True", refused, message
    current = next((c for c in job.status.get("conditions") or () if c.get("type") == MODE_CONDITION), None)
    if current is not None and current.get("status") == "True":
        mode = job.spec.checkpoint.mode if job.spec is not None else ""
        return "False", "Available", f"checkpoint mode {mode} can be served now"
    return None


def waiting(job: JobRecord, reason: str, message: str, position: int | None, priority: int | None,
            now: float, refused: str | None = None) -> JobStatusPatch:
    """The status of a job that waits for `reason`, at `position` in its queue (None: not queued);
    `refused`: the reason its checkpoint mode cannot be served (the CheckpointModeUnavailable condition)."""
    changes: dict[str, tuple[ConditionStatus, str, str]] = {"QuotaReserved": ("False", reason, message)}
    mode = mode_condition(job, refused, message)
    if mode is not None:
        changes[MODE_CONDITION] = mode
    patch = JobStatusPatch(pending_reason=reason, queue_position=position, message=message,
                           conditions=job_conditions(job.status, changes, now))
    if priority is not None:
        patch.priority = priority
    if job.status.get("phase") not in WAITING_PHASES:
        patch.phase = "Pending"
    if "queuedTime" not in job.status:
        patch.queued_time = to_datetime(job.created)
    return patch


class Waiting:
    def __init__(self, cache: Cache, writer: StatusWriter) -> None:
        self.cache = cache
        self.writer = writer
        self._published: dict[str, _Published] = {}

    def forget(self, key: str) -> None:
        """The job left the queue (admitted, suspended): its next wait is written afresh."""
        self._published.pop(key, None)

    async def publish(self, decisions: Decisions, unqueued: Unqueued, now: float,
                      priorities: Mapping[str, int]) -> None:
        """Write the status of every waiting job whose reason, message or position moved."""
        items: list[tuple[str, str, str, int | None]] = [
            (w.job, str(w.reason), w.message, w.position) for w in decisions.waiting.values()
        ] + [(key, reason, message, None) for key, (reason, message) in unqueued.reasons.items()]
        refused = unqueued.refused
        writes = []
        for key, reason, message, position in items:
            job = self.cache.jobs.get(key)
            if job is None:
                continue
            last = self._published.get(key)
            same = (job.status.get("pendingReason") == reason and job.status.get("queuePosition") == position
                    and job.status.get("message") == message and job.status.get("phase") in WAITING_PHASES)
            if last is None and same:
                self._published[key] = _Published(reason, message, position, now)
                continue
            if last is not None and last.reason == reason and last.message == message and (
                    last.position == position or now - last.at < POSITION_REFRESH_S):
                continue
            self._published[key] = _Published(reason, message, position, now)
            writes.append(self.writer.job(job, waiting(job, reason, message, position, priorities.get(key), now,
                                                       refused.get(key))))
            if key in refused:
                self.writer.event(job, MODE_CONDITION, message, now, warning=True)
        await self.writer.bounded(writes)

    def _checkpoint_bytes(self) -> dict[str, int]:
        """Bytes kept per job: the sizes of its Completed Checkpoints (retention deletes the others)."""
        out: dict[str, int] = {}
        for c in self.cache.checkpoints.values():
            if c.status.get("phase") == "Completed":
                key = f"{c.namespace}/{c.job}"
                out[key] = out.get(key, 0) + int(c.status.get("sizeBytes") or 0)
        return out

    async def publish_queues(self, snap: Snapshot) -> None:
        """Counts and usage on every ClusterQueue and LocalQueue (written only when they change)."""
        stored = self._checkpoint_bytes()
        by_cq = _tally(snap.jobs, lambda j: j.cluster_queue, stored)

        def local_queue(j: Job) -> str | None:
            rec = self.cache.jobs.get(j.key)
            return f"{rec.namespace}/{rec.spec.queue_name}" if rec is not None and rec.spec is not None else None

        by_lq = _tally(snap.jobs, local_queue, stored)
        for name in self.cache.cluster_queues:
            tally = by_cq.get(name, _Tally())
            for state, n in tally.counts.items():
                metrics.JOBS.labels(name, state).set(n)
            metrics.CHECKPOINT_BYTES.labels(name).set(tally.checkpoint_bytes)
            for (flavor, res), q in tally.usage.items():
                metrics.QUOTA_USAGE.labels(name, flavor, res).set(q / 1000)
            await self.writer.queue(None, name, tally.status(ClusterQueueStatusPatch))
        for key, lq in self.cache.local_queues.items():
            await self.writer.queue(lq.namespace, lq.name, by_lq.get(key, _Tally()).status(LocalQueueStatusPatch))


@dataclass(slots=True)
class _Tally:
    counts: dict[str, int] = field(default_factory=lambda: {"pending": 0, "admitted": 0, "suspended": 0})
    usage: dict[tuple[str, str], int] = field(default_factory=dict)  # (flavor, resource) -> milli
    checkpoint_bytes: int = 0

    def status(self, kind: type[Q]) -> Q:
        """The queue status: counts, and usage per flavor and resource."""
        flavors: dict[str, list[ResourceUsage]] = {}
        for (flavor, res), q in sorted(self.usage.items()):
            flavors.setdefault(flavor, []).append(ResourceUsage(name=res, total=_fmt(res, q)))
        return kind(pending_workloads=self.counts["pending"], admitted_workloads=self.counts["admitted"],
                    suspended_workloads=self.counts["suspended"], checkpoint_bytes=self.checkpoint_bytes,
                    flavors_usage=[FlavorUsage(name=f, resources=rs) for f, rs in flavors.items()])


def _tally(jobs: Iterable[Job], key: Callable[[Job], str | None],
           stored: Mapping[str, int] | None = None) -> dict[str, _Tally]:
    """Jobs per state, quota in use and checkpoint bytes kept, grouped by `key` (a queue name)."""
    out: dict[str, _Tally] = {}
    for j in jobs:
        k = key(j)
        if k is None:
            continue
        t = out.setdefault(k, _Tally())
        t.checkpoint_bytes += (stored or {}).get(j.key, 0)
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
    return format_milli(milli, "BinarySI" if resource == "memory" else "DecimalSI")

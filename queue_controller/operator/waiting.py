"""Waiting and queue status: why each waiting job waits, and what each queue holds.

A queue controller with thousands of jobs waiting must not write each of them every cycle: a cycle that
admits one job moves every position behind it, and rewriting them made the API writes per job grow
with the backlog (O(pending) per cycle). So a waiting job's status is written when something its user
acts on changes, and not its position:

- when it starts waiting (phase `Pending`, `queuedTime`, the `QuotaReserved=False` condition and the
  engine's reason);
- when its reason changes. Reasons of contention (quota, capacity, a reservation, a preemption under
  way, StrictFIFO, backfill) move with every admission around the job; a change among them is written at
  most every REASON_REFRESH_S, only for a job at the head of its ClusterQueue (the first
  MAX_PENDING_HEAD, the jobs whose reason is about to matter), and a change of their message alone (e.g.
  a reserved start moving) not at all. Deeper in the queue the contention reason first written stays
  until the job nears the head: refreshing every waiting job every REASON_REFRESH_S made the writes per
  job grow with the wait again (O(pending) per interval; seen at 15,000 jobs, issue 13), and the live
  reason of any job is served on demand (`ckq pending`). A reason that asks the user to act (a missing
  queue, an invalid spec, a job that can never fit, a checkpoint mode no backend serves) is written at
  once, message included.

At most WRITES_PER_CYCLE such writes go out per cycle, reasons to act on first and then in queue order,
so that thousands of jobs created at once do not hold the cycle (and every admission) behind their first
status writes; the rest follow in the cycles after, which come at once while any are left.

Positions and the ordered pending list are served on demand, as Kueue's visibility API serves them:
`ckq pending CQ` orders the queue's waiting jobs the engine's way when asked, and each ClusterQueue and
LocalQueue carries a bounded head of its queue (the first MAX_PENDING_HEAD jobs with their position and
the engine's current reason, message included) in `status.pendingJobs`.

Queues are tallied (counts, usage, the head) at most every QUEUE_STATUS_INTERVAL_S, and their status
written only when it changed: O(queues) writes, not O(jobs), and the O(jobs) tally not every cycle; a
cycle that saw a change in between plans the one that catches up. Usage counts the jobs the cycle
admitted, so a queue of jobs shorter than a cycle does not read empty. The metrics are set with the
status; a series whose usage went away is set to 0, and a deleted ClusterQueue's series go.
"""

from __future__ import annotations

import contextlib
from collections.abc import Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from prometheus_client import Gauge

from queue_controller.api.common import ConditionStatus
from queue_controller.api.quantity import format_milli
from queue_controller.api.queues import (
    MAX_PENDING_HEAD,
    FairSharingStatus,
    FlavorUsage,
    PendingJob,
    QueueStatus,
    ResourceUsage,
)
from queue_controller.engine import Admit, Decisions, Job, JobState, PendingReason, PodSetPlacement, Resume, Snapshot
from queue_controller.engine.ordering import dominant_share, weighted_share
from queue_controller.engine.quota import QuotaLedger
from queue_controller.operator import metrics
from queue_controller.operator.cache import Cache
from queue_controller.operator.records import JobRecord, QueueRecord
from queue_controller.operator.snapshot import MODE_CONDITION, Unqueued
from queue_controller.operator.status import (
    ClusterQueueStatusPatch,
    ConditionChanges,
    JobStatusPatch,
    LocalQueueStatusPatch,
    StatusWriter,
    conditions_after,
    job_conditions,
)
from queue_controller.wire import WAITING_PHASES, to_datetime

Q = TypeVar("Q", bound=QueueStatus)
REASON_REFRESH_S = 30.0  # a change between contention reasons is written at most this often per job
WRITES_PER_CYCLE = 128  # waiting jobs' status writes per cycle; the rest go to the cycles after (soon)
BEHIND_RETRY_S = 0.2  # how soon the next cycle comes when waiting jobs' writes are left over
# Each queue's status is written (and the O(jobs) tally made) at most this often. Its cost is O(queues)
# writes per interval whatever the load, so per job it is queues x wall / (interval x jobs): at 2 s, 60
# queues busy for 27 minutes cost 0.64 writes per job at 15,000 jobs (issue 13). Counts and usage 5 s old
# are fresh enough for `kubectl get clusterqueue` and for a Prometheus scrape (15-30 s).
QUEUE_STATUS_INTERVAL_S = 5.0
# Reasons that move with every admission around a job: nothing for its user to act on.
CONTENTION = frozenset(str(r) for r in (
    PendingReason.QUOTA, PendingReason.CAPACITY, PendingReason.STRICT_FIFO, PendingReason.WAITING_FOR_PREEMPTION,
    PendingReason.RESERVATION, PendingReason.BACKFILL_BLOCKED))


@dataclass(slots=True)
class _Published:
    reason: str
    message: str
    at: float


def needs_write(stored_reason: str | None, stored_message: str | None, last: _Published | None,
                reason: str, message: str, now: float, position: int = 1) -> bool:
    """Whether a waiting job's status must be written: its reason (or, for a reason its user acts on,
    its message) differs from what is stored, and for a change between contention reasons, the job is
    at the head of its ClusterQueue (`position` ≤ MAX_PENDING_HEAD) and at least REASON_REFRESH_S passed
    since this controller last wrote it."""
    if stored_reason == reason and (reason in CONTENTION or stored_message == message):
        return False
    if reason not in CONTENTION or stored_reason not in CONTENTION:
        return True  # a new wait, or a reason to act on (or one that ended): at once
    if last is None:
        return position <= MAX_PENDING_HEAD  # written by an earlier controller: refresh at the head only
    return position <= MAX_PENDING_HEAD and now - last.at >= REASON_REFRESH_S


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


def queue_active(rec: QueueRecord) -> ConditionChanges:
    """Kueue's `Active` condition of a ClusterQueue: False with reason InvalidSpec (naming the fields) for
    a spec the API server stored but our model refuses (its jobs then wait), so that the queue's admin
    sees why in `kubectl describe`, not only its users in their jobs' status."""
    if rec.spec is None:
        return {"Active": ("False", "InvalidSpec", rec.spec_error)}
    return {"Active": ("True", "Ready", "Can admit jobs")}


def waiting(job: JobRecord, reason: str, message: str, priority: int | None, now: float,
            refused: str | None = None) -> JobStatusPatch:
    """The status of a job that waits for `reason`; `refused`: the reason its checkpoint mode cannot be
    served (the CheckpointModeUnavailable condition)."""
    changes: dict[str, tuple[ConditionStatus, str, str]] = {"QuotaReserved": ("False", reason, message)}
    mode = mode_condition(job, refused, message)
    if mode is not None:
        changes[MODE_CONDITION] = mode
    patch = JobStatusPatch(pending_reason=reason, message=message,
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
        self._queues_at = -float("inf")  # when the queues were last tallied
        self._queues_generation = -1  # the cache's generation then
        self._usage_series: dict[str, set[tuple[str, str]]] = {}  # ClusterQueue -> (flavor, resource) set
        self.due: float | None = None  # when the queues' tally held back by the rate limit is due
        self.behind = False  # waiting jobs' writes were left for the next cycle (WRITES_PER_CYCLE)

    def forget(self, key: str) -> None:
        """The job left the queue (admitted, suspended): its next wait is written afresh."""
        self._published.pop(key, None)

    async def publish(self, decisions: Decisions, unqueued: Unqueued, now: float,
                      priorities: Mapping[str, int]) -> None:
        """Write the status of every waiting job whose wait changed in a way its user acts on."""
        # Reasons its user must act on first, then the engine's, in queue order (heads first).
        items: list[tuple[str, str, str, int]] = [
            (key, reason, message, 1) for key, (reason, message) in unqueued.reasons.items()
        ] + [(w.job, str(w.reason), w.message, w.position) for w in decisions.waiting.values()]
        refused = unqueued.refused
        writes: list[Coroutine[Any, Any, JobRecord | None]] = []
        self.behind = False
        for key, reason, message, position in items:
            job = self.cache.jobs.get(key)
            if job is None:
                continue
            status = job.status
            if status.get("phase") in WAITING_PHASES and not needs_write(
                    status.get("pendingReason"), status.get("message"), self._published.get(key), reason, message,
                    now, position):
                continue
            if len(writes) >= WRITES_PER_CYCLE:
                # A burst of new jobs (thousands created at once) must not hold the cycle, and so every
                # admission, behind their first status writes: the rest are written by the next cycles.
                self.behind = True
                break
            self._published[key] = _Published(reason, message, now)
            writes.append(self.writer.job(job, waiting(job, reason, message, priorities.get(key), now,
                                                       refused.get(key))))
            if key in refused:
                self.writer.event(job, MODE_CONDITION, message, now, warning=True)
        await self.writer.bounded(writes)
        if len(self._published) > 2 * len(self.cache.jobs) + 64:  # jobs deleted while waiting
            self._published = {k: v for k, v in self._published.items() if k in self.cache.jobs}

    def _checkpoint_bytes(self) -> dict[str, int]:
        """Bytes kept per job: the sizes of its Completed Checkpoints (retention deletes the others)."""
        out: dict[str, int] = {}
        for c in self.cache.checkpoints.values():
            if c.status.get("phase") == "Completed":
                key = f"{c.namespace}/{c.job}"
                out[key] = out.get(key, 0) + int(c.status.get("sizeBytes") or 0)
        return out

    def _local_queue(self, key: str) -> str | None:
        rec = self.cache.jobs.get(key)
        return f"{rec.namespace}/{rec.spec.queue_name}" if rec is not None and rec.spec is not None else None

    async def publish_queues(self, snap: Snapshot, decisions: Decisions | None = None, now: float = 0.0,
                             priorities: Mapping[str, int] | None = None, fair_sharing: bool = False) -> None:
        """Counts, usage and the head of every ClusterQueue and LocalQueue: metrics every cycle; status
        when it changed, at most every QUEUE_STATUS_INTERVAL_S per queue. `decisions`: this cycle's, whose
        admissions count as quota in use already (their jobs may finish before the next cycle).

        Tallying every job is O(jobs), so it runs at most every QUEUE_STATUS_INTERVAL_S; a cycle in
        between that saw a change plans the cycle that catches up."""
        if now - self._queues_at < QUEUE_STATUS_INTERVAL_S:
            if self.cache.generation != self._queues_generation:
                self.due = self._queues_at + QUEUE_STATUS_INTERVAL_S
            return
        self._queues_at, self._queues_generation = now, self.cache.generation
        stored = self._checkpoint_bytes()
        admitted = {a.job: a.placement for a in (decisions.actions if decisions is not None else ())
                    if isinstance(a, Admit | Resume)}
        local_queue = {j.key: self._local_queue(j.key) for j in snap.jobs}
        by_cq, by_lq = _tally(snap.jobs, local_queue, stored, admitted)
        heads_cq, heads_lq = self._heads(decisions, priorities or {}, local_queue)
        shares = _weighted_shares(snap, by_cq) if fair_sharing else {}
        # Copies: the writes below yield to the event loop, where watch events change the cache.
        for name in list(self.cache.cluster_queues):
            tally = by_cq.get(name, _Tally())
            self._metrics(name, tally)
            patch = tally.status(ClusterQueueStatusPatch)
            patch.pending_jobs = heads_cq.get(name, [])
            if name in shares:
                patch.fair_sharing = FairSharingStatus(weighted_share=shares[name])
            if (rec := self.cache.cluster_queues.get(name)) is not None:
                patch.conditions = conditions_after(rec.status.get("conditions") or (), queue_active(rec), now)
            await self._write_queue(None, name, patch, now)
        for gone in set(self._usage_series) - set(self.cache.cluster_queues):
            self._forget_metrics(gone)
        for key, lq in list(self.cache.local_queues.items()):
            patch_lq = by_lq.get(key, _Tally()).status(LocalQueueStatusPatch)
            patch_lq.pending_jobs = heads_lq.get(key, [])
            await self._write_queue(lq.namespace, lq.name, patch_lq, now)

    def _heads(self, decisions: Decisions | None, priorities: Mapping[str, int], local_queue: Mapping[str, str | None]
               ) -> tuple[dict[str, list[PendingJob]], dict[str, list[PendingJob]]]:
        """The first MAX_PENDING_HEAD waiting jobs of each ClusterQueue and LocalQueue, in queue order
        (the engine lists its waiting jobs in queue order: positions rise within each ClusterQueue)."""
        by_cq: dict[str, list[PendingJob]] = {}
        by_lq: dict[str, list[PendingJob]] = {}
        lq_count: dict[str, int] = {}
        if decisions is None:
            return by_cq, by_lq
        for w in decisions.waiting.values():
            lq = local_queue.get(w.job)
            if lq is None:
                continue
            lq_count[lq] = lq_pos = lq_count.get(lq, 0) + 1
            lq_head = by_lq.setdefault(lq, [])
            cq = self.cache.local_queues[lq].cluster_queue if lq in self.cache.local_queues else None
            cq_head = by_cq.setdefault(cq, []) if cq is not None else []
            if len(cq_head) >= MAX_PENDING_HEAD and len(lq_head) >= MAX_PENDING_HEAD:
                continue
            rec = self.cache.jobs[w.job]
            entry = PendingJob(namespace=rec.namespace, name=rec.name, priority=priorities.get(w.job, 0),
                               position=w.position, local_queue_position=lq_pos, reason=str(w.reason),
                               message=w.message[:1024])
            for head in (cq_head, lq_head):
                if len(head) < MAX_PENDING_HEAD:
                    head.append(entry)
        return by_cq, by_lq

    async def _write_queue(self, namespace: str | None, name: str,
                           patch: ClusterQueueStatusPatch | LocalQueueStatusPatch, now: float) -> None:
        await self.writer.queue(namespace, name, patch)  # only when it changed

    def take_due(self, now: float) -> float | None:
        """When the next cycle must run to write what was held back: a queue status (rate limit) or
        waiting jobs' statuses (the budget per cycle). None: nothing is."""
        due, self.due = self.due, None
        if self.behind:
            due = min(due, now + BEHIND_RETRY_S) if due is not None else now + BEHIND_RETRY_S
        return None if due is None else max(due, now)

    def _metrics(self, name: str, tally: _Tally) -> None:
        for state, n in tally.counts.items():
            metrics.JOBS.labels(name, state).set(n)
        metrics.CHECKPOINT_BYTES.labels(name).set(tally.checkpoint_bytes)
        series = self._usage_series.setdefault(name, set())
        for flavor, res in series - set(tally.usage):
            metrics.QUOTA_USAGE.labels(name, flavor, res).set(0)  # the queue gave this back
        for (flavor, res), q in tally.usage.items():
            metrics.QUOTA_USAGE.labels(name, flavor, res).set(q / 1000)
        series.update(tally.usage)

    def _forget_metrics(self, name: str) -> None:
        """A deleted ClusterQueue's series go away with it."""
        for flavor, res in self._usage_series.pop(name, set()):
            metrics.QUOTA_USAGE.remove(name, flavor, res)
        for state in ("pending", "admitted", "suspended"):
            _remove(metrics.JOBS, name, state)
        _remove(metrics.CHECKPOINT_BYTES, name)


def _remove(gauge: Gauge, *labels: str) -> None:
    with contextlib.suppress(KeyError):  # never set
        gauge.remove(*labels)


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


def _tally(jobs: Iterable[Job], local_queue: Mapping[str, str | None], stored: Mapping[str, int],
           admitted: Mapping[str, Sequence[PodSetPlacement]]) -> tuple[dict[str, _Tally], dict[str, _Tally]]:
    """Jobs per state, quota in use and checkpoint bytes kept, per ClusterQueue and per LocalQueue (one
    pass); `admitted`: jobs this cycle admitted, with their placements (the snapshot was taken before)."""
    by_cq: dict[str, _Tally] = {}
    by_lq: dict[str, _Tally] = {}
    for j in jobs:
        lq = local_queue.get(j.key)
        tallies = [by_cq.get(j.cluster_queue) or by_cq.setdefault(j.cluster_queue, _Tally())]
        if lq is not None:
            tallies.append(by_lq.get(lq) or by_lq.setdefault(lq, _Tally()))
        kept = stored.get(j.key, 0)
        placement = admitted.get(j.key)
        if j.state is JobState.ADMITTED or placement is not None:
            state = "admitted"
            reqs = {ps.name: ps.requests for ps in j.pod_sets}
            use: dict[tuple[str, str], int] = {}
            for pl in (j.placement if placement is None else placement):
                for r, q in reqs.get(pl.name, {}).items():
                    use[(pl.flavor, r)] = use.get((pl.flavor, r), 0) + q * len(pl.nodes)
        else:
            state = "suspended" if j.checkpoint else "pending"
            use = {}
        for t in tallies:
            t.counts[state] += 1
            t.checkpoint_bytes += kept
            for k, q in use.items():
                t.usage[k] = t.usage.get(k, 0) + q
    return by_cq, by_lq


def _weighted_shares(snap: Snapshot, by_cq: Mapping[str, _Tally]) -> dict[str, int]:
    """Fair sharing: each cohort member's weighted share (Kueue's `status.fairSharing.weightedShare`),
    from the quota its jobs use (the engine's `dominant_share`)."""
    ledger = QuotaLedger(snap.cluster_queues)
    out: dict[str, int] = {}
    for cq in snap.cluster_queues:
        if cq.cohort is not None:
            usage = by_cq[cq.name].usage if cq.name in by_cq else {}
            covered = {fr: q for fr, q in usage.items() if ledger.covers(cq.name, *fr)}
            out[cq.name] = weighted_share(dominant_share(ledger, cq.name, covered))
    return out


def _fmt(resource: str, milli: int) -> str:
    return format_milli(milli, "BinarySI" if resource == "memory" else "DecimalSI")

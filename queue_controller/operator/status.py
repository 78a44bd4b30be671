"""The status writer: status as the API models define it, written as one merge patch per transition;
conditions; Events; and the bound on concurrent API work.

Every status the controller writes is built from the pydantic status models, so a misspelt field or a
wrong value fails where it is written (and in the tests) instead of being pruned by the API server
without a word. A patch model is the status model that forbids unknown fields; only the fields set on
it are sent, and a field set to None is deleted (JSON merge patch), which is how a transition clears
`admission` or `runStartTime`.

Conditions go through `api.common.set_condition`: `lastTransitionTime` moves only when a condition's
status changes.

Each transition computes its patch purely, from the job's record and the cycle's `now`, and the writer
sends it once (as kopf collects a handler's patch and applies it once), then feeds the response into
the cache, so the next transition in the same cycle sees it. Events are posted in the background: they
never delay a transition, and losing one loses nothing durable.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Coroutine, Mapping, Sequence
from typing import Any

from pydantic import ConfigDict

from queue_controller.api import Checkpoint, CheckpointableJob, ClusterQueue, LocalQueue
from queue_controller.api.checkpoint import CheckpointStatus
from queue_controller.api.common import API_VERSION, ApiModel, Condition, ConditionStatus, set_condition
from queue_controller.api.job import CheckpointableJobStatus
from queue_controller.api.queues import ClusterQueueStatus, LocalQueueStatus
from queue_controller.operator.cache import Cache
from queue_controller.operator.kube import ApiError, Kube
from queue_controller.operator.records import CheckpointRecord, JobRecord
from queue_controller.wire import format_time, to_datetime

log = logging.getLogger("ckq.controller")

# {condition type: (status, reason, message)}
ConditionChanges = Mapping[str, tuple[ConditionStatus, str, str]]
CONDITION_MESSAGE_MAX = 1000  # conditions carry a summary; the full text is in status.message and Events
EVENT_POSTERS = 8  # Events posted at once; the rest wait in a queue (a few bytes each), not as requests


class JobStatusPatch(CheckpointableJobStatus):
    """A merge patch of a CheckpointableJob's status."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @classmethod
    def merge(cls, *patches: JobStatusPatch) -> JobStatusPatch:
        """One patch with the fields set on each, later ones winning."""
        fields: dict[str, Any] = {}
        for p in patches:
            fields.update({name: getattr(p, name) for name in p.model_fields_set})
        return cls.model_validate(fields)


class CheckpointStatusPatch(CheckpointStatus):
    """A merge patch of a Checkpoint's status."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ClusterQueueStatusPatch(ClusterQueueStatus):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class LocalQueueStatusPatch(LocalQueueStatus):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def merge_patch(status: ApiModel) -> dict[str, Any]:
    """The JSON merge patch of exactly the fields set on `status`, camelCase: a top-level None deletes
    the field; nested objects carry no nulls (they would delete fields the controller never wrote)."""
    data = status.model_dump(mode="json", by_alias=True, exclude_unset=True)
    return {k: None if v is None else _without_nulls(v) for k, v in data.items()}


def _without_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


def conditions_after(current: Sequence[Mapping[str, Any]], changes: ConditionChanges, now: float) -> list[Condition]:
    """The conditions `current` (as stored) with `changes` applied at `now`."""
    out = [Condition.model_validate(c) for c in current]
    at = to_datetime(now)
    for type_, (status, reason, message) in changes.items():
        set_condition(out, type_, status, reason, message[:CONDITION_MESSAGE_MAX], at)
    return out


def job_conditions(status: Mapping[str, Any], changes: ConditionChanges, now: float) -> list[Condition]:
    """A job's conditions (from its stored `status`) after `changes` at `now`."""
    return conditions_after(status.get("conditions") or (), changes, now)


class StatusWriter:
    """Sends status patches and Events, and bounds how much API work runs at once."""

    def __init__(self, cache: Cache, kube: Kube, concurrency: int = 64) -> None:
        self.cache = cache
        self.kube = kube
        self.concurrency = concurrency
        self._queue_status: dict[str, dict[str, Any]] = {}  # what each queue's status was last written as
        self._background: set[asyncio.Task[None]] = set()  # the Event posters
        self._events: deque[tuple[str, str, str, str, str, str, float, bool]] = deque()

    async def job(self, job: JobRecord, patch: JobStatusPatch | Mapping[str, Any]) -> JobRecord | None:
        """Write `patch` (a model, or its merge patch) to the job's status; the job as the cache now has it,
        or None when it is gone. A status the cache assumed for the job (`Cache.assume`) ends here, as the
        write returns or fails."""
        try:
            body = await self.kube.patch_status(CheckpointableJob, job.namespace, job.name,
                                                patch if isinstance(patch, Mapping) else merge_patch(patch))
        except ApiError as e:
            self.cache.settle(job.key)
            if e.status == 404:
                self.cache.delete_job(job.namespace, job.name)
                return None
            raise
        except BaseException:  # cancelled, or the API server unreachable: the write may not have happened
            self.cache.settle(job.key)
            raise
        self.cache.settle(job.key)
        if self.cache.fresh("job", body):
            return self.cache.upsert_job(body)
        return self.cache.jobs.get(job.key)

    async def checkpoint(self, ckpt: CheckpointRecord, patch: CheckpointStatusPatch,
                         resource_version: int | None = None) -> CheckpointRecord:
        """Write `patch` to the Checkpoint's status; the Checkpoint as the cache now has it. With
        `resource_version`, only onto that version of it (ApiError 409 otherwise)."""
        if resource_version is None:
            body = await self.kube.patch_status(Checkpoint, ckpt.namespace, ckpt.name, merge_patch(patch))
        else:
            body = await self.kube.merge_patch(
                self.kube.path(Checkpoint, ckpt.namespace, ckpt.name, "status"),
                {"metadata": {"resourceVersion": str(resource_version)}, "status": merge_patch(patch)})
        if self.cache.fresh("checkpoint", body):
            return self.cache.upsert_checkpoint(body)
        return self.cache.checkpoints.get(ckpt.key, ckpt)

    def _queue_key(self, namespace: str | None, name: str) -> str:
        kind = ClusterQueue if namespace is None else LocalQueue
        return f"{kind.PLURAL}/{namespace or ''}/{name}"

    def queue_changed(self, namespace: str | None, name: str,
                      patch: ClusterQueueStatusPatch | LocalQueueStatusPatch) -> bool:
        """Whether the queue's status differs from what was last written."""
        return self._queue_status.get(self._queue_key(namespace, name)) != merge_patch(patch)

    async def queue(self, namespace: str | None, name: str,
                    patch: ClusterQueueStatusPatch | LocalQueueStatusPatch) -> bool:
        """Write a ClusterQueue's (namespace None) or LocalQueue's status, only when it changed; whether
        it was written."""
        kind = ClusterQueue if namespace is None else LocalQueue
        status = merge_patch(patch)
        key = self._queue_key(namespace, name)
        if self._queue_status.get(key) == status:
            return False
        try:
            await self.kube.patch_status(kind, namespace, name, status)
            self._queue_status[key] = status
            return True
        except ApiError as e:
            log.warning("%s %s status not written: %s", kind.KIND, name, e)
            return False

    def event(self, job: JobRecord, reason: str, message: str, now: float, warning: bool = False) -> None:
        """Record a Kubernetes Event about the job, in the background."""
        self._emit(CheckpointableJob.KIND, job.namespace, job.name, job.uid, reason, message, now, warning)

    def checkpoint_event(self, ckpt: CheckpointRecord, reason: str, message: str, now: float,
                         warning: bool = True) -> None:
        """Record a Kubernetes Event about a Checkpoint, in the background."""
        self._emit(Checkpoint.KIND, ckpt.namespace, ckpt.name, ckpt.uid, reason, message, now, warning)

    def _emit(self, kind: str, namespace: str, name: str, uid: str, reason: str, message: str, now: float,
              warning: bool) -> None:
        # Queued, and posted by a few workers: a cycle at scale records hundreds of Events at once, and a
        # task (with its request) for each one made the controller's memory follow the size of the batch.
        self._events.append((kind, namespace, name, uid, reason, message, now, warning))
        while len(self._background) < min(EVENT_POSTERS, len(self._events)):
            task = asyncio.create_task(self._post_events())
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def _post_events(self) -> None:
        """Post queued Events until none is left (a worker does not outlive the queue)."""
        while self._events:
            try:
                await self._post_event(*self._events.popleft())
            except Exception as e:  # best effort, as one Event: a worker that died would strand the queue
                log.debug("event not recorded: %s", e)

    async def _post_event(self, kind: str, namespace: str, name: str, uid: str, reason: str, message: str,
                          now: float, warning: bool) -> None:
        at = format_time(now)
        body = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"generateName": f"{name}.", "namespace": namespace},
            "involvedObject": {"apiVersion": API_VERSION, "kind": kind, "name": name, "namespace": namespace,
                               "uid": uid},
            "reason": reason, "message": message[:1000], "type": "Warning" if warning else "Normal",
            "firstTimestamp": at, "lastTimestamp": at, "count": 1,
            "source": {"component": "ckq-controller"}, "reportingComponent": "ckq-controller",
        }
        try:
            await self.kube.create(self.kube.core_path("events", namespace), body)
        except ApiError as e:  # events are best effort
            log.debug("event not recorded: %s", e)

    async def flush(self) -> None:
        """Wait for the Events posted so far (tests, and a clean shutdown)."""
        while self._background:
            await asyncio.gather(*list(self._background), return_exceptions=True)

    async def bounded(self, coros: Sequence[Coroutine[Any, Any, Any]]) -> None:
        """Run API work concurrently, at most `concurrency` at a time. An API error concerns one job and
        is logged; the first other error is raised after all finished."""
        if not coros:
            return
        sem = asyncio.Semaphore(self.concurrency)

        async def one(c: Coroutine[Any, Any, Any]) -> None:
            async with sem:
                await c

        results = await asyncio.gather(*(one(c) for c in coros), return_exceptions=True)
        for e in results:
            if not isinstance(e, BaseException):
                continue
            if not isinstance(e, ApiError):
                raise e
            log.warning("API request failed: %s", e)

"""The controller's in-memory picture of the cluster, fed by watch events and by the controller's own
writes. It keeps slim records (`records.py`, never whole bodies with managedFields); `snapshot.py`
turns it into the engine's snapshot.

A parsed job spec is the largest part of a record (a tree of pydantic models, ~4 KiB), and the jobs of
a sweep or an array share one spec but for their names. Specs are therefore pooled: jobs whose spec
bodies are equal share one parsed spec, its requests and its pod templates (never mutated), counted
so that the last job to go takes it with it.

A job's status is kept as the API server sends it (the writers patch from it), but slimmed: every
watch event decodes a fresh copy, whose keys and short strings ("type", "status", "True", a reason, a
timestamp) are new objects per job. Interning them makes 15,000 jobs share one copy of each, which
halves what a finished job's status costs (8 conditions; see `_slim`)."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from queue_controller.api.job import CheckpointableJobSpec, EncryptionKeyRef
from queue_controller.api.quantity import QuantityError, resources_to_milli
from queue_controller.api.queues import ClusterQueueSpec
from queue_controller.api.validation import describe_errors
from queue_controller.operator.records import (
    CheckpointRecord,
    FlavorRecord,
    JobRecord,
    LocalQueueRecord,
    NodeRecord,
    PodRecord,
    QueueRecord,
)
from queue_controller.runtime.exits import noted_code
from queue_controller.wire import (
    ATTEMPT_LABEL,
    CKQ_RUN_MODE_ANNOTATION,
    JOB_LABEL,
    MANAGED_LABEL,
    POD_INDEX_LABEL,
    POD_SET_LABEL,
    RESTORE_FROM_ANNOTATION,
    RUNTIME_INIT_CONTAINER,
    node_kind,
    parse_time,
)

log = logging.getLogger(__name__)

_INTERN_MAX = 64  # longer strings (messages naming a job) are rarely shared: interning them buys nothing


def _slim(value: Any) -> Any:
    """A copy of a decoded JSON value with its keys and short strings interned (shared by every job)."""
    if isinstance(value, dict):
        return {sys.intern(k): _slim(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_slim(v) for v in value]
    if isinstance(value, str) and len(value) <= _INTERN_MAX:
        return sys.intern(value)
    return value


def merged(target: Mapping[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    """`target` with the JSON merge patch `patch` applied (RFC 7386: objects merge, null deletes, anything
    else replaces), as the API server applies it."""
    out = dict(target)
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        elif isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = merged(out[k], v)
        else:
            out[k] = v
    return out


def _meta(body: Mapping[str, Any]) -> Mapping[str, Any]:
    return body.get("metadata") or {}


def _rv(body: Mapping[str, Any]) -> int:
    try:
        return int(_meta(body).get("resourceVersion") or 0)
    except ValueError:
        return 0


def _requests(spec: Mapping[str, Any]) -> dict[str, int]:
    from queue_controller.api.podtemplate import PodTemplateSpec

    return PodTemplateSpec.model_validate({"spec": spec}).pod_requests_milli()


def _exit(status: Mapping[str, Any]) -> tuple[int | None, int | None]:
    """The first non-zero exit code of the pod's terminated containers, and the code ckq-run's note in
    that container's termination message names (runtime/exits.py), if any."""
    for c in status.get("containerStatuses") or ():
        terminated = (c.get("state") or {}).get("terminated") or {}
        code = terminated.get("exitCode")
        if code:
            return int(code), noted_code(terminated.get("message"))
    return None, None


def _finished(status: Mapping[str, Any]) -> float | None:
    times = [parse_time(((c.get("state") or {}).get("terminated") or {}).get("finishedAt"))
             for c in status.get("containerStatuses") or ()]
    done = [t for t in times if t is not None]
    return max(done) if done else None


@dataclass(slots=True)
class _Parsed:
    spec: CheckpointableJobSpec | None
    error: str
    templates: dict[str, dict[str, Any]]
    requests: dict[str, dict[str, int]]
    key: str = ""  # its key in the pool (one string, shared by its jobs)
    refs: int = 0


def _parse_spec(raw: Mapping[str, Any]) -> _Parsed:
    spec: CheckpointableJobSpec | None = None
    error = ""
    try:
        spec = CheckpointableJobSpec.model_validate(raw)
    except ValidationError as e:
        error = describe_errors(e)
    except QuantityError as e:
        error = f"spec: {e}"
    requests = {ps.name: ps.template.pod_requests_milli() for ps in spec.pod_sets} if spec is not None else {}
    templates = {ps.get("name", ""): ps.get("template") or {}
                 for ps in raw.get("podSets") or () if isinstance(ps, dict)}
    return _Parsed(spec, error, templates, requests)


class Cache:
    def __init__(self) -> None:
        self.jobs: dict[str, JobRecord] = {}
        self._specs: dict[str, _Parsed] = {}  # canonical spec JSON -> the parsed spec its jobs share
        self._spec_of: dict[str, str] = {}  # job key -> its spec's pool key
        self.pods: dict[str, PodRecord] = {}
        self.pods_by_job: dict[str, set[str]] = {}
        self.nodes: dict[str, NodeRecord] = {}
        self.node_kinds: dict[str, int] = {}  # nodes per wire.node_kind
        self.checkpoints: dict[str, CheckpointRecord] = {}
        self.checkpoints_by_job: dict[str, set[str]] = {}
        self.cluster_queues: dict[str, QueueRecord] = {}
        self.local_queues: dict[str, LocalQueueRecord] = {}
        self.flavors: dict[str, FlavorRecord] = {}
        self.priority_classes: dict[str, int] = {}
        self.namespaces: dict[str, dict[str, str]] = {}  # name -> labels, for namespaceSelector
        self.generation = 0  # bumped on every change: the loop skips work when nothing moved
        self.node_failures = 0  # Ready nodes seen turning NotReady
        # Newest resourceVersion seen per object. The controller feeds its own write responses in as
        # they return, so a late watch event carrying an older state must not roll the cache back
        # (that is how a controller admits a job twice).
        self._versions: dict[tuple[str, str], int] = {}
        # Jobs whose new status is being written (the loop's write-behind): key -> (the status assumed,
        # the status last seen from the API server). Until the write returns, the assumed status is what
        # every step sees, so the next cycle counts the job's quota as taken and does not admit it twice
        # (Kueue's "assume" before its asynchronous admission write).
        self._assumed: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}

    def fresh(self, kind: str, body: Mapping[str, Any]) -> bool:
        """Record the body's resourceVersion; False when an equal or newer one was already seen."""
        meta = _meta(body)
        key = (kind, f"{meta.get('namespace', '')}/{meta.get('name', '')}")
        rv = _rv(body)
        if rv and self._versions.get(key, 0) >= rv:
            return False
        if rv:
            self._versions[key] = rv
        return True

    def version(self, kind: str, key: str) -> int | None:
        """The newest resourceVersion seen of the object `key` ("namespace/name") of `kind`."""
        return self._versions.get((kind, key))

    def forget(self, kind: str, namespace: str, name: str) -> None:
        self._versions.pop((kind, f"{namespace}/{name}"), None)

    def versions(self, kind: str) -> list[tuple[str, int]]:
        """("namespace/name", resourceVersion) of every object of `kind` the cache has seen ("/name" for
        cluster-scoped ones)."""
        return [(key, rv) for (k, key), rv in self._versions.items() if k == kind]

    def _changed(self) -> None:
        self.generation += 1

    # ---- jobs -------------------------------------------------------------------------------------

    def upsert_job(self, body: Mapping[str, Any]) -> JobRecord:
        meta = _meta(body)
        key = f"{meta.get('namespace', '')}/{meta['name']}"
        old = self.jobs.get(key)
        generation = int(meta.get("generation") or 0)
        if old is not None and old.uid == meta.get("uid") and generation and old.generation == generation:
            # Only status or metadata changed (the API server bumps generation on spec changes): the
            # parsed spec still holds, and parsing it is the costliest part of an event.
            spec, error, templates, requests = old.spec, old.spec_error, old.templates, old.requests
        else:
            parsed = self._pooled_spec(key, body.get("spec") or {})
            spec, error, templates, requests = parsed.spec, parsed.error, parsed.templates, parsed.requests
        rec = JobRecord(
            namespace=meta.get("namespace", ""), name=meta["name"], uid=meta.get("uid", ""),
            created=parse_time(meta.get("creationTimestamp")) or 0.0, spec=spec, spec_error=error,
            status=_slim(dict(body.get("status") or {})), annotations=dict(meta.get("annotations") or {}),
            generation=generation, templates=templates, requests=requests,
        )
        assumed = self._assumed.get(rec.key)
        if assumed is not None:  # a watch event while our write is in flight: the write decides
            self._assumed[rec.key] = (assumed[0], rec.status)
            rec.status = assumed[0]
        self.jobs[rec.key] = rec
        self._changed()
        return rec

    def assume(self, key: str, patch: Mapping[str, Any]) -> None:
        """Take the job's status to be its current one with the merge patch `patch` applied, until
        `settle(key)`: the patch is being written."""
        rec = self.jobs.get(key)
        if rec is None:
            return
        real = self._assumed[key][1] if key in self._assumed else rec.status
        rec.status = _slim(merged(real, patch))
        self._assumed[key] = (rec.status, real)
        self._changed()

    def settle(self, key: str) -> None:
        """The write of an assumed status returned or failed: the job's status is again the one last
        seen from the API server (the write's response, fed in next, replaces it when it is newer)."""
        assumed = self._assumed.pop(key, None)
        rec = self.jobs.get(key)
        if assumed is not None and rec is not None:
            rec.status = assumed[1]
            self._changed()

    def assumed(self, key: str) -> bool:
        return key in self._assumed

    def _pooled_spec(self, key: str, raw: Mapping[str, Any]) -> _Parsed:
        """The parsed spec for `raw`, shared with every job whose spec body is equal; `key`'s job now
        uses it (and lets go of the one it used before)."""
        pool_key = json.dumps(raw, sort_keys=True, separators=(",", ":"), default=str)
        parsed = self._specs.get(pool_key)
        if parsed is None:
            parsed = self._specs[pool_key] = _parse_spec(raw)
            parsed.key = pool_key
        if self._spec_of.get(key) != pool_key:
            self._release_spec(key)
            parsed.refs += 1
            self._spec_of[key] = parsed.key
        return parsed

    def _release_spec(self, key: str) -> None:
        pool_key = self._spec_of.pop(key, None)
        parsed = self._specs.get(pool_key) if pool_key is not None else None
        if parsed is not None:
            parsed.refs -= 1
            if parsed.refs <= 0:
                del self._specs[pool_key]  # type: ignore[arg-type]

    def delete_job(self, namespace: str, name: str) -> None:
        key = f"{namespace}/{name}"
        self._assumed.pop(key, None)
        self._release_spec(key)
        if self.jobs.pop(key, None) is not None:
            self._changed()

    def set_job_status(self, key: str, status: Mapping[str, Any]) -> None:
        rec = self.jobs.get(key)
        if rec is not None:
            rec.status = _slim(dict(status))
            self._changed()

    # ---- pods -------------------------------------------------------------------------------------

    def upsert_pod(self, body: Mapping[str, Any]) -> None:
        meta = _meta(body)
        labels = meta.get("labels") or {}
        spec = body.get("spec") or {}
        status = body.get("status") or {}
        ns = meta.get("namespace", "")
        job = labels.get(JOB_LABEL)
        known = self.pods.get(f"{ns}/{meta['name']}")
        if known is not None and known.uid == meta.get("uid", ""):
            requests = known.requests  # a pod's requests do not change (no in-place resize here)
        else:
            try:
                requests = _requests(spec)
            except (ValidationError, QuantityError):
                requests = {}
        exit_code, exit_noted = _exit(status)
        rec = PodRecord(
            namespace=ns, name=meta["name"], uid=meta.get("uid", ""), node=spec.get("nodeName"),
            phase=status.get("phase") or "Pending", requests=requests,
            job=f"{ns}/{job}" if job and labels.get(MANAGED_LABEL) == "true" else None,
            pod_set=labels.get(POD_SET_LABEL, ""), index=int(labels.get(POD_INDEX_LABEL, "0") or 0),
            attempt=int(labels.get(ATTEMPT_LABEL, "0") or 0),
            terminating=bool(meta.get("deletionTimestamp")),
            containers=tuple(c.get("name", "") for c in spec.get("containers") or ()),
            start_time=parse_time(status.get("startTime")),
            finish_time=_finished(status),
            exit_code=exit_code,
            exit_noted=exit_noted,
            injected=any(c.get("name") == RUNTIME_INIT_CONTAINER for c in spec.get("initContainers") or ()),
            restore_from=(meta.get("annotations") or {}).get(RESTORE_FROM_ANNOTATION),
            ckq_run_mode=(meta.get("annotations") or {}).get(CKQ_RUN_MODE_ANNOTATION, ""),
        )
        old = self.pods.get(rec.key)
        if old is not None and old.job and old.job != rec.job:
            self.pods_by_job.get(old.job, set()).discard(rec.key)
        self.pods[rec.key] = rec
        if rec.job:
            self.pods_by_job.setdefault(rec.job, set()).add(rec.key)
        self._changed()

    def delete_pod(self, namespace: str, name: str) -> None:
        rec = self.pods.pop(f"{namespace}/{name}", None)
        if rec is not None:
            if rec.job:
                self.pods_by_job.get(rec.job, set()).discard(rec.key)
            self._changed()

    def job_pods(self, key: str) -> list[PodRecord]:
        return sorted((self.pods[k] for k in self.pods_by_job.get(key, ()) if k in self.pods),
                      key=lambda p: (p.attempt, p.pod_set, p.index))

    # ---- nodes ------------------------------------------------------------------------------------

    def upsert_node(self, body: Mapping[str, Any]) -> None:
        meta = _meta(body)
        spec = body.get("spec") or {}
        status = body.get("status") or {}
        ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or ())
        try:
            alloc = resources_to_milli(status.get("allocatable") or {})
        except QuantityError:
            alloc = {}
        labels = dict(meta.get("labels") or {})
        rec = NodeRecord(meta["name"], alloc, labels, list(spec.get("taints") or ()), ready,
                         bool(spec.get("unschedulable")), node_kind(labels, meta.get("annotations") or {}),
                         str((status.get("nodeInfo") or {}).get("containerRuntimeVersion") or ""))
        old = self.nodes.get(rec.name)
        if old is not None and old.ready and not rec.ready:
            self.node_failures += 1  # a failure, for the measured MTBF (operator/failures.py)
        if old is not None:
            self.node_kinds[old.kind] -= 1
        self.node_kinds[rec.kind] = self.node_kinds.get(rec.kind, 0) + 1
        self.nodes[rec.name] = rec
        self._changed()

    def delete_node(self, name: str) -> None:
        old = self.nodes.pop(name, None)
        if old is not None:
            self.node_kinds[old.kind] -= 1
            self._changed()

    def present_kinds(self) -> frozenset[str]:
        """The kinds of node the cluster has ("kwok", "real")."""
        return frozenset(k for k, n in self.node_kinds.items() if n > 0)

    # ---- checkpoints ------------------------------------------------------------------------------

    def upsert_checkpoint(self, body: Mapping[str, Any]) -> CheckpointRecord:
        meta = _meta(body)
        spec = body.get("spec") or {}
        rec = CheckpointRecord(
            namespace=meta.get("namespace", ""), name=meta["name"], uid=meta.get("uid", ""),
            job=spec.get("jobName", ""), reason=spec.get("reason", "User"),
            leave_running=bool(spec.get("leaveRunning")),
            created=parse_time(meta.get("creationTimestamp")) or 0.0, status=dict(body.get("status") or {}),
            annotations=dict(meta.get("annotations") or {}),
        )
        self.checkpoints[rec.key] = rec
        self.checkpoints_by_job.setdefault(rec.job_key, set()).add(rec.key)
        self._changed()
        return rec

    def delete_checkpoint(self, namespace: str, name: str) -> None:
        rec = self.checkpoints.pop(f"{namespace}/{name}", None)
        if rec is not None:
            self.checkpoints_by_job.get(rec.job_key, set()).discard(rec.key)
            self._changed()

    def job_checkpoints(self, job_key: str) -> list[CheckpointRecord]:
        keys = self.checkpoints_by_job.get(job_key)
        if not keys:
            return []
        return sorted((self.checkpoints[k] for k in keys if k in self.checkpoints),
                      key=lambda c: (c.created, c.name))

    # ---- queues, flavors, priority classes --------------------------------------------------------

    def upsert_cluster_queue(self, body: Mapping[str, Any]) -> None:
        meta = _meta(body)
        raw = body.get("spec") or {}
        try:
            spec = ClusterQueueSpec.model_validate(raw)
            rec = QueueRecord(meta["name"], spec, "", frozenset(raw), dict(body.get("status") or {}))
        except ValidationError as e:
            rec = QueueRecord(meta["name"], None, describe_errors(e), frozenset(raw), dict(body.get("status") or {}))
        except QuantityError as e:
            rec = QueueRecord(meta["name"], None, f"spec: {e}", frozenset(raw), dict(body.get("status") or {}))
        self.cluster_queues[rec.name] = rec
        self._changed()

    def delete_cluster_queue(self, name: str) -> None:
        if self.cluster_queues.pop(name, None) is not None:
            self._changed()

    def upsert_local_queue(self, body: Mapping[str, Any]) -> None:
        meta = _meta(body)
        spec = body.get("spec") or {}
        key = (spec.get("checkpoint") or {}).get("encryptionKey")
        try:
            ref = EncryptionKeyRef.model_validate(key) if key else None
        except ValidationError:
            ref = None  # unreachable through the API server: the CRD schema admits valid ones only
        rec = LocalQueueRecord(meta.get("namespace", ""), meta["name"], spec.get("clusterQueue", ""),
                               dict(body.get("status") or {}), ref)
        self.local_queues[rec.key] = rec
        self._changed()

    def delete_local_queue(self, namespace: str, name: str) -> None:
        if self.local_queues.pop(f"{namespace}/{name}", None) is not None:
            self._changed()

    def upsert_flavor(self, body: Mapping[str, Any]) -> None:
        meta = _meta(body)
        spec = body.get("spec") or {}
        self.flavors[meta["name"]] = FlavorRecord(meta["name"], dict(spec.get("nodeLabels") or {}),
                                                  list(spec.get("nodeTaints") or ()),
                                                  list(spec.get("tolerations") or ()))
        self._changed()

    def delete_flavor(self, name: str) -> None:
        if self.flavors.pop(name, None) is not None:
            self._changed()

    def upsert_priority_class(self, body: Mapping[str, Any]) -> None:
        self.priority_classes[_meta(body)["name"]] = int(body.get("value") or 0)
        self._changed()

    def upsert_namespace(self, body: Mapping[str, Any]) -> None:
        meta = _meta(body)
        self.namespaces[meta["name"]] = dict(meta.get("labels") or {})
        self._changed()

    def delete_namespace(self, name: str) -> None:
        if self.namespaces.pop(name, None) is not None:
            self._changed()

    def delete_priority_class(self, name: str) -> None:
        if self.priority_classes.pop(name, None) is not None:
            self._changed()

"""A fake API server behind the controller's real REST client, and a fake clock, for the operator unit tier.

Only the API boundary is replaced (`Kube._request_once`, the one place that would send HTTP), the way
kopf's own handling tests mock the API and nothing inside: the controller's cache, status writer,
actuators and backends run as in production. The fake keeps objects in memory, stamps metadata
(uid, resourceVersion, creationTimestamp from the fake clock), answers 404/409 like the API server, and
queues a watch event for every change; `deliver` feeds those events into the cache through the kopf
handlers' own `feed`. A test plays kubelet and kube-scheduler itself (`run_pods`, `finish_pods`, `fail_pod`).

Status written to a ckq.io object is checked against the API models strictly: a field the model does
not know fails the test (a real API server would prune it silently, which is how such bugs hide).
"""

from __future__ import annotations

import copy
import itertools
import typing
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from kubernetes import client as k8s_client
from pydantic import BaseModel, ValidationError

from queue_controller.api.checkpoint import CheckpointStatus
from queue_controller.api.job import CheckpointableJobStatus
from queue_controller.api.queues import ClusterQueueStatus, LocalQueueStatus
from queue_controller.operator.cache import Cache
from queue_controller.operator.handlers import WATCHED, feed
from queue_controller.operator.kube import ApiError, Kube

GROUP_PREFIX = "/apis/ckq.io/v1alpha1"
STATUS_MODELS: dict[str, type[BaseModel]] = {
    "checkpointablejobs": CheckpointableJobStatus,
    "checkpoints": CheckpointStatus,
    "clusterqueues": ClusterQueueStatus,
    "localqueues": LocalQueueStatus,
}
WATCH = {w.plural: w for w in WATCHED}
NAMESPACED = {w.plural for w in WATCHED if w.namespaced} | {"events"}
T0 = 1_790_000_000.0  # 2026-09-21, a whole second


def wire_time(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class FakeClock:
    """The controller's clock: moves only when the test says so, and counts how often it is read."""

    def __init__(self, now: float = T0) -> None:
        self.now = now
        self.reads = 0

    def __call__(self) -> float:
        self.reads += 1
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def unknown_fields(model: type[BaseModel], data: Any, where: str = "status") -> list[str]:
    """Keys of `data` (recursively, through nested models) that `model` has no field for."""
    if not isinstance(data, Mapping):
        return []
    fields = {(f.alias or name): f for name, f in model.model_fields.items()}
    out = []
    for key, value in data.items():
        f = fields.get(key)
        if f is None:
            out.append(f"{where}.{key}")
            continue
        for nested in _models_in(f.annotation):
            items = value if isinstance(value, list) else [value]
            for i, item in enumerate(items):
                out += unknown_fields(nested, item, f"{where}.{key}" + (f"[{i}]" if isinstance(value, list) else ""))
    return out


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    if typing.get_origin(annotation) is dict:
        return []  # free-form map (labels): any key
    return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch, as the API server applies application/merge-patch+json."""
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, Mapping) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge_patch(out.get(k), v)
    return out


def _parse(path: str) -> tuple[str, str | None, str | None, str | None]:
    """(plural, namespace, name, subresource) of an API path."""
    prefix = GROUP_PREFIX if path.startswith(GROUP_PREFIX) else "/apis/scheduling.k8s.io/v1" \
        if path.startswith("/apis/scheduling.k8s.io/v1") else "/api/v1"
    segs = [s for s in path[len(prefix):].split("/") if s]
    if segs[0] == "namespaces" and len(segs) >= 3:
        ns, rest = segs[1], segs[2:]
    else:
        ns, rest = None, segs
    plural = rest[0]
    name = rest[1] if len(rest) > 1 else None
    sub = rest[2] if len(rest) > 2 else None
    return plural, ns, name, sub


class FakeApiServer:
    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}  # (plural, namespace, name) -> body
        self.events: list[dict[str, Any]] = []  # core Events posted
        self.pending: list[tuple[str, str, dict[str, Any]]] = []  # watch events not yet delivered
        self.log: list[tuple[str, str]] = []  # (method, path) of every request
        self.params: list[dict[str, str]] = []  # the query parameters of every request
        self.deletes: list[tuple[str, Any]] = []  # (path, body) of every DELETE: the grace it asked for
        self.reject_pods: str | None = None  # when set, pod creation answers 422 with this message
        self._rv = itertools.count(1)
        self.revision = 0  # the last resourceVersion handed out (a LIST's own resourceVersion)
        self._uid = itertools.count(1)

    # ---- the HTTP boundary ------------------------------------------------------------------------

    def handle(self, method: str, path: str, body: Any, params: Mapping[str, str] | None = None) -> dict[str, Any]:
        self.log.append((method, path))
        self.params.append(dict(params or {}))
        plural, ns, name, sub = _parse(path)
        if method == "POST":
            assert name is None, path
            if plural == "events":
                self.events.append(copy.deepcopy(body))
                return dict(body)
            return self.create(plural, body, ns)
        if method == "GET":
            if name is None:
                items = [copy.deepcopy(b) for (p, n, _), b in sorted(self.objects.items())
                         if p == plural and (ns is None or n == ns)]
                meta: dict[str, Any] = {"resourceVersion": str(self.revision)}
                if params and "limit" in params:  # pages, as the API server gives them (`continue`)
                    start, limit = int(params.get("continue") or 0), int(params["limit"])
                    if start + limit < len(items):
                        meta["continue"] = str(start + limit)
                    items = items[start:start + limit]
                return {"apiVersion": "v1", "kind": "List", "metadata": meta, "items": items}
            return copy.deepcopy(self._get(plural, ns, name))
        if method == "PATCH":
            assert name is not None and sub == "status", f"the controller only patches status: {path}"
            want = ((body or {}).get("metadata") or {}).get("resourceVersion")
            if want is not None and want != self._get(plural, ns, name)["metadata"]["resourceVersion"]:
                raise ApiError(409, "Conflict", {"message": f'Operation cannot be fulfilled on {plural} "{name}": '
                                                            "the object has been modified"})
            return self.patch_status(plural, ns, name, (body or {}).get("status") or {})
        if method == "DELETE":
            assert name is not None, path
            self.deletes.append((path, copy.deepcopy(body)))
            self.delete(plural, ns, name)
            return {}
        raise AssertionError(f"unexpected {method} {path}")

    def _get(self, plural: str, ns: str | None, name: str) -> dict[str, Any]:
        body = self.objects.get((plural, ns or "", name))
        if body is None:
            raise ApiError(404, "Not Found", {"message": f'{plural} "{name}" not found'})
        return body

    # ---- object store -----------------------------------------------------------------------------

    def _changed(self, kind: str, plural: str, body: dict[str, Any]) -> dict[str, Any]:
        self.revision = next(self._rv)
        body["metadata"]["resourceVersion"] = str(self.revision)
        self.pending.append((kind, plural, copy.deepcopy(body)))
        return copy.deepcopy(body)

    def create(self, plural: str, body: Mapping[str, Any], namespace: str | None = None) -> dict[str, Any]:
        obj = copy.deepcopy(dict(body))
        meta = obj.setdefault("metadata", {})
        if namespace or plural in NAMESPACED:
            meta["namespace"] = namespace or meta.get("namespace") or "default"
        if "name" not in meta:
            meta["name"] = f"{meta['generateName']}{next(self._uid)}"
        key = (plural, meta.get("namespace", ""), meta["name"])
        if key in self.objects:
            raise ApiError(409, "Conflict", {"message": f'{plural} "{meta["name"]}" already exists'})
        if plural == "pods" and self.reject_pods is not None:
            raise ApiError(422, "Unprocessable Entity", {"message": self.reject_pods})
        meta.update(uid=f"uid-{next(self._uid)}", generation=1,
                    creationTimestamp=meta.get("creationTimestamp") or wire_time(self.clock.now))
        if plural == "pods":  # kube-scheduler binds it to the node the controller pinned
            terms = obj["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
            obj["spec"]["nodeName"] = terms["nodeSelectorTerms"][0]["matchFields"][-1]["values"][0]
            obj.setdefault("status", {"phase": "Pending"})
        self.objects[key] = obj
        return self._changed("ADDED", plural, obj)

    def patch_status(self, plural: str, ns: str | None, name: str, status: Mapping[str, Any]) -> dict[str, Any]:
        obj = self._get(plural, ns, name)
        merged = merge_patch(obj.get("status") or {}, status)
        model = STATUS_MODELS.get(plural)
        if model is not None:  # the CRD's schema, strictly: nothing is silently pruned here
            unknown = unknown_fields(model, status)
            assert not unknown, f"status patch of {plural}/{name} has fields the API does not know: {unknown}"
            try:
                model.model_validate(merged)
            except ValidationError as e:
                raise AssertionError(f"status of {plural}/{name} is invalid after the patch: {e}") from None
        obj["status"] = merged
        return self._changed("MODIFIED", plural, obj)

    def update_spec(self, plural: str, ns: str | None, name: str, **spec: Any) -> None:
        """A user edits the spec (generation moves, as the API server does for spec changes)."""
        obj = self._get(plural, ns, name)
        obj["spec"] = merge_patch(obj["spec"], spec)
        obj["metadata"]["generation"] += 1
        self._changed("MODIFIED", plural, obj)

    def delete(self, plural: str, ns: str | None, name: str) -> None:
        obj = self._get(plural, ns, name)
        del self.objects[(plural, ns or "", name)]
        self.revision = next(self._rv)  # a deletion is a revision of its own, as in etcd
        self.pending.append(("DELETED", plural, copy.deepcopy(obj)))

    def deliver(self, cache: Cache) -> None:
        """The watch events since the last call, through the cache the way the kopf handlers feed it."""
        events, self.pending = self.pending, []
        for type_, plural, body in events:
            if plural in WATCH:
                feed(cache, WATCH[plural], {"type": type_, "object": body})

    # ---- a test's view -----------------------------------------------------------------------------

    def get(self, plural: str, name: str, namespace: str | None = "team") -> dict[str, Any]:
        return copy.deepcopy(self._get(plural, namespace if plural in NAMESPACED else None, name))

    def status(self, job: str, namespace: str = "team") -> dict[str, Any]:
        return dict(self.get("checkpointablejobs", job, namespace).get("status") or {})

    def conditions(self, job: str, namespace: str = "team") -> dict[str, dict[str, Any]]:
        return {c["type"]: c for c in self.status(job, namespace).get("conditions") or ()}

    def list(self, plural: str, namespace: str = "team") -> list[dict[str, Any]]:
        return [copy.deepcopy(b) for (p, n, _), b in sorted(self.objects.items()) if p == plural and n == namespace]

    def pods(self, job: str, namespace: str = "team") -> list[dict[str, Any]]:
        return [p for p in self.list("pods", namespace) if p["metadata"]["labels"].get("ckq.io/job-name") == job]

    def checkpoints(self, job: str, namespace: str = "team") -> list[dict[str, Any]]:
        return [c for c in self.list("checkpoints", namespace) if c["spec"]["jobName"] == job]

    def event_reasons(self, job: str) -> list[str]:
        return [e["reason"] for e in self.events if e["involvedObject"]["name"] == job]

    def _set_pod_status(self, pod: dict[str, Any], status: dict[str, Any]) -> None:
        key = ("pods", pod["metadata"]["namespace"], pod["metadata"]["name"])
        self.objects[key]["status"] = status
        self._changed("MODIFIED", "pods", self.objects[key])

    def run_pods(self, job: str, namespace: str = "team") -> None:
        """kubelet: every pod of the job that is not running yet starts now."""
        for pod in self.pods(job, namespace):
            if (pod.get("status") or {}).get("phase") == "Pending":
                self._set_pod_status(pod, {"phase": "Running", "startTime": wire_time(self.clock.now)})

    def finish_pods(self, job: str, namespace: str = "team") -> None:
        """kubelet: every running pod of the job exits 0 now."""
        for pod in self.pods(job, namespace):
            st = pod.get("status") or {}
            if st.get("phase") == "Running":
                term = {"terminated": {"exitCode": 0, "finishedAt": wire_time(self.clock.now)}}
                self._set_pod_status(pod, {**st, "phase": "Succeeded", "containerStatuses": [
                    {"name": c["name"], "state": term} for c in pod["spec"]["containers"]]})

    def fail_pod(self, job: str, namespace: str = "team") -> None:
        """kubelet: the job's first pod exits non-zero."""
        pod = self.pods(job, namespace)[0]
        self._set_pod_status(pod, {**(pod.get("status") or {}), "phase": "Failed"})

    def exit_pods(self, job: str, code: int, namespace: str = "team", *, ckq_run: bool = False) -> None:
        """kubelet: every running pod of the job exits with `code` now (every container). `ckq_run`: the
        code is ckq-run's own, and its note is the termination message (runtime/exits.py)."""
        from queue_controller.runtime.exits import note_line

        for pod in self.pods(job, namespace):
            st = pod.get("status") or {}
            if st.get("phase") == "Running":
                term: dict[str, Any] = {"terminated": {"exitCode": code, "finishedAt": wire_time(self.clock.now)}}
                if ckq_run:
                    term["terminated"]["message"] = note_line(code, "as ckq-run says")
                self._set_pod_status(pod, {**st, "phase": "Succeeded" if code == 0 else "Failed", "containerStatuses": [
                    {"name": c["name"], "state": term} for c in pod["spec"]["containers"]]})

    def patch_checkpoint(self, name: str, status: Mapping[str, Any], namespace: str = "team") -> None:
        """A node agent writes (part of) a Checkpoint's status, as a merge patch."""
        self.patch_status("checkpoints", namespace, name, status)


class FakeKube(Kube):
    """The controller's real client with its transport replaced by the fake API server."""

    def __init__(self, server: FakeApiServer) -> None:
        super().__init__(k8s_client.Configuration(host="https://fake.invalid"))
        self.server = server

    async def _request_once(self, method: str, path: str, body: Any, content_type: str,
                            params: Mapping[str, str] | None) -> dict[str, Any]:
        self.requests += 1
        if method == "PATCH":
            assert content_type == "application/merge-patch+json", content_type
        return self.server.handle(method, path, copy.deepcopy(body), params)

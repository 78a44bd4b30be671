"""kopf wiring: event handlers that only feed the cache and kick the loop, plus startup and cleanup.

Only `on.event` handlers are used, and none of them patches or returns anything, so kopf itself writes
nothing to the API (no annotations, finalizers or progress); see ../shared kopf-at-scale notes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import kopf

from queue_controller.api.common import GROUP, VERSION
from queue_controller.operator.cache import Cache

log = logging.getLogger("ckq.handlers")


@dataclass
class Runtime:
    """What the handlers need; set up by `queue_controller.operator.main` before kopf starts."""

    cache: Cache = field(default_factory=Cache)
    kick: Callable[[], None] = lambda: None
    startup: list[Callable[[], Any]] = field(default_factory=list)
    cleanup: list[Callable[[], Any]] = field(default_factory=list)


RUNTIME = Runtime()


class NoDiffBase(kopf.DiffBaseStorage):
    """kopf computes and stores a deep-copied "essence" of every object on every event, for
    create/update handlers. This operator has none (only on.event), so that work is pure cost: about
    three quarters of kopf's per-event CPU."""

    def build(self, *, body: Any, extra_fields: Any = None) -> Any:
        return {}

    def fetch(self, *, body: Any) -> Any:
        return None

    def store(self, *, body: Any, patch: Any, essence: Any) -> None:
        return None


def _on(kind: str, upsert: Callable[[Mapping[str, Any]], Any], delete: Callable[[Mapping[str, Any]], Any],
        ) -> Callable[..., Any]:
    async def handler(event: Mapping[str, Any], **_: Any) -> None:
        body = event.get("object") or {}
        if not body.get("metadata"):
            return
        if event.get("type") == "DELETED":
            meta = body["metadata"]
            RUNTIME.cache.forget(kind, meta.get("namespace", ""), meta["name"])
            delete(body)
        elif RUNTIME.cache.fresh(kind, body):
            upsert(body)
        else:
            return
        RUNTIME.kick()

    handler.__name__ = f"on_{kind}"
    return handler


def _ns_name(body: Mapping[str, Any]) -> tuple[str, str]:
    meta = body["metadata"]
    return meta.get("namespace", ""), meta["name"]


def register() -> None:
    c = RUNTIME.cache
    kopf.on.event(GROUP, VERSION, "checkpointablejobs")(
        _on("job", c.upsert_job, lambda b: c.delete_job(*_ns_name(b))))
    kopf.on.event(GROUP, VERSION, "checkpoints")(
        _on("checkpoint", c.upsert_checkpoint, lambda b: c.delete_checkpoint(*_ns_name(b))))
    kopf.on.event(GROUP, VERSION, "clusterqueues")(
        _on("clusterqueue", c.upsert_cluster_queue, lambda b: c.delete_cluster_queue(b["metadata"]["name"])))
    kopf.on.event(GROUP, VERSION, "localqueues")(
        _on("localqueue", c.upsert_local_queue, lambda b: c.delete_local_queue(*_ns_name(b))))
    kopf.on.event(GROUP, VERSION, "resourceflavors")(
        _on("flavor", c.upsert_flavor, lambda b: c.delete_flavor(b["metadata"]["name"])))
    kopf.on.event("scheduling.k8s.io", "v1", "priorityclasses")(
        _on("priorityclass", c.upsert_priority_class, lambda b: c.delete_priority_class(b["metadata"]["name"])))
    kopf.on.event("", "v1", "namespaces")(
        _on("namespace", c.upsert_namespace, lambda b: c.delete_namespace(b["metadata"]["name"])))
    kopf.on.event("", "v1", "nodes")(_on("node", c.upsert_node, lambda b: c.delete_node(b["metadata"]["name"])))
    # Every pod: the requests of pods this controller does not manage still take node capacity.
    kopf.on.event("", "v1", "pods")(_on("pod", c.upsert_pod, lambda b: c.delete_pod(*_ns_name(b))))

    @kopf.on.startup()
    async def _startup(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.posting.enabled = False  # our own Events are posted by the loop, once per transition
        settings.watching.server_timeout = 600
        settings.watching.client_timeout = 660
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="ckq.io")
        settings.persistence.diffbase_storage = NoDiffBase()
        for fn in RUNTIME.startup:
            result = fn()
            if asyncio.iscoroutine(result):
                await result

    @kopf.on.cleanup()
    async def _cleanup(**_: Any) -> None:
        for fn in RUNTIME.cleanup:
            result = fn()
            if asyncio.iscoroutine(result):
                await result

    @kopf.on.probe(id="scheduling_loop")
    def _probe(**_: Any) -> str:
        return "ok"

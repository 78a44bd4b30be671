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

from queue_controller.api import Checkpoint, CheckpointableJob, ClusterQueue, LocalQueue, ResourceFlavor
from queue_controller.api.common import GROUP, VERSION, KubeObject
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


@dataclass(frozen=True, slots=True)
class Watched:
    """One kind the controller watches and lists at start-up: where it is in the API, and how the
    cache takes its objects."""

    group: str  # "" for core/v1
    version: str
    plural: str
    namespaced: bool
    cache_kind: str  # the key under which the cache tracks its objects' resourceVersions
    upsert: Callable[[Cache, Mapping[str, Any]], Any]
    delete: Callable[[Cache, str, str], Any]  # (cache, namespace, name)

    @classmethod
    def ckq(cls, kind: type[KubeObject], cache_kind: str, upsert: Callable[[Cache, Mapping[str, Any]], Any],
            delete: Callable[[Cache, str, str], Any]) -> Watched:
        """A ckq.io kind: group, version, plural and scope from its API model."""
        return cls(GROUP, VERSION, kind.PLURAL, kind.SCOPE == "Namespaced", cache_kind, upsert, delete)

    @property
    def list_path(self) -> str:
        """The path that lists every object of the kind (all namespaces)."""
        return f"/api/{self.version}/{self.plural}" if not self.group else \
            f"/apis/{self.group}/{self.version}/{self.plural}"


# In start-up order: what a job refers to is in the cache before the jobs are.
WATCHED: tuple[Watched, ...] = (
    Watched.ckq(ResourceFlavor, "flavor", Cache.upsert_flavor, lambda c, _, n: c.delete_flavor(n)),
    Watched.ckq(ClusterQueue, "clusterqueue", Cache.upsert_cluster_queue,
                lambda c, _, n: c.delete_cluster_queue(n)),
    Watched.ckq(LocalQueue, "localqueue", Cache.upsert_local_queue, Cache.delete_local_queue),
    Watched("scheduling.k8s.io", "v1", "priorityclasses", False, "priorityclass", Cache.upsert_priority_class,
            lambda c, _, n: c.delete_priority_class(n)),
    Watched("", "v1", "namespaces", False, "namespace", Cache.upsert_namespace,
            lambda c, _, n: c.delete_namespace(n)),
    Watched("", "v1", "nodes", False, "node", Cache.upsert_node, lambda c, _, n: c.delete_node(n)),
    # Every pod: the requests of pods this controller does not manage still take node capacity.
    Watched("", "v1", "pods", True, "pod", Cache.upsert_pod, Cache.delete_pod),
    Watched.ckq(Checkpoint, "checkpoint", Cache.upsert_checkpoint, Cache.delete_checkpoint),
    Watched.ckq(CheckpointableJob, "job", Cache.upsert_job, Cache.delete_job),
)


def feed(cache: Cache, watched: Watched, event: Mapping[str, Any]) -> bool:
    """Apply one watch event to the cache; False when it changed nothing (a stale or empty event)."""
    body = event.get("object") or {}
    meta = body.get("metadata")
    if not meta:
        return False
    if event.get("type") == "DELETED":
        cache.forget(watched.cache_kind, meta.get("namespace", ""), meta["name"])
        watched.delete(cache, meta.get("namespace", ""), meta["name"])
        return True
    if cache.fresh(watched.cache_kind, body):
        watched.upsert(cache, body)
        return True
    return False


def _on(watched: Watched) -> Callable[..., Any]:
    async def handler(event: Mapping[str, Any], **_: Any) -> None:
        if feed(RUNTIME.cache, watched, event):
            RUNTIME.kick()

    handler.__name__ = f"on_{watched.cache_kind}"
    return handler


IDLE_WORKER_S = 0.5  # kopf's default is 5 s


def register() -> None:
    for w in WATCHED:
        kopf.on.event(w.group, w.version, w.plural)(_on(w))

    @kopf.on.startup()
    async def _startup(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.posting.enabled = False  # our own Events are posted by the loop, once per transition
        settings.watching.server_timeout = 600
        settings.watching.client_timeout = 660
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="ckq.io")
        settings.persistence.diffbase_storage = NoDiffBase()
        # kopf keeps a worker per object for idle_timeout after its last event, and an idle worker still
        # holds that event's whole body (managedFields included: ~30 KiB decoded for a pod). At 15,000
        # jobs ~5,000 such workers were alive at once, and the controller's peak RSS was 2-3x what its
        # cache holds. Our handler only feeds the cache, so a worker that lingers saves nothing.
        settings.queueing.idle_timeout = IDLE_WORKER_S
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

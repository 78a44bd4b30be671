"""Start the controller: prime the cache, start the scheduling loop, metrics and wake-ups, run kopf."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Collection, Mapping
from datetime import UTC, datetime
from typing import Any

import kopf
from apscheduler.schedulers.asyncio import AsyncIOScheduler  # type: ignore[import-untyped]
from prometheus_client import start_http_server

from queue_controller.api import ClusterQueue
from queue_controller.api.common import GROUP, VERSION
from queue_controller.checkpoint.simulated import SimulatedBackend
from queue_controller.engine import Policy
from queue_controller.operator import handlers
from queue_controller.operator.cache import Cache
from queue_controller.operator.controller import Controller
from queue_controller.operator.health import DEFAULT_STUCK_AFTER_S, Health, HealthServer
from queue_controller.operator.kube import ApiError, Kube, load_configuration
from queue_controller.operator.leader import LeaderElection, default_identity
from queue_controller.operator.metrics import REGISTRY

log = logging.getLogger("ckq.controller")

SWEEP_FIRST_S = 30.0
SWEEP_EVERY_S = 600.0
SETTLE_S = 10.0  # on shutdown, how long admissions being written may take to land


async def prime(cache: Cache, kube: Kube, namespaces: Collection[str] = ()) -> None:
    """LIST everything once before the first cycle, so the loop never decides on a half-filled cache
    (kopf's watches start concurrently and keep it fresh afterwards). `namespaces`: only the namespaced
    objects of these (as kopf then watches only them), so nothing of another namespace is admitted."""
    for w in handlers.WATCHED:
        async for page in kube.list_pages(w.list_path):
            _apply_listing(cache, w, page, namespaces)


def _apply_listing(cache: Cache, w: handlers.Watched, listing: Mapping[str, Any],
                   namespaces: Collection[str]) -> set[str]:
    """Feed a LIST of kind `w` to the cache like watch events (only objects newer than the cache's copy);
    the cache keys ("namespace/name", "/name" when cluster-scoped) of what it holds."""
    api_version, list_kind = listing.get("apiVersion"), listing.get("kind", "List").removesuffix("List")
    present = set()
    for item in listing.get("items") or ():
        meta = item.get("metadata") or {}
        if namespaces and w.namespaced and meta.get("namespace") not in namespaces:
            continue
        present.add(f"{meta.get('namespace', '') if w.namespaced else ''}/{meta.get('name', '')}")
        item.setdefault("apiVersion", api_version)
        item.setdefault("kind", list_kind)
        if cache.fresh(w.cache_kind, item):
            w.upsert(cache, item)
    return present


async def sweep(cache: Cache, kube: Kube, namespaces: Collection[str] = ()) -> int:
    """LIST every watched kind again and drop what the cache holds that the API server no longer has;
    returns how many ghosts went.

    kopf hands the handlers no event for an object deleted while its watch was not running: between
    `prime`'s LIST and kopf's own first LIST at start, or during a gap after which kopf lists again (the
    API server away, its watch expired). Such an object stays in the cache as a ghost: a LocalQueue whose
    status is written to a 404 every cycle, a pod still counted on its node, a job still "running". The
    sweep removes an entry only when the listing is newer than the entry (its resourceVersion is below
    the list's), so an object created after the LIST is never dropped; objects the listing has are
    applied like any event (only when newer than the cache's copy)."""
    gone = 0
    for w in handlers.WATCHED:
        present: set[str] = set()
        list_rv = 0
        try:
            # In pages (one snapshot: every page carries the first one's resourceVersion).
            async for page in kube.list_pages(w.list_path):
                list_rv = int((page.get("metadata") or {}).get("resourceVersion") or 0)
                present |= _apply_listing(cache, w, page, namespaces)
        except ValueError:
            continue  # not comparable: leave this kind as it is
        except ApiError as e:
            if e.status != 410:
                raise
            continue  # the snapshot expired between pages (compaction): the next sweep tries again
        for key, rv in cache.versions(w.cache_kind):
            if key not in present and 0 < rv < list_rv:
                namespace, name = key.split("/", 1)
                cache.forget(w.cache_kind, namespace, name)
                w.delete(cache, namespace, name)
                gone += 1
                log.info("cache: %s %s is gone from the API server (its deletion was not seen); dropped",
                         w.cache_kind, key.lstrip("/"))
    return gone


class Wakeups:
    """The engine's due dates (periodic checkpoints, reservations, checkpoints in flight) as one
    APScheduler date job that kicks the loop."""

    def __init__(self, controller: Controller) -> None:
        self.controller = controller
        self.scheduler = AsyncIOScheduler(timezone=UTC)
        self._at: float | None = None

    def start(self) -> None:
        self.scheduler.start()

    def plan(self) -> None:
        at = self.controller.next_wakeup
        if at is None or at == self._at:
            return
        self._at = at
        self.scheduler.add_job(self._fire, "date", run_date=datetime.fromtimestamp(at, UTC), id="wakeup",
                               replace_existing=True, misfire_grace_time=None)

    def _fire(self) -> None:
        self._at = None
        self.controller.kick()

    def stop(self) -> None:
        if self.scheduler.running:
            self.scheduler.shutdown(wait=False)


class StartupError(RuntimeError):
    """The controller cannot start: no usable kubeconfig, an unreachable API server, or no CRDs."""


def preflight(kubeconfig: str | None) -> Any:
    """Load the configuration and check the API server and the ckq.io CRDs before kopf starts, so a
    user meets one clear sentence instead of a retry loop of tracebacks."""
    from kubernetes import client as k8s_client
    from kubernetes.config import ConfigException

    try:
        cfg = load_configuration(kubeconfig)
    except (ConfigException, FileNotFoundError) as e:
        raise StartupError(f"no usable Kubernetes configuration ({e}): pass --kubeconfig, set KUBECONFIG, "
                           "or run in a pod with a service account") from None
    api = k8s_client.ApiClient(cfg)
    try:
        k8s_client.VersionApi(api).get_code(_request_timeout=10)
    except Exception as e:  # any transport or HTTP failure means the same thing to the user
        raise StartupError(f"cannot reach the API server at {cfg.host}: {e}") from None
    try:
        k8s_client.ApisApi(api).get_api_versions(_request_timeout=10)
        k8s_client.CustomObjectsApi(api).list_cluster_custom_object(GROUP, VERSION, ClusterQueue.PLURAL,
                                                                   limit=1, _request_timeout=10)
    except k8s_client.ApiException as e:
        if e.status == 404:
            raise StartupError("the ckq.io CRDs are not installed in this cluster: kubectl apply -f crds/") from None
        raise StartupError(f"the API server refused a read of ClusterQueues ({e.status} {e.reason}): "
                           "check the controller's RBAC (helm/ckq/templates/rbac.yaml)") from None
    finally:
        api.close()  # type: ignore[no-untyped-call]
    return cfg


def connection_info(cfg: Any) -> kopf.ConnectionInfo:
    """kopf's credentials from the configuration the controller itself loaded (`--kubeconfig`, else
    $KUBECONFIG, else in-cluster): one source, so kopf's watches and the controller's writes always go
    to the same cluster as the same user (kopf's own login would read $KUBECONFIG again)."""
    # The kubernetes client keeps a token under "BearerToken" (kubeconfig tokens, in-cluster service
    # accounts) or "authorization", with its scheme in the value or in api_key_prefix. Missing it here
    # sent kopf's watches anonymously (403) while the controller's own writes were authenticated.
    keys = getattr(cfg, "api_key", None) or {}
    key = "BearerToken" if keys.get("BearerToken") else "authorization"
    auth = str(keys.get(key) or "")
    scheme, _, token = auth.partition(" ")
    if auth and not token:  # the scheme, if any, is kept apart
        scheme, token = (getattr(cfg, "api_key_prefix", None) or {}).get(key) or "Bearer", auth
    return kopf.ConnectionInfo(
        server=cfg.host,
        ca_path=cfg.ssl_ca_cert or None,
        insecure=not cfg.verify_ssl,
        certificate_path=cfg.cert_file or None,
        private_key_path=cfg.key_file or None,
        scheme=scheme or None if token else None,
        token=token or None,
    )


def run(policy: Policy, *, kubeconfig: str | None = None, namespaces: list[str] | None = None,
        metrics_port: int | None = 9090, liveness_port: int | None = 8080, peering: str | None = None,
        checkpoint_bandwidth: float = 2 * 2**30, stuck_after_s: float = DEFAULT_STUCK_AFTER_S,
        leader_election: bool = False) -> None:
    cfg = preflight(kubeconfig)
    kube = Kube(cfg)
    cache = handlers.RUNTIME.cache
    controller = Controller(cache, kube, policy, {"Simulated": SimulatedBackend(checkpoint_bandwidth)})
    # /healthz fails when the loop stops completing cycles while work waits; /readyz once primed.
    health = Health(stuck_after_s, clock=controller.clock)
    controller.kick = health.watch_kick(controller.kick)  # type: ignore[method-assign]
    controller.cycle = health.watch_cycle(controller.cycle)  # type: ignore[method-assign]
    probes = HealthServer(health, liveness_port) if liveness_port else None
    wakeups = Wakeups(controller)
    tasks: list[asyncio.Task[Any]] = []
    elector = LeaderElection(kube, default_identity()) if leader_election else None
    if elector is not None:
        # Only the leader decides; taking over kicks the loop (its cache is warm: kopf watches in both).
        controller.leading = health.active = lambda: elector.leading
        elector.on_change = lambda leading: controller.kick() if leading else None

    async def startup() -> None:
        if probes is not None:
            await probes.start()
        await prime(cache, kube, namespaces or ())
        health.synced()
        wakeups.start()
        controller.on_cycle = wakeups.plan
        tasks.append(asyncio.create_task(controller.run(), name="ckq-scheduling-loop"))
        if elector is not None:
            tasks.append(asyncio.create_task(elector.run(), name="ckq-leader-election"))
        tasks.append(asyncio.create_task(_sweeps(), name="ckq-cache-sweep"))
        controller.kick()
        log.info("ckq controller started: policy %s, %d jobs, %d nodes", policy.name, len(cache.jobs),
                 len(cache.nodes))

    async def _sweeps() -> None:
        # The first once kopf's watches surely run (deletions between prime's LIST and theirs), then
        # every SWEEP_EVERY_S (deletions during a watch gap kopf listed over).
        delay = SWEEP_FIRST_S
        while True:
            await asyncio.sleep(delay)
            delay = SWEEP_EVERY_S
            try:
                if await sweep(cache, kube, namespaces or ()):
                    controller.kick()
            except Exception as exc:  # the API server away: the next sweep tries again
                log.warning("cache sweep failed (retried in %.0fs): %s", delay, exc)

    async def cleanup() -> None:
        health.stopping()
        wakeups.stop()
        loop = next((t for t in tasks if t.get_name() == "ckq-scheduling-loop"), None)
        if loop is not None:
            loop.cancel()
        # Admissions being written finish while this replica still holds the Lease, so that a standby
        # taking over never decides for a job whose admission is still on its way.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(controller.settled(), SETTLE_S)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)  # the elector gives its Lease up
        await kube.close()
        if probes is not None:
            await probes.stop()

    @kopf.on.login()
    def _login(**_: Any) -> kopf.ConnectionInfo:
        return connection_info(cfg)

    handlers.RUNTIME.kick = controller.kick
    handlers.RUNTIME.startup.append(startup)
    handlers.RUNTIME.cleanup.append(cleanup)
    handlers.register()
    if metrics_port:
        start_http_server(metrics_port, registry=REGISTRY)
    kopf.run(
        clusterwide=not namespaces, namespaces=namespaces or (),
        standalone=peering is None, peering_name=peering,
    )

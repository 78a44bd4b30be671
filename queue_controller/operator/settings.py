"""The cluster's checkpoint settings: the ConfigMap `ckq-system/ckq-config` (`wire.CONFIG_*`).

`ckq dev up --real-nodes` writes it and the Helm chart templates it from its values, so a plain
`ckq controller` needs no flags. It names the runtime image injected into checkpointed pods
(`runtimeImage`), the store every node mounts (`storeHostPath`; `storeMode` shared, or node-local where
each node keeps its own images and restores elsewhere stage them first) and the pods' deletion grace
(`deleteGraceSeconds`), and how long an admitted job's pods may take to run before it gives its quota back
(`podsReadyTimeout`, with `requeueBackoffBase`, `requeueBackoffMax`, `requeueBackoffLimit`: Kueue's
waitForPodsReady). Without the first two the CRIU backend is unavailable: a job that needs it is
refused with the CheckpointModeUnavailable condition, never simulated instead. kwok-only clusters need
no ConfigMap.

The controller reads it at start-up and again every REFRESH_S (one GET; no cluster-wide watch of
ConfigMaps, and RBAC needs only `get` on this one object), so a job refused for want of it is
admitted once it appears.
"""

from __future__ import annotations

import logging
import math
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from queue_controller.checkpoint.base import ApiClient
from queue_controller.duration import parse_duration
from queue_controller.operator.kube import ApiError
from queue_controller.wire import (
    CONFIG_DELETE_GRACE,
    CONFIG_MAP,
    CONFIG_NAMESPACE,
    CONFIG_PODS_READY_TIMEOUT,
    CONFIG_REQUEUE_BACKOFF_BASE,
    CONFIG_REQUEUE_BACKOFF_LIMIT,
    CONFIG_REQUEUE_BACKOFF_MAX,
    CONFIG_RUNTIME_IMAGE,
    CONFIG_STORE_HOST_PATH,
    CONFIG_STORE_MODE,
    STORE_MODES,
    STORE_NODE_LOCAL,
    STORE_SHARED,
)

log = logging.getLogger("ckq.controller")
REFRESH_S = 30.0
DEFAULT_DELETE_GRACE_S = 30
# Kueue's defaults are 30 min, 60 s and 1 h; pods here are pinned to nodes the engine chose, so a pod that
# is not running after 10 minutes is stuck (an image that does not exist, an affinity no node meets).
DEFAULT_PODS_READY_TIMEOUT_S = 600.0
DEFAULT_BACKOFF_BASE_S = 60.0
DEFAULT_BACKOFF_MAX_S = 3600.0
CONFIG_REF = f"ConfigMap {CONFIG_NAMESPACE}/{CONFIG_MAP}"


@dataclass(frozen=True, slots=True)
class ClusterSettings:
    runtime_image: str = ""
    store_host_path: str = ""
    delete_grace_seconds: int = DEFAULT_DELETE_GRACE_S
    pods_ready_timeout_s: float = DEFAULT_PODS_READY_TIMEOUT_S
    backoff_base_s: float = DEFAULT_BACKOFF_BASE_S
    backoff_max_s: float = DEFAULT_BACKOFF_MAX_S
    backoff_limit: int | None = None
    store_mode: str = STORE_SHARED
    problem: str = ""  # why the ConfigMap is absent, unreadable or partly invalid ("" when fine)

    def requeue_delay(self, count: int) -> float:
        """Seconds a job waits before its `count`-th requeue after a pods-ready timeout may be admitted."""
        return min(self.backoff_base_s * 2.0 ** max(count - 1, 0), self.backoff_max_s)

    @classmethod
    def from_config_map(cls, data: Mapping[str, Any]) -> ClusterSettings:
        """The settings in a ConfigMap's `data`; invalid values are left out and named in `problem`."""
        bad = []
        image = str(data.get(CONFIG_RUNTIME_IMAGE) or "").strip()
        store = str(data.get(CONFIG_STORE_HOST_PATH) or "").strip()
        if store and (not posixpath.isabs(store) or ".." in store.split("/")):
            bad.append(f"{CONFIG_STORE_HOST_PATH} {store!r} is not an absolute path")
            store = ""
        grace = DEFAULT_DELETE_GRACE_S
        raw = data.get(CONFIG_DELETE_GRACE)
        if raw not in (None, ""):
            try:
                grace = int(str(raw))
                if grace < 0:
                    raise ValueError
            except ValueError:
                bad.append(f"{CONFIG_DELETE_GRACE} {raw!r} is not a whole number of seconds >= 0")
                grace = DEFAULT_DELETE_GRACE_S
        durations = {}
        for key, default in ((CONFIG_PODS_READY_TIMEOUT, DEFAULT_PODS_READY_TIMEOUT_S),
                             (CONFIG_REQUEUE_BACKOFF_BASE, DEFAULT_BACKOFF_BASE_S),
                             (CONFIG_REQUEUE_BACKOFF_MAX, DEFAULT_BACKOFF_MAX_S)):
            raw = data.get(key)
            durations[key] = default
            if raw not in (None, ""):
                try:
                    durations[key] = parse_duration(str(raw).strip())
                except ValueError as e:
                    bad.append(f"{key}: {e}")
        limit = None
        raw = data.get(CONFIG_REQUEUE_BACKOFF_LIMIT)
        if raw not in (None, ""):
            try:
                limit = int(str(raw))
                if limit < 0:
                    raise ValueError
            except ValueError:
                bad.append(f"{CONFIG_REQUEUE_BACKOFF_LIMIT} {raw!r} is not a whole number >= 0")
                limit = None
        mode = str(data.get(CONFIG_STORE_MODE) or STORE_SHARED).strip()
        if mode not in STORE_MODES:
            # Not guessed: pods mounting the wrong layout would find no images. CRIU is unavailable
            # until it is fixed (criu_unavailable names it).
            bad.append(f"{CONFIG_STORE_MODE} {mode!r} is not one of {', '.join(STORE_MODES)}")
            store = ""
        return cls(image, store, grace, durations[CONFIG_PODS_READY_TIMEOUT], durations[CONFIG_REQUEUE_BACKOFF_BASE],
                   durations[CONFIG_REQUEUE_BACKOFF_MAX], limit, mode if mode in STORE_MODES else STORE_SHARED,
                   "; ".join(bad))

    @property
    def node_local_store(self) -> bool:
        return self.store_mode == STORE_NODE_LOCAL

    def criu_unavailable(self, mode: str = "CRIU") -> str:
        """Why the backends running ckq-run in the pods (CRIU, Signal) cannot run here ("" when they can)."""
        missing = [k for k, v in ((CONFIG_STORE_HOST_PATH, self.store_host_path),
                                  (CONFIG_RUNTIME_IMAGE, self.runtime_image)) if not v]
        if not missing:
            return ""
        why = f"{CONFIG_REF} does not give {' and '.join(missing)}"
        if self.problem:
            why += f" ({self.problem})"
        return why + f": {mode} checkpoints need the checkpoint store and the runtime image it names"


class SettingsSource:
    """The current settings, re-read from the API every `refresh_s`."""

    def __init__(self, api: ApiClient, refresh_s: float = REFRESH_S) -> None:
        self.api = api
        self.refresh_s = refresh_s
        self.current = ClusterSettings(problem=f"{CONFIG_REF} not read yet")
        self.read_at = -math.inf
        self.generation = 0  # bumped when the settings change

    @property
    def path(self) -> str:
        return f"/api/v1/namespaces/{CONFIG_NAMESPACE}/configmaps/{CONFIG_MAP}"

    def next_refresh(self) -> float:
        return self.read_at + self.refresh_s

    async def refresh(self, now: float, force: bool = False) -> bool:
        """Read the ConfigMap when due (or `force`); True when the settings changed."""
        if not force and now < self.next_refresh():
            return False
        self.read_at = now
        try:
            body = await self.api.request("GET", self.path)
            new = ClusterSettings.from_config_map(body.get("data") or {})
        except ApiError as e:
            problem = f"{CONFIG_REF} does not exist" if e.status == 404 else f"cannot read {CONFIG_REF}: {e}"
            new = ClusterSettings(problem=problem)
        except Exception as e:  # an outage: keep what was read last, try again at the next refresh
            log.warning("%s not read: %s", CONFIG_REF, e)
            return False
        if new == self.current:
            return False
        if new.problem and new.problem != self.current.problem:
            log.info("%s: %s", CONFIG_REF, new.problem)
        self.current = new
        self.generation += 1
        return True

"""Staging: before a restored pod runs on a node whose store lacks its images, its node's agent copies
them there (storeMode: node-local; docs/checkpointing.md, "The checkpoint store").

A restored pod carries `ckq.io/restore-from` (wire.RESTORE_FROM_ANNOTATION), the Checkpoint it resumes.
For each of its containers the Checkpoint's status names the artifact (uri, sha256, the node that
dumped it). When that node is another one and this node's store does not hold the checkpoint yet, the
agent fetches it from that node's agent (store/transfer.py: the source's InternalIP and the cluster's
storeTransferPort, the shared token), verifies it against the recorded sha256 and renames it into
place, which is what the pod's `ckq-run --await-staged` waits for. The outcome is an Event on the pod
(`Staged`, or a Warning `StagingFailed` with the reason); a failure also writes the failure marker
ckq-run reads (runtime/staging.py), so the container exits 69 at once and the controller's
RestoreFailed path falls back to the previous checkpoint — the same as for images that are corrupt
on a shared store.

Each (pod uid, container) is staged once per agent process; a restarted agent sees the pod again
(list, then watch), finds the checkpoint in place, or stages it again from the start.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

from queue_controller.agent.kube import NotFound, Obj
from queue_controller.agent.plan import PodInfo
from queue_controller.api.checkpoint import Artifact, Checkpoint
from queue_controller.runtime.staging import STAGING_FAILED_PREFIX
from queue_controller.store import fsops
from queue_controller.store.base import StoreError
from queue_controller.store.filesystem import CHECKPOINTS, FilesystemStore
from queue_controller.store.retention import delete_images
from queue_controller.store.transfer import StagingError, stage
from queue_controller.wire import format_time

log = logging.getLogger("ckq.agent.stage")


class StagerKube(Protocol):
    def get_node(self, name: str) -> Obj: ...
    def create_event(self, namespace: str, body: Obj) -> Obj: ...


@dataclass(frozen=True)
class Transfer:
    """How this node's agent reaches the others: their port (the same on every node) and the token."""

    port: int
    token: str
    timeout: float = 600.0
    retry_for: float = 120.0  # how long a transient failure (source unreachable, transfer cut) is retried


def internal_ip(node: Obj) -> str | None:
    for addr in (node.get("status") or {}).get("addresses") or ():
        if addr.get("type") == "InternalIP" and addr.get("address"):
            return str(addr["address"])
    return None


class Stager:
    def __init__(self, kube: StagerKube, store: FilesystemStore, node: str, transfer: Transfer,
                 checkpoint_of: Callable[[str, str], Obj | None], workers: int = 2,
                 recorded: Callable[[str], bool] | None = None) -> None:
        self.kube = kube
        self.store = store
        self.node = node
        self.transfer = transfer
        self.checkpoint_of = checkpoint_of  # (namespace, name) -> the cached Checkpoint
        # Whether any cached Checkpoint records an artifact uri (None: assume every one is recorded).
        self.recorded = recorded
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ckq-stage")
        self.lock = threading.Lock()
        self.taken: set[tuple[str, str]] = set()  # (pod uid, container): staged, failed or in flight
        self.stopping = threading.Event()

    # ---- what to stage ------------------------------------------------------------------------------
    def needed(self, pod: PodInfo) -> list[tuple[str, Artifact]] | None:
        """(container, artifact) this pod needs staged here; None while its Checkpoint is not known yet."""
        if not pod.restore_from or pod.node != self.node or pod.phase not in (None, "Pending", "Running"):
            return []
        raw = self.checkpoint_of(pod.namespace, pod.restore_from)
        if raw is None:
            return None
        try:
            ckpt = Checkpoint.model_validate(raw)
        except ValueError:
            return []
        arts = {a.container: a for a in (ckpt.status.artifacts if ckpt.status else [])
                if (a.pod_set, a.index) == (pod.pod_set, pod.index)}
        out = []
        for c in pod.containers:
            a = arts.get(c)
            if a is None or not a.node or a.node == self.node:
                continue  # dumped here (or nothing to stage): ckq-run finds it or refuses it itself
            with self.lock:
                if (pod.uid, c) in self.taken:
                    continue
            out.append((c, a))
        return out

    def consider(self, pod: PodInfo) -> None:
        """Stage, in the background, what `pod` needs and has not been asked for yet."""
        needed = self.needed(pod)
        for container, artifact in needed or ():
            with self.lock:
                if (pod.uid, container) in self.taken:
                    continue
                self.taken.add((pod.uid, container))
            self.pool.submit(self._stage_one, pod, container, artifact)

    # ---- staging one container's checkpoint ---------------------------------------------------------
    def _stage_one(self, pod: PodInfo, container: str, artifact: Artifact) -> None:
        where = f"pod {pod.namespace}/{pod.name} container {container}"
        source_node = artifact.node or ""
        try:
            try:
                node = self.kube.get_node(source_node)
            except NotFound:
                raise StagingError(f"node {source_node}, which holds checkpoint {artifact.uri}, is gone") from None
            ip = internal_ip(node)
            if ip is None:
                raise StagingError(f"node {source_node}, which holds checkpoint {artifact.uri}, has no InternalIP")
            source = f"http://{ip}:{self.transfer.port}"
            log.info("staging %s for %s from node %s (%s)", artifact.uri, where, source_node, source)
            installed = self._stage_retrying(pod, artifact, source, where)
        except StoreError as exc:
            message = f"staging checkpoint {pod.restore_from} for {where} on node {self.node} failed: {exc}"
            log.error("%s", message)
            self._mark_failed(pod, artifact, message)
            self._event(pod, "StagingFailed", message, warning=True)
            return
        except Exception as exc:  # anything unforeseen: say so on the pod, never leave it waiting blind
            message = (f"staging checkpoint {pod.restore_from} for {where} on node {self.node} failed: "
                       f"{type(exc).__name__}: {exc}")
            log.exception("%s", message)
            self._mark_failed(pod, artifact, message)
            self._event(pod, "StagingFailed", message, warning=True)
            return
        self._mark_unrecorded_ancestors(pod, artifact, installed)
        what = (f"{len(installed)} checkpoint(s) ({', '.join(installed)})" if installed
                else "nothing (already on this node)")
        message = (f"staged checkpoint {pod.restore_from} for container {container} from node {source_node}: "
                   f"{what}, verified against sha256 {(artifact.sha256 or '')[:16]}…")
        log.info("%s: %s", where, message)
        self._event(pod, "Staged", message, warning=False)

    def _stage_retrying(self, pod: PodInfo, artifact: Artifact, source: str, where: str) -> list[str]:
        """`stage`, asked again while the failure is transient (the serving agent restarting, the
        transfer cut off) for up to `transfer.retry_for` seconds with backoff: a source back within that
        time costs the restore nothing, where failing at once would fall back to an older checkpoint —
        from the same source, likely failing too — and then to a fresh start."""
        deadline = time.monotonic() + self.transfer.retry_for
        delay = 0.5
        while True:
            try:
                return stage(self.store, pod.namespace, artifact.uri, artifact.sha256 or "", source,
                             self.transfer.token, self.transfer.timeout)
            except StagingError as exc:
                if not exc.transient or time.monotonic() + delay > deadline or self.stopping.is_set():
                    raise
                log.warning("staging %s for %s: %s; asking again in %.1fs", artifact.uri, where, exc, delay)
                self.stopping.wait(delay)
                delay = min(delay * 2, 10.0)

    def _mark_unrecorded_ancestors(self, pod: PodInfo, artifact: Artifact, installed: list[str]) -> None:
        """An incremental checkpoint is staged with the ancestors it builds on, and an ancestor's own
        Checkpoint may be gone already (retention): no DELETED event will ever name this copy. Such
        copies are marked for deletion now, so the store keeps them only while a staged checkpoint
        builds on them and deletes them with the last one (as retention does on the node that dumped
        them)."""
        if self.recorded is None or not installed:
            return
        try:
            ref = self.store.parse(artifact.uri, pod.namespace)
            orphans = [uri for uri in (self.store.uri_for(ref.namespace, ref.job, ref.pod_set, ref.index,
                                                          ref.container, cid) for cid in installed)
                       if uri != artifact.uri and not self.recorded(uri)]
            if orphans:
                result = delete_images(self.store, pod.namespace, orphans)
                log.info("staged ancestors no Checkpoint records any more (retention): %d kept while a staged "
                         "checkpoint builds on them, %d deleted", len(result.deferred), len(result.deleted))
        except StoreError as exc:
            log.warning("could not mark staged ancestors of %s for deletion: %s", artifact.uri, exc)

    def _mark_failed(self, pod: PodInfo, artifact: Artifact, message: str) -> None:
        """The marker ckq-run --await-staged reads (runtime/staging.py), so the restore ends now."""
        try:
            ref = self.store.parse(artifact.uri, pod.namespace)
            with self.store.open_container(ref.namespace, ref.job, ref.pod_set, ref.index, ref.container,
                                           create=True) as cfd:
                kfd = fsops.ensure_dir(CHECKPOINTS, cfd, 0o700)
                try:
                    body = json.dumps({"podUid": pod.uid, "message": message[:4000]}).encode()
                    fsops.write_atomic_at(STAGING_FAILED_PREFIX + ref.checkpoint_id, body, kfd, 0o644)
                finally:
                    os.close(kfd)
        except (StoreError, OSError) as exc:
            log.error("could not record the staging failure for pod %s/%s (its restore times out instead): %s",
                      pod.namespace, pod.name, exc)

    def _event(self, pod: PodInfo, reason: str, message: str, warning: bool) -> None:
        at = format_time(time.time())
        body = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"generateName": f"{pod.name}.", "namespace": pod.namespace},
            "involvedObject": {"apiVersion": "v1", "kind": "Pod", "name": pod.name, "namespace": pod.namespace,
                               "uid": pod.uid},
            "reason": reason, "message": message[:1000], "type": "Warning" if warning else "Normal",
            "firstTimestamp": at, "lastTimestamp": at, "count": 1,
            "source": {"component": "ckq-agent", "host": self.node}, "reportingComponent": "ckq-agent",
        }
        try:
            self.kube.create_event(pod.namespace, body)
        except Exception as exc:  # Events are best effort; the log has the same line
            log.warning("event %s on pod %s/%s not recorded: %s", reason, pod.namespace, pod.name, exc)

    def shutdown(self) -> None:
        self.stopping.set()
        self.pool.shutdown(wait=False, cancel_futures=True)


__all__ = ["Stager", "StagerKube", "Transfer", "internal_ip"]

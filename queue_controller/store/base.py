"""The checkpoint store's interface: where container checkpoints live, and what may be done to them.

A store holds one directory per checkpointed container (`wire.container_store_dir`), in which `ckq-run`
writes its checkpoints (`checkpoints/<id>/`, each with a `manifest.json`). An artifact's uri
(`wire.artifact_uri`) names one of them. Every operation that takes a uri also takes the namespace
that asks: a uri is accepted only for the namespace whose directory holds it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from queue_controller.runtime.manifest import Manifest


class StoreError(Exception):
    """A refused or failed store operation; the message says which uri or path and why."""


@dataclass(frozen=True)
class ArtifactRef:
    """The parts of an artifact uri: one checkpoint of one container of one pod of one job."""

    namespace: str
    job: str
    pod_set: str
    index: int
    container: str
    checkpoint_id: str


@dataclass(frozen=True)
class StoredCheckpoint:
    """One checkpoint found in the store, as its manifest describes it."""

    ref: ArtifactRef
    uri: str
    sha256: str
    size_bytes: int
    created: str
    kind: str  # dump | pre-dump | signal
    parent: str | None
    pruned: bool  # retention asked to delete it; kept while a later checkpoint builds on it


DeleteOutcome = Literal["deleted", "deferred", "missing"]
"""deleted: gone; deferred: marked, and deleted once no kept incremental checkpoint needs it; missing:
there was nothing to delete (already gone)."""


class CheckpointStore(Protocol):
    """What the controller and the node agent need from a checkpoint store."""

    def dir_for(self, namespace: str, job: str, pod_set: str, index: int, container: str) -> Path:
        """The container's directory as this process sees it (ckq-run's --dir on the node)."""
        ...

    def uri_for(self, namespace: str, job: str, pod_set: str, index: int, container: str,
                checkpoint_id: str) -> str:
        """The artifact uri of one checkpoint (`wire.artifact_uri` of the cluster's store path)."""
        ...

    def parse(self, uri: str, namespace: str) -> ArtifactRef:
        """The parts of a uri of this store; StoreError if it is outside it or not `namespace`'s."""
        ...

    def list(self, namespace: str | None = None, job: str | None = None) -> list[StoredCheckpoint]:
        """Every complete checkpoint (one with a manifest), optionally of one namespace or job."""
        ...

    def verify(self, uri: str, namespace: str, sha256: str | None = None) -> Manifest:
        """Recompute the content hash of the checkpoint and of every ancestor it builds on; StoreError
        if any is missing or corrupted, or if its digest is not `sha256` (the one recorded)."""
        ...

    def delete(self, uri: str, namespace: str) -> DeleteOutcome:
        """Delete one checkpoint's images (or mark them, while an incremental checkpoint needs them)."""
        ...

    def bytes_stored(self, namespace: str | None = None, job: str | None = None) -> int:
        """Bytes of the regular files held for the whole store, a namespace, or a job."""
        ...

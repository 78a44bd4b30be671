"""Retention: when the controller prunes a Checkpoint beyond the job's `retain`, its images go too.

The controller calls `delete_checkpoint_images` before (or right after) it deletes the Checkpoint
object. Every artifact uri is checked by the store (inside the store root, in the Checkpoint's own
namespace, no `..`, no links followed); a refused uri is reported, never deleted. Deleting is
idempotent: an image already gone counts as `missing`. An image that a kept incremental checkpoint
builds on is marked and deleted when the last checkpoint that needs it goes (`deferred`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from queue_controller.api.checkpoint import Checkpoint
from queue_controller.store.base import CheckpointStore, StoreError

log = logging.getLogger("ckq.store")


@dataclass
class RetentionResult:
    deleted: list[str] = field(default_factory=list)
    deferred: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    refused: list[tuple[str, str]] = field(default_factory=list)  # (uri, why)

    @property
    def ok(self) -> bool:
        """Nothing was refused: every image of the Checkpoint is gone or marked for deletion."""
        return not self.refused


def delete_images(store: CheckpointStore, namespace: str, uris: list[str]) -> RetentionResult:
    result = RetentionResult()
    for uri in uris:
        try:
            outcome = store.delete(uri, namespace)
        except StoreError as exc:
            result.refused.append((uri, str(exc)))
            log.warning("retention: refused to delete %s: %s", uri, exc)
            continue
        getattr(result, outcome).append(uri)
    return result


def delete_checkpoint_images(store: CheckpointStore, checkpoint: Checkpoint) -> RetentionResult:
    """Delete the images of every artifact of a Checkpoint that is being pruned."""
    namespace = checkpoint.metadata.namespace
    if not namespace:
        raise StoreError(f"Checkpoint {checkpoint.metadata.name!r} has no namespace")
    uris = [a.uri for a in (checkpoint.status.artifacts if checkpoint.status else [])]
    result = delete_images(store, namespace, uris)
    if uris:
        log.info("retention: checkpoint %s/%s: %d deleted, %d kept until a later incremental checkpoint "
                 "goes, %d already gone, %d refused", namespace, checkpoint.metadata.name, len(result.deleted),
                 len(result.deferred), len(result.missing), len(result.refused))
    return result

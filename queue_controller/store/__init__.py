"""The checkpoint store: where checkpoint images live, behind one small interface (base.py).

`FilesystemStore` (filesystem.py) is the implementation over a directory mounted on every node, or
one per node (storeMode node-local, whose images the agents move with transfer.py);
`delete_checkpoint_images` (retention.py) is what the controller calls when it prunes a Checkpoint.
"""

from queue_controller.store.base import ArtifactRef, CheckpointStore, DeleteOutcome, StoredCheckpoint, StoreError
from queue_controller.store.filesystem import FilesystemStore
from queue_controller.store.retention import RetentionResult, delete_checkpoint_images, delete_images

__all__ = [
    "ArtifactRef",
    "CheckpointStore",
    "DeleteOutcome",
    "FilesystemStore",
    "RetentionResult",
    "StoreError",
    "StoredCheckpoint",
    "delete_checkpoint_images",
    "delete_images",
]

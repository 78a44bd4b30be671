"""Verifying a checkpoint (and its parent chain) and staging it as plain CRIU images for a restore."""

from __future__ import annotations

import json
import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from queue_controller.runtime import crypto, pagestore
from queue_controller.runtime import manifest as mf
from queue_controller.runtime.errors import RuntimeFailure
from queue_controller.runtime.store import RUNTIME_JSON, Store


@dataclass
class Prepared:
    manifest: mf.Manifest
    root: Path  # checkpoint content in plaintext (the checkpoint itself or a decrypted copy)
    images: Path  # full CRIU images (delta pages rebuilt)
    runtime: dict[str, Any]
    staging: Path | None  # to delete once the restore no longer needs it

    def cleanup(self) -> None:
        if self.staging:
            shutil.rmtree(self.staging, ignore_errors=True)


def verify_chain(store: Store, ckpt_id: str) -> mf.Manifest:
    """Check the checkpoint's content hash and every ancestor's, and that the links agree."""
    manifest = mf.verify(store.get(ckpt_id))
    child = manifest
    while child.parent:
        parent_dir = store.path(child.parent)
        if not (parent_dir / mf.MANIFEST).is_file():
            raise RuntimeFailure(
                f"checkpoint {manifest.id} is incremental and needs its ancestor {child.parent}, "
                "which is missing"
            )
        parent = mf.verify(parent_dir)
        if child.parentSha256 and parent.sha256 != child.parentSha256:
            raise RuntimeFailure(
                f"checkpoint {child.id} was taken against a different {parent.id} (sha256 mismatch)"
            )
        child = parent
    return manifest


def check_key(manifest: mf.Manifest, key: bytes | None) -> None:
    if not manifest.encryption:
        return
    if key is None:
        raise RuntimeFailure(f"checkpoint {manifest.id} is encrypted: pass --encrypt-key-file")
    expected = manifest.encryption.get("keyId")
    if expected and crypto.key_id(key) != expected:
        raise RuntimeFailure(
            f"wrong key for checkpoint {manifest.id}: it was encrypted with key id {expected}, "
            f"the given key has id {crypto.key_id(key)} (nothing was changed)"
        )


def prepare(store: Store, ckpt_id: str, key: bytes | None) -> Prepared:
    manifest = verify_chain(store, ckpt_id)
    if not manifest.restorable:
        raise RuntimeFailure(f"checkpoint {manifest.id} is a {manifest.kind}, which cannot be restored")
    check_key(manifest, key)
    source = store.path(manifest.id)
    staging: Path | None = None
    root = source
    try:
        if manifest.encryption:
            assert key is not None
            staging = _staging(store, manifest.id)
            root = staging / "plain"
            for path in sorted(p for p in source.rglob("*") if p.is_file() and p.name != mf.MANIFEST):
                rel = path.relative_to(source)
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                crypto.decrypt_file(key, path, root / rel, rel.as_posix())
        images = root / "images"
        if images.is_dir() and any(images.glob("*" + pagestore.RUNS_SUFFIX)):
            if staging is None:
                staging = _staging(store, manifest.id)
            rebuilt = staging / "images"
            rebuilt.mkdir()
            for img in images.iterdir():
                if not img.name.endswith((pagestore.RUNS_SUFFIX, pagestore.DELTA_SUFFIX)):
                    (rebuilt / img.name).symlink_to(img)
            pagestore.materialize(images, store.checkpoints, manifest.id, rebuilt)
            images = rebuilt
        runtime = json.loads((root / RUNTIME_JSON).read_text())
    except BaseException:
        if staging:
            shutil.rmtree(staging, ignore_errors=True)
        raise
    return Prepared(manifest=manifest, root=root, images=images, runtime=runtime, staging=staging)


def _staging(store: Store, ckpt_id: str) -> Path:
    path = store.root / f".restore-{ckpt_id}-{secrets.token_hex(3)}"
    path.mkdir(mode=0o700)
    os.chmod(path, 0o700)
    return path

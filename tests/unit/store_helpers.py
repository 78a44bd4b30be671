"""Checkpoints written the way ckq-run writes them (runtime/store.py publish), without CRIU."""

from __future__ import annotations

import os
from pathlib import Path

from queue_controller.runtime import manifest as mf
from queue_controller.runtime.store import Store


def fake_checkpoint(container_dir: Path, ckpt_id: str, *, parent: str | None = None, payload: bytes | None = None,
                    created: str = "2026-01-02T03:04:05Z", leave_running: bool = False,
                    kind: str = "dump") -> mf.Manifest:
    store = Store(container_dir)
    store.ensure()
    tmp = store.tmp(ckpt_id)
    (tmp / "images").mkdir(parents=True)
    (tmp / "images" / "pages-1.img").write_bytes(payload if payload is not None else os.urandom(4096))
    (tmp / "runtime.json").write_text('{"mode": "CRIU"}')
    parent_sha = mf.read_manifest(store.path(parent)).sha256 if parent else None
    manifest = mf.Manifest(id=ckpt_id, created=created, sizeBytes=0, sha256="", criuVersion="4.1.1",
                           kernel="6.18", durationSeconds=0.5, leaveRunning=leave_running, parent=parent,
                           kind=kind, parentSha256=parent_sha, chainDepth=1 if parent else 0)
    store.publish(tmp, manifest)
    return manifest

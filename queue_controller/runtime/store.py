"""The checkpoint directory layout: DIR/checkpoints/<id>/, DIR/logs/, DIR/ckq-run.sock.

A checkpoint is built under DIR/checkpoints/.tmp-<id>/, fsynced, then renamed into place, so a
directory named by an id is always complete. Anything named .tmp-* is debris of a crash.
"""

from __future__ import annotations

import os
import secrets
import shutil
import time
from pathlib import Path

from queue_controller.runtime import manifest as mf
from queue_controller.runtime.control import SOCKET_NAME
from queue_controller.runtime.errors import RuntimeFailure

TMP_PREFIX = ".tmp-"
RUNTIME_JSON = "runtime.json"


def new_id() -> str:
    """Sortable by creation time, unique, and a valid DNS label."""
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3)


class Store:
    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.checkpoints = self.root / "checkpoints"
        self.logs = self.root / "logs"
        self.socket = self.root / SOCKET_NAME

    def ensure(self) -> None:
        for d in (self.root, self.checkpoints, self.logs):
            d.mkdir(parents=True, exist_ok=True)
        os.chmod(self.checkpoints, 0o700)  # memory images are secrets

    def clean_debris(self) -> None:
        for stale in self.checkpoints.glob(TMP_PREFIX + "*"):
            shutil.rmtree(stale, ignore_errors=True)

    def tmp(self, ckpt_id: str) -> Path:
        return self.checkpoints / (TMP_PREFIX + ckpt_id)

    def path(self, ckpt_id: str) -> Path:
        return self.checkpoints / ckpt_id

    def ids(self) -> list[str]:
        if not self.checkpoints.is_dir():
            return []
        return sorted(p.name for p in self.checkpoints.iterdir()
                      if not p.name.startswith(".") and (p / mf.MANIFEST).is_file())

    def get(self, ckpt_id: str) -> Path:
        if ckpt_id == "latest":
            restorable = [i for i in self.ids() if mf.read_manifest(self.path(i)).restorable]
            if not restorable:
                raise RuntimeFailure(f"no restorable checkpoint in {self.checkpoints}")
            ckpt_id = restorable[-1]
        if "/" in ckpt_id or ckpt_id.startswith("."):
            raise RuntimeFailure(f"invalid checkpoint id {ckpt_id!r}")
        path = self.path(ckpt_id)
        if not (path / mf.MANIFEST).is_file():
            known = ", ".join(self.ids()[-5:]) or "none"
            raise RuntimeFailure(
                f"unknown checkpoint id {ckpt_id!r} in {self.checkpoints} (latest known: {known})"
            )
        return path

    def publish(self, tmp: Path, manifest: mf.Manifest, known: dict[str, str] | None = None) -> Path:
        """Hash+fsync every file, write the manifest, fsync directories, rename into place."""
        manifest.sha256, manifest.sizeBytes = mf.content_hash(tmp, sync=True, known=known)
        mf.write_manifest(tmp, manifest)
        for dirpath, _dirs, _files in os.walk(tmp):
            mf.fsync_dir(Path(dirpath))
        final = self.path(manifest.id)
        tmp.rename(final)
        mf.fsync_dir(self.checkpoints)
        return final

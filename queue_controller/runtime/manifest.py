"""Checkpoint manifests and the content hash that makes corruption detectable before a restore.

Content hash ("ckq-tree-v1"): for every regular file and symlink under the checkpoint directory except
``manifest.json``, take ``sha256(file bytes)`` (for a symlink: sha256 of its target text), build the
listing ``"<hex digest>  <relative/posix/path>\\n"`` sorted by path, and sha256 that listing. It covers
what is stored (ciphertext when encrypted), so it can be verified without the key.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from queue_controller.runtime.errors import RuntimeFailure

MANIFEST = "manifest.json"
HASH_SCHEME = "ckq-tree-v1"
_READ = 1 << 20


@dataclass
class Manifest:
    id: str
    created: str
    sizeBytes: int
    sha256: str
    criuVersion: str | None
    kernel: str
    durationSeconds: float
    leaveRunning: bool
    parent: str | None
    # Beyond the contract fields: what a restore and a retention policy need to know.
    mode: str = "CRIU"
    kind: str = "dump"  # dump | pre-dump | signal
    restorable: bool = True
    hashScheme: str = HASH_SCHEME
    parentSha256: str | None = None
    chainDepth: int = 0
    logicalSizeBytes: int = 0
    encryption: dict[str, str] | None = None
    gpu: dict[str, Any] | None = None
    phases: dict[str, float] = field(default_factory=dict)  # seconds per step, for tuning
    host: dict[str, str] = field(default_factory=dict)
    # A gang checkpoint's barrier (runtime/freezer.py): when the tree was frozen and when its dump
    # began (epoch seconds), so the order "all frozen, then any dumped" can be checked afterwards.
    frozenAt: float | None = None
    dumpStartedAt: float | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_READ):
            digest.update(chunk)  # hashlib drops the GIL on big buffers, so fsyncs overlap
    return digest.hexdigest()


def _entries(root: Path) -> list[Path]:
    out: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        base = Path(dirpath)
        for name in dirnames:
            if (base / name).is_symlink():
                out.append(base / name)
        for name in filenames:
            if base == root and name == MANIFEST:
                continue
            out.append(base / name)
    return sorted(out, key=lambda p: p.relative_to(root).as_posix())


def content_hash(root: Path, sync: bool = False, known: dict[str, str] | None = None) -> tuple[str, int]:
    """(tree hash, stored bytes). With sync, every file is fsynced while it is hashed.

    `known` maps relative paths to digests already computed while the files were written."""
    known = known or {}
    listing: list[str] = []
    total = 0
    entries = _entries(root)
    with ThreadPoolExecutor(max_workers=1) as pool:
        syncs = [pool.submit(_fsync_path, p) for p in entries if sync and not p.is_symlink()]
        for path in entries:
            rel = path.relative_to(root).as_posix()
            if path.is_symlink():
                digest = hashlib.sha256(os.readlink(path).encode()).hexdigest()
            else:
                digest = known.get(rel) or file_sha256(path)
                total += path.stat().st_size
            listing.append(f"{digest}  {rel}\n")
        for fut in syncs:
            fut.result()
    return hashlib.sha256("".join(listing).encode()).hexdigest(), total


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_manifest(root: Path, manifest: Manifest) -> None:
    target = root / MANIFEST
    with target.open("w") as fh:
        fh.write(manifest.to_json())
        fh.flush()
        os.fsync(fh.fileno())


def read_manifest(ckpt_dir: Path) -> Manifest:
    path = ckpt_dir / MANIFEST
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise RuntimeFailure(
            f"checkpoint {ckpt_dir.name} has no {MANIFEST}: incomplete or not a checkpoint"
        ) from None
    except (OSError, ValueError) as exc:
        raise RuntimeFailure(f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict) or "sha256" not in data or "id" not in data:
        raise RuntimeFailure(f"{path} is not a ckq checkpoint manifest")
    return Manifest.from_dict(data)


def verify(ckpt_dir: Path) -> Manifest:
    """Recompute the content hash; refuse a checkpoint whose content does not match its manifest."""
    manifest = read_manifest(ckpt_dir)
    if manifest.hashScheme != HASH_SCHEME:
        raise RuntimeFailure(f"checkpoint {manifest.id} uses unknown hash scheme {manifest.hashScheme!r}")
    actual, _ = content_hash(ckpt_dir)
    if actual != manifest.sha256:
        raise RuntimeFailure(
            f"checkpoint {manifest.id} is corrupted: content sha256 {actual[:16]}… does not match "
            f"the manifest's {manifest.sha256[:16]}…; refusing to restore it"
        )
    return manifest

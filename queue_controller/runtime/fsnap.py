"""Snapshots of declared writable paths: CRIU records open files by path and size, not contents.

The tar is taken from CRIU's ``post-dump`` action-script hook, while the workload is still frozen, so
the files match the memory image exactly (a file the process appended to after the dump would
otherwise fail CRIU's size check on restore). Restore extracts it before CRIU runs.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tarfile
from pathlib import Path

from queue_controller.runtime.errors import RuntimeFailure

ENV_OUT = "CKQ_FSNAP_OUT"
ENV_PATHS = "CKQ_FSNAP_PATHS"
TAR_NAME = "files.tar"


def snapshot(paths: list[str], out: Path) -> None:
    """Tar each path (absolute arcnames without the leading slash); missing paths are skipped."""
    with tarfile.open(out, "w") as tar:
        for raw in paths:
            path = Path(raw).resolve()
            if path.exists():
                tar.add(str(path), arcname=str(path).lstrip("/"), recursive=True)


def restore(tar_path: Path, paths: list[str]) -> None:
    """Put declared paths back exactly as they were at the dump: clear them, then extract."""
    for raw in paths:
        path = Path(raw).resolve()
        if path.is_dir() and not path.is_symlink():
            for child in path.iterdir():
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()
        elif path.exists() or path.is_symlink():
            path.unlink()
    allowed = [Path(p).resolve() for p in paths]
    with tarfile.open(tar_path) as tar:
        for member in tar.getmembers():
            target = Path("/" + member.name).resolve()
            # Refuse anything outside the declared paths: a checkpoint must not write elsewhere.
            if not any(target == a or a in target.parents for a in allowed):
                raise RuntimeFailure(f"files.tar holds {target}, outside the declared writable paths")
        # Owners and modes must come back as they were: the "fully_trusted" filter, which is also what
        # Pythons older than 3.11.4 (no `filter` argument; e.g. the injected runtime's 3.11.2) do.
        if hasattr(tarfile, "fully_trusted_filter"):
            tar.extractall("/", filter="fully_trusted")
        else:
            tar.extractall("/")


def hook() -> int:
    """Entry for CRIU's --action-script: act only at post-dump (tasks still frozen)."""
    if os.environ.get("CRTOOLS_SCRIPT_ACTION") != "post-dump":
        return 0
    out = os.environ.get(ENV_OUT)
    if not out:
        return 0
    try:
        snapshot(json.loads(os.environ.get(ENV_PATHS, "[]")), Path(out))
    except (OSError, tarfile.TarError) as exc:
        print(f"ckq-run: snapshot of writable paths failed: {exc}", file=sys.stderr)
        return 1  # a non-zero hook makes CRIU fail the dump and resume the workload
    return 0


if __name__ == "__main__":
    sys.exit(hook())

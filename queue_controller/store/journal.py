"""The node agent's journal: which ckq-run checkpoint it asked for on behalf of which Checkpoint.

One small JSON file per (container, Checkpoint object), `<container dir>/.ckq-agent/<uid>.json`,
written durably *before* the agent asks ckq-run for a dump and again when the answer arrives. It is
what makes the agent idempotent across restarts (ckq-run's control protocol has no way to tag a dump
with the Checkpoint it belongs to):

* entry with `checkpointId`: the dump finished; the agent records that artifact and never asks again;
* entry with `error`: the dump failed; the Checkpoint is marked Failed (again, harmlessly);
* entry with neither: the agent stopped while the request was in flight. The dump may have
  finished, may still be running, or never started. The agent waits while ckq-run has a dump in
  progress (`checkpoints/.tmp-*`), then adopts the oldest complete dump created at or after
  `requestedAt` (whole seconds, the same clock: same node) with the requested leaveRunning that no
  other entry claims; if there is none it asks again only if the workload is still running (so no
  dump happened), and otherwise reports the Checkpoint Failed.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from dataclasses import asdict, dataclass
from typing import Any

from queue_controller.store import fsops

JOURNAL_DIR = ".ckq-agent"
_UID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,63}$")


@dataclass
class JournalEntry:
    uid: str  # the Checkpoint object's metadata.uid
    checkpoint: str  # namespace/name, for people reading the file
    node: str
    pod: str
    leaveRunning: bool
    requestedAt: float  # just before the request was sent
    checkpointId: str | None = None  # ckq-run's id once the dump finished
    error: str | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JournalEntry:
        known = set(cls.__dataclass_fields__)
        entry = cls(**{k: v for k, v in data.items() if k in known})
        if not isinstance(entry.requestedAt, int | float) or not isinstance(entry.uid, str):
            raise ValueError("malformed journal entry")
        return entry


class Journal:
    """The journal of one container directory (an open fd of it; nothing below it is followed)."""

    def __init__(self, container_fd: int) -> None:
        self.container_fd = container_fd

    @staticmethod
    def _name(uid: str) -> str:
        if not _UID.fullmatch(uid):
            raise ValueError(f"invalid Checkpoint uid {uid!r}")
        return f"{uid}.json"

    def _dir(self, create: bool) -> int | None:
        try:
            if create:
                return fsops.ensure_dir(JOURNAL_DIR, self.container_fd, 0o700)
            return fsops.open_dir(JOURNAL_DIR, self.container_fd)
        except FileNotFoundError:
            return None

    def get(self, uid: str) -> JournalEntry | None:
        fd = self._dir(create=False)
        if fd is None:
            return None
        try:
            return JournalEntry.from_dict(fsops.read_json_at(self._name(uid), fd))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError):
            return None  # a torn or foreign file: treated as absent (the write is atomic, so rare)
        finally:
            os.close(fd)

    def put(self, entry: JournalEntry) -> None:
        fd = self._dir(create=True)
        assert fd is not None
        try:
            data = json.dumps(asdict(entry), indent=2, sort_keys=True).encode() + b"\n"
            fsops.write_atomic_at(self._name(entry.uid), data, fd)
        finally:
            os.close(fd)

    def entries(self) -> list[JournalEntry]:
        fd = self._dir(create=False)
        if fd is None:
            return []
        out = []
        try:
            for name in sorted(os.listdir(fd)):
                if not name.endswith(".json") or name.startswith("."):
                    continue
                with contextlib.suppress(OSError, ValueError, TypeError):
                    out.append(JournalEntry.from_dict(fsops.read_json_at(name, fd)))
        finally:
            os.close(fd)
        return out

    def claimed_ids(self, except_uid: str | None = None) -> set[str]:
        return {e.checkpointId for e in self.entries() if e.checkpointId and e.uid != except_uid}

    def forget(self, checkpoint_ids: set[str]) -> None:
        """Drop the entries of deleted checkpoints (retention), so the journal does not outlive them."""
        fd = self._dir(create=False)
        if fd is None:
            return
        try:
            for name in os.listdir(fd):
                if not name.endswith(".json") or name.startswith("."):
                    continue
                try:
                    entry = JournalEntry.from_dict(fsops.read_json_at(name, fd))
                except (OSError, ValueError, TypeError):
                    continue
                if entry.checkpointId in checkpoint_ids:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(name, dir_fd=fd)
        finally:
            os.close(fd)

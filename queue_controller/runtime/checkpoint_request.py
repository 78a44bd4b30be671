"""What taking one checkpoint involves, whichever way it is taken.

ckq-run takes a checkpoint in one of two ways: a CRIU dump of the workload's processes (checkpointer.py)
or, in Signal mode, by asking the application to save its own state (signal_mode.py). Both start from a
`Request` under the supervisor's `Settings`, and both end the same way: a manifest describing the
checkpoint, published atomically into the store. `Publisher` is that shared ending, as a way of taking a
checkpoint sees it; the `Checkpointer` provides it.

This module sits below both ways, so that neither has to import the other to know these types.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from queue_controller.runtime import manifest as mf
from queue_controller.runtime.store import Store


@dataclass
class Request:
    leave_running: bool = False
    pre_dump: bool = False
    full: bool = False
    frozen_at: float | None = None  # epoch seconds the tree was frozen for a gang barrier (freezer.py)


@dataclass
class Settings:
    store: Store
    mode: str = "CRIU"  # CRIU | Signal
    tcp: str = "close"  # close | established
    writable: list[str] = field(default_factory=list)
    key: bytes | None = None
    max_chain: int = 8
    signal: int = signal.SIGUSR1
    signal_timeout: float = 300.0
    extra_criu: list[str] = field(default_factory=list)
    staging: str = "auto"  # where incremental dumps stage full images: auto (/dev/shm), none, a path


@dataclass
class Chain:
    """The checkpoint a next incremental dump compares against (this life's latest, or the restored one)."""

    head: str | None = None
    depth: int = 0


class Publisher(Protocol):
    """What a way of taking a checkpoint uses from the checkpointer: the settings, the runtime record
    stored with every checkpoint, the manifest, and publishing into the store."""

    s: Settings

    def runtime_info(self, pid: int, gpu_pids: list[int]) -> dict[str, Any]: ...

    def manifest(self, ckpt_id: str, started: float, req: Request, parent: str | None,
                 logical: int, kind: str) -> mf.Manifest: ...

    def finish(self, tmp: Path, manifest: mf.Manifest, started: float,
               known: dict[str, str] | None = None) -> mf.Manifest: ...

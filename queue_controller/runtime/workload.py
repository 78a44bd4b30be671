"""Helper for Signal-mode workloads: register a save function, find the state to resume from.

    from queue_controller.runtime import workload

    state = workload.restore_dir()          # a Path when started from a checkpoint, else None
    workload.on_checkpoint(lambda d: save_state_to(d))

The protocol, for apps in other languages: on the signal (default SIGUSR1, $CKQ_CHECKPOINT_SIGNAL),
read ``$CKQ_CHECKPOINT_DIR/ckq-request.json`` = ``{"id", "stateDir", "ackFile"}``, write the state
under stateDir, then create ackFile. On restore, the state is in ``$CKQ_RESTORE_DIR`` (read-only).
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable
from pathlib import Path
from types import FrameType

REQUEST_FILE = "ckq-request.json"
SaveFn = Callable[[Path], None]

_pending = False
_save: SaveFn | None = None


def restore_dir() -> Path | None:
    value = os.environ.get("CKQ_RESTORE_DIR")
    return Path(value) if value else None


def _request() -> dict[str, str] | None:
    base = os.environ.get("CKQ_CHECKPOINT_DIR")
    if not base:
        return None
    try:
        data: dict[str, str] = json.loads((Path(base) / REQUEST_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data


def save_now(save: SaveFn | None = None) -> bool:
    """Answer the pending request: call save(stateDir), then create the ack file."""
    global _pending
    fn = save or _save
    req = _request()
    _pending = False
    if fn is None or req is None:
        return False
    fn(Path(req["stateDir"]))
    Path(req["ackFile"]).touch()
    return True


def on_checkpoint(save: SaveFn, *, at_safe_points: bool = False) -> None:
    """Install the handler. With at_safe_points the save happens in checkpoint_if_requested()."""
    global _save
    _save = save
    signum = signal.Signals[os.environ.get("CKQ_CHECKPOINT_SIGNAL", "SIGUSR1")]

    def handler(_sig: int, _frame: FrameType | None) -> None:
        global _pending
        _pending = True
        if not at_safe_points:
            save_now()

    signal.signal(signum, handler)


def checkpoint_if_requested() -> bool:
    """Call at safe points (e.g. between training steps) when registered with at_safe_points."""
    return save_now() if _pending else False

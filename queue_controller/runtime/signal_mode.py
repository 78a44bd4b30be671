"""Signal mode: the application saves its own state when signalled (no CRIU).

Protocol: ckq-run writes DIR/ckq-request.json = {"id", "stateDir", "ackFile"}, sends the signal, and
waits for ackFile; the app writes its state under stateDir first. See workload.py for the helper.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time

from queue_controller.runtime import fsnap, procfs
from queue_controller.runtime import manifest as mf
from queue_controller.runtime.checkpoint_request import Publisher, Request
from queue_controller.runtime.errors import RuntimeFailure
from queue_controller.runtime.store import RUNTIME_JSON, new_id

REQUEST_FILE = "ckq-request.json"


def take(cp: Publisher, pid: int, req: Request) -> mf.Manifest:
    """Ask the app to save itself: request file, signal, wait for the ack, then publish like a dump."""
    started = time.monotonic()
    ckpt_id = new_id()
    tmp = cp.s.store.tmp(ckpt_id)
    state = tmp / "state"
    state.mkdir(parents=True)
    ack = tmp / "ack"
    request_file = cp.s.store.root / REQUEST_FILE
    request_file.write_text(json.dumps({"id": ckpt_id, "stateDir": str(state), "ackFile": str(ack)}))
    try:
        try:
            os.kill(pid, cp.s.signal)
        except ProcessLookupError:
            raise RuntimeFailure("the workload exited before it could be signalled") from None
        deadline = time.monotonic() + cp.s.signal_timeout
        while not ack.exists():
            if time.monotonic() > deadline:
                raise RuntimeFailure(
                    f"the workload did not acknowledge {signal.Signals(cp.s.signal).name} within "
                    f"{cp.s.signal_timeout:g}s (it must write its state to stateDir and create "
                    f"ackFile, see {request_file})"
                )
            if not procfs.alive(pid):
                raise RuntimeFailure("the workload exited while saving its state")
            time.sleep(0.02)
        ack.unlink()
        if cp.s.writable:
            fsnap.snapshot(cp.s.writable, tmp / fsnap.TAR_NAME)
        (tmp / RUNTIME_JSON).write_text(json.dumps(cp.runtime_info(pid, []), indent=2))
        logical = sum(p.stat().st_size for p in tmp.rglob("*") if p.is_file())
        manifest = cp.manifest(ckpt_id, started, req, None, logical, "signal")
        return cp.finish(tmp, manifest, started)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        request_file.unlink(missing_ok=True)

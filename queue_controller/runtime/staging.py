"""Waiting for a checkpoint to be staged on this node before restoring it (node-local stores).

With a node-local store (docs/checkpointing.md, "The checkpoint store"), a pod restored on another
node than the one that dumped it finds an empty checkpoint directory: its node's agent copies the
images over (queue_controller/store/transfer.py) and renames the verified copy into
`checkpoints/<id>/`, so the directory appearing is the "staged" signal (a directory named by an id is
always complete, runtime/store.py). If staging fails the agent writes `checkpoints/<STAGING_FAILED
prefix><id>` with the reason and the uid of the pod it staged for; `ckq-run --await-staged SECONDS`
then exits 69 (restore refused) with that reason, as it does when the wait times out, and the
controller's RestoreFailed path falls back to the previous checkpoint. A marker written for an
earlier pod (another uid) is not this pod's failure: its own agent retries.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from queue_controller.runtime import manifest as mf
from queue_controller.runtime.errors import RuntimeFailure

STAGING_FAILED_PREFIX = ".ckq-staging-failed-"
POD_UID_ENV = "CKQ_POD_UID"  # wire.POD_UID_ENV (the runtime image does not carry wire.py)
POLL_S = 0.5


def failure_marker(checkpoints: Path, ckpt_id: str) -> Path:
    return checkpoints / (STAGING_FAILED_PREFIX + ckpt_id)


def read_failure(checkpoints: Path, ckpt_id: str, pod_uid: str | None) -> str | None:
    """The staging failure recorded for this pod (any pod when `pod_uid` is None), or None."""
    try:
        data = json.loads(failure_marker(checkpoints, ckpt_id).read_text()[:65536])
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    if pod_uid and data.get("podUid") and data.get("podUid") != pod_uid:
        return None
    return str(data.get("message") or "staging failed (no reason recorded)")


def await_staged(checkpoints: Path, ckpt_id: str, timeout: float, pod_uid: str | None = None) -> None:
    """Return once checkpoints/<id>/ holds a manifest; RuntimeFailure when the node agent reports the
    staging failed or after `timeout` seconds."""
    if "/" in ckpt_id or ckpt_id.startswith("."):
        raise RuntimeFailure(f"invalid checkpoint id {ckpt_id!r}")
    if pod_uid is None:
        pod_uid = os.environ.get(POD_UID_ENV) or None
    deadline = time.monotonic() + timeout
    announced = False
    while True:
        if (checkpoints / ckpt_id / mf.MANIFEST).is_file():
            return
        failed = read_failure(checkpoints, ckpt_id, pod_uid)
        if failed is not None:
            raise RuntimeFailure(f"checkpoint {ckpt_id} could not be staged on this node: {failed}")
        if time.monotonic() >= deadline:
            raise RuntimeFailure(f"checkpoint {ckpt_id} was not staged on this node within {timeout:.0f}s: "
                                 "the node agent copies images dumped on another node (see its log and "
                                 "the pod's Events)")
        if not announced:
            print(f"ckq-run: waiting up to {timeout:.0f}s for checkpoint {ckpt_id} to be staged on this "
                  "node", file=sys.stderr, flush=True)
            announced = True
        time.sleep(POLL_S)

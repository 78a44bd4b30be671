"""The checkpoint store failing under a running job, on real nodes (issue 14: store full or read-only).

A job takes periodic leave-running CRIU checkpoints. Its container's store then fails — remounted
read-only inside the pod, or full (a 4 MiB tmpfs under the container's store directory) — and the
next checkpoint must fail *clearly*: the Checkpoint is Failed with the store's error in its message, a
Warning Event says so, the job keeps running, and no half-written image is left in the store. Once the
store is back, the next periodic checkpoint completes; the workload's process is then SIGKILLed and
the job must come back from that checkpoint with its memory: the nonce drawn at its start and the
digest of an uninterrupted run. Nothing was silently lost on the way.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from queue_controller.checkpoint.injection import CHECKPOINT_MOUNT
from queue_controller.wire import RESTORE_FROM_ANNOTATION, container_store_dir
from tests.e2e.test_real_checkpoints import (  # noqa: F401  (fixtures)
    STEPS,
    WORKLOAD,
    _nonce_of,
    _only_pod,
    _queue,
    _workload_pids,
    controller,
    expected_digest,
    real_job,
    real_kube,
    real_ns,
)
from tests.e2e.test_real_checkpoints import _final_of as final_of
from tests.plugins.controller import ControllerProcess, Kube
from tests.plugins.realnodes import RealCluster

pytestmark = pytest.mark.e2e

# The usual workload, run longer (~90 s): a periodic checkpoint must still come after the fault is mended.
LONG_STEPS = 900
LONG_WORKLOAD = WORKLOAD.replace(f"range({STEPS})", f"range({LONG_STEPS})")
assert LONG_WORKLOAD != WORKLOAD

MS_RDONLY, MS_REMOUNT, MS_BIND = 1, 32, 4096

# Run by a fresh (single-threaded) interpreter: enter the pod's mount namespace and remount its
# checkpoint volume. The container image need not have a `mount` binary.
_REMOUNT = r"""
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
fd = os.open(f"/proc/{sys.argv[1]}/ns/mnt", os.O_RDONLY)
if libc.setns(fd, 0x00020000) != 0:
    sys.exit(f"setns: {os.strerror(ctypes.get_errno())}")
if libc.mount(None, sys.argv[2].encode(), None, int(sys.argv[3]), None) != 0:
    sys.exit(f"mount: {os.strerror(ctypes.get_errno())}")
"""


def _remount(pid: int, flags: int) -> None:
    proc = subprocess.run([sys.executable, "-c", _REMOUNT, str(pid), CHECKPOINT_MOUNT, str(flags)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def _mount_tmpfs(path: str, size: str, *, remount: bool = False) -> None:
    opts = f"remount,size={size}" if remount else f"size={size},mode=0700"
    subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", path], check=True)


def _checkpoints(kube: Kube, ns: str, job: str) -> list[dict[str, Any]]:
    return sorted((c for c in kube.list("checkpoints", ns) if c["spec"]["jobName"] == job),
                  key=lambda c: c["metadata"]["creationTimestamp"] + c["metadata"]["name"])


def _phase(c: dict[str, Any]) -> str:
    return str((c.get("status") or {}).get("phase") or "")


@pytest.mark.parametrize("fault", ["read-only", "full"])
def test_a_failing_store_fails_the_checkpoint_clearly_and_loses_nothing(
    fault: str, real_kube: Kube, real_ns: str, controller: ControllerProcess,  # noqa: F811  (fixtures)
    real_cluster: RealCluster,
) -> None:
    kube, ns, job = real_kube, real_ns, "steady"
    store_dir = container_store_dir(real_cluster.state.store, ns, job, "worker", 0, "train")
    cq = _queue(kube, ns, "2")
    tmpfs = False
    try:
        if fault == "full":
            # Room for ckq-run's socket and logs, not for a dump (the workload's image is > 10 MiB).
            os.makedirs(store_dir, exist_ok=True)
            _mount_tmpfs(store_dir, "4m")
            tmpfs = True
        kube.create("checkpointablejobs", real_job(job, "main", pods=1, cpu="1", script=LONG_WORKLOAD,
                                                       checkpoint={"interval": "6s"}), ns)
        kube.wait_phase(ns, job, "Running", timeout=120)
        pod = kube.wait("the first pod", lambda: _only_pod(kube, ns, job, "1"), timeout=30)
        nonce = kube.wait("the nonce", lambda: _nonce_of(kube, ns, pod.metadata.name), timeout=60)
        node = next(n for n in real_cluster.state.real_nodes if n.name == pod.spec.node_name)
        [pid] = kube.wait("the workload's process", lambda: _workload_pids(node, "nonce"), timeout=10)

        restore: Callable[[], None]
        if fault == "read-only":
            kube.wait("a first periodic checkpoint", lambda: any(
                _phase(c) == "Completed" for c in _checkpoints(kube, ns, job)), timeout=90)
            _remount(pid, MS_REMOUNT | MS_BIND | MS_RDONLY)
            restore, error = (lambda: _remount(pid, MS_REMOUNT | MS_BIND)), "Read-only file system"
        else:
            restore, error = (lambda: _mount_tmpfs(store_dir, "512m", remount=True)), "No space left on device"
        before = {c["metadata"]["name"] for c in _checkpoints(kube, ns, job)}

        failed = kube.wait("a checkpoint failed by the store", lambda: next(
            (c for c in _checkpoints(kube, ns, job) if c["metadata"]["name"] not in before and _phase(c) == "Failed"),
            None), timeout=120)
        assert error in failed["status"]["message"], failed["status"]
        events = kube.wait("its Warning Event", lambda: [
            e for e in kube.core.list_namespaced_event(ns).items
            if e.reason == "CheckpointFailed" and e.type == "Warning" and failed["metadata"]["name"] in e.message],
            timeout=30)
        assert error in events[0].message
        st = kube.job(ns, job)["status"]
        assert st["phase"] == "Running" and int(st.get("checkpointFailures") or 0) >= 1, st
        # Nothing half-written stays behind: the store holds only completed checkpoints' images. A dump
        # in flight right now has its temporary directory; it must be gone once that dump ends too.
        def leftovers() -> set[str]:
            completed = {a["uri"].rsplit("/", 1)[1] for c in _checkpoints(kube, ns, job) if _phase(c) == "Completed"
                         for a in (c["status"].get("artifacts") or [])}
            return {p.name for p in (Path(store_dir) / "checkpoints").iterdir()} - completed

        seen = leftovers()
        kube.wait(f"no partial image left in the store (seen: {sorted(seen)})",
                  lambda: not (leftovers() & seen), timeout=90)

        restore()
        good = kube.wait("a checkpoint completed once the store is back", lambda: next(
            (c for c in reversed(_checkpoints(kube, ns, job))
             if _phase(c) == "Completed" and c["metadata"]["creationTimestamp"] >= failed["metadata"]
             ["creationTimestamp"] and c["metadata"]["name"] != failed["metadata"]["name"]), None), timeout=120)
        def completed_since_fault() -> set[str]:
            return {c["metadata"]["name"] for c in _checkpoints(kube, ns, job) if _phase(c) == "Completed"
                    and c["metadata"]["creationTimestamp"] >= failed["metadata"]["creationTimestamp"]}

        candidates = completed_since_fault()
        os.kill(pid, signal.SIGKILL)
        candidates |= completed_since_fault()  # one that completed as the process died (retention prunes later)
        kube.wait("a restart", lambda: int((kube.job(ns, job).get("status") or {}).get("restarts") or 0) == 1,
                  timeout=120)
        kube.wait_phase(ns, job, "Succeeded", timeout=300)
        resumed = max(kube.pods(ns, job), key=lambda p: int(p.metadata.labels["ckq.io/attempt"]))
        assert resumed.metadata.labels["ckq.io/attempt"] != "1"
        # It came back from a checkpoint taken after the store failed (`good` or a later periodic one).
        restored_from = (resumed.metadata.annotations or {}).get(RESTORE_FROM_ANNOTATION)
        assert good["metadata"]["name"] in candidates
        assert restored_from in candidates, (restored_from, sorted(candidates))
        assert final_of(kube, ns, resumed.metadata.name) == (nonce, expected_digest(nonce, LONG_STEPS))
    finally:
        kube.delete("checkpointablejobs", job, ns)
        kube.delete("clusterqueues", cq)
        if tmpfs:
            kube.wait("the job's pods gone", lambda: not kube.pods(ns, job), timeout=120)
            subprocess.run(["umount", "-l", store_dir], check=False)


"""Which way ckq-run drives a GPU checkpoint, and the refusal when none can (no GPU needed).

The checkpoint itself is proven on a GPU by tests/criu/test_gpu.py (skipped where there is none).
"""

from __future__ import annotations

import ctypes.util
import os
import stat
from pathlib import Path

import pytest

from queue_controller.runtime import gpu
from queue_controller.runtime.errors import RuntimeFailure

pytestmark = pytest.mark.unit

no_driver = pytest.mark.skipif(ctypes.util.find_library("cuda") is not None,
                               reason="this machine has an NVIDIA driver; the no-driver cases do not apply")


def test_the_lock_arguments_match_the_driver_struct() -> None:
    # CUcheckpointLockArgs: unsigned int timeoutMs; unsigned int reserved0; cuuint64_t reserved1[7]
    assert ctypes.sizeof(gpu._LockArgs) == 64
    assert gpu._LockArgs(timeoutMs=5).timeoutMs == 5


@no_driver
def test_without_a_driver_or_tool_a_gpu_process_is_refused_not_dumped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CKQ_CUDA_CHECKPOINT", raising=False)
    monkeypatch.setenv("PATH", "/nonexistent")
    assert gpu.driver_api() is None
    assert gpu.backend() == ""
    with pytest.raises(RuntimeFailure, match=r"no checkpoint API \(cuCheckpointProcess\*, driver r570\+\)"):
        gpu.suspend([os.getpid()])


def test_a_named_tool_is_used_and_its_failure_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """CKQ_CUDA_CHECKPOINT wins over the driver API; the tool's stderr reaches the error."""
    calls = tmp_path / "calls"
    fake = tmp_path / "cuda-checkpoint"
    fake.write_text(f"#!/bin/sh\necho \"$@\" >> {calls}\n"
                    "[ \"$2\" = checkpoint ] && { echo 'out of host memory' >&2; exit 3; }\nexit 0\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("CKQ_CUDA_CHECKPOINT", str(fake))
    assert gpu.backend() == str(fake)
    with pytest.raises(RuntimeFailure, match="--action checkpoint --pid 41 failed: out of host memory"):
        gpu.suspend([41])
    # locked, failed to checkpoint, then put back: restore is tried and the process unlocked
    assert calls.read_text().splitlines() == [
        "--action lock --pid 41 --timeout 60000", "--action checkpoint --pid 41",
        "--action restore --pid 41", "--action unlock --pid 41"]


def test_a_process_suspended_by_a_freeze_is_still_a_gpu_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """A checkpointed CUDA process no longer maps /dev/nvidia*: the dump taken under a gang freeze must
    still count it (found on an H200: the manifest had no GPU processes, so the restore never resumed them)."""
    me = os.getpid()
    assert "/dev/nvidia" not in Path(f"/proc/{me}/maps").read_text()
    assert gpu.gpu_pids(me) == []
    monkeypatch.setattr(gpu, "_suspended", {me})
    assert gpu.gpu_pids(me) == [me]
    assert gpu.suspended(gpu.gpu_pids(me))

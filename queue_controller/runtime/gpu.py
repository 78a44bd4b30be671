"""NVIDIA GPU state around a CRIU dump: cuda-checkpoint moves device memory to host memory first.

A process that has /dev/nvidia* mapped cannot be dumped by plain CRIU. With `cuda-checkpoint` on PATH
(driver >= 550) we lock and checkpoint every CUDA process of the tree before the dump, and after the
dump (leave-running) or restore we restore and unlock them. CRIU 4.x's CUDA plugin does the same from
inside CRIU; calling the tool directly keeps one code path for every CRIU build.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from queue_controller.runtime import procfs
from queue_controller.runtime.errors import RuntimeFailure


def gpu_pids(root: int) -> list[int]:
    """Processes of the tree that map an NVIDIA device."""
    found = []
    for pid in procfs.tree(root):
        try:
            maps = Path(f"/proc/{pid}/maps").read_text()
        except OSError:
            continue
        if "/dev/nvidia" in maps:
            found.append(pid)
    return found


def tool() -> str | None:
    return os.environ.get("CKQ_CUDA_CHECKPOINT") or shutil.which("cuda-checkpoint")


def _action(pid: int, action: str, timeout_ms: int = 60000) -> None:
    exe = tool()
    if exe is None:
        raise RuntimeFailure(
            f"process {pid} holds an NVIDIA GPU but cuda-checkpoint is not installed; "
            "GPU state cannot be checkpointed"
        )
    args = [exe, "--action", action, "--pid", str(pid)]
    if action == "lock":
        args += ["--timeout", str(timeout_ms)]
    proc = subprocess.run(args, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeFailure(f"cuda-checkpoint --action {action} --pid {pid} failed: {proc.stderr.strip()}")


def suspend(pids: list[int]) -> None:
    """Lock then checkpoint (device memory → host) every CUDA process."""
    for pid in pids:
        _action(pid, "lock")
    for pid in pids:
        _action(pid, "checkpoint")


def resume(pids: list[int]) -> None:
    for pid in pids:
        _action(pid, "restore")
    for pid in pids:
        _action(pid, "unlock")

"""NVIDIA GPU state around a CRIU dump: the driver moves device memory into host memory first.

A process that has /dev/nvidia* mapped cannot be dumped by plain CRIU. Before the dump every CUDA
process of the tree is *locked* (the driver waits for its in-flight work and blocks new calls) and
*checkpointed* (device memory and the driver's state move into the process's host memory, where CRIU
sees them as ordinary pages). After a leave-running dump, or after a restore, each is *restored*
(host → device) and *unlocked*. States: RUNNING → LOCKED → CHECKPOINTED → LOCKED → RUNNING.

Two ways to drive it, the same four steps:
- **the driver API** (`cuCheckpointProcess{GetState,Lock,Checkpoint,Restore,Unlock}` in
  `libcuda.so.1`, driver r570+), called through ctypes from ckq-run, which is not itself a CUDA
  process (no `cuInit` is needed to act on another process). Nothing beyond the driver is needed, so
  this is the default wherever the driver exports the functions;
- **NVIDIA's `cuda-checkpoint` tool** (the same calls in a 6 KB binary), used when
  `$CKQ_CUDA_CHECKPOINT` names it explicitly, or as the fallback for drivers without the API.

Neither available, or a step failing, is a `RuntimeFailure` naming the process and the step: a GPU
process is never dumped without its device state.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import shutil
import subprocess
from pathlib import Path

from queue_controller.runtime import procfs
from queue_controller.runtime.errors import RuntimeFailure

LOCK_TIMEOUT_MS = 60_000

# CUprocessState (cuda.h): the states a process moves through.
STATES = {0: "RUNNING", 1: "LOCKED", 2: "CHECKPOINTED", 3: "FAILED"}

# Where the driver's user-space library lives when the loader's own search misses it (an image whose
# ld.so.cache predates the driver mount; ckq's runtime carries its own loader).
_LIBCUDA_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib64", "/usr/local/nvidia/lib64", "/usr/lib/aarch64-linux-gnu",
                 "/usr/local/cuda/compat")


def gpu_pids(root: int) -> list[int]:
    """CUDA processes of the tree: those that map an NVIDIA device, and those whose device state this
    ckq-run has moved to host memory. A checkpointed CUDA process unmaps the device, so under a gang
    freeze (which suspends before the dump) only the second test finds it; missing it would record a
    checkpoint without its GPU processes, whose restore then never gives them their GPU back."""
    found = []
    for pid in procfs.tree(root):
        if pid in _suspended:
            found.append(pid)
            continue
        try:
            maps = Path(f"/proc/{pid}/maps").read_text()
        except OSError:
            continue
        if "/dev/nvidia" in maps:
            found.append(pid)
    return found


class _LockArgs(ctypes.Structure):
    # CUcheckpointLockArgs: timeoutMs, reserved0, reserved1[7]
    _fields_ = [("timeoutMs", ctypes.c_uint), ("reserved0", ctypes.c_uint), ("reserved1", ctypes.c_uint64 * 7)]


class DriverApi:
    """The driver's checkpoint functions, bound once from libcuda.so.1."""

    NAMES = ("cuCheckpointProcessGetState", "cuCheckpointProcessLock", "cuCheckpointProcessCheckpoint",
             "cuCheckpointProcessRestore", "cuCheckpointProcessUnlock")

    def __init__(self, lib: ctypes.CDLL) -> None:
        self.lib = lib
        for name in self.NAMES:
            fn = getattr(lib, name)  # AttributeError: a driver older than r570
            fn.restype = ctypes.c_int
            fn.argtypes = [ctypes.c_int, ctypes.c_void_p]

    @classmethod
    def load(cls) -> DriverApi | None:
        """The API, or None where no driver (or one without the checkpoint API) is installed."""
        candidates = ["libcuda.so.1", *(str(Path(d) / "libcuda.so.1") for d in _LIBCUDA_DIRS)]
        for name in candidates:
            try:
                return cls(ctypes.CDLL(name))
            except (OSError, AttributeError):
                continue
        return None

    def _error(self, code: int) -> str:
        text = ctypes.c_char_p()
        fn = getattr(self.lib, "cuGetErrorString", None)
        if fn is not None and fn(code, ctypes.byref(text)) == 0 and text.value:
            return f"{text.value.decode(errors='replace')} (CUresult {code})"
        return f"CUresult {code}"

    def state(self, pid: int) -> str:
        out = ctypes.c_int(-1)
        code = self.lib.cuCheckpointProcessGetState(pid, ctypes.byref(out))
        if code != 0:
            raise RuntimeFailure(f"cuCheckpointProcessGetState(pid {pid}) failed: {self._error(code)}")
        return STATES.get(out.value, str(out.value))

    def step(self, pid: int, action: str) -> None:
        args: ctypes.c_void_p | None = None
        if action == "lock":
            lock = _LockArgs(timeoutMs=LOCK_TIMEOUT_MS)
            args = ctypes.c_void_p(ctypes.addressof(lock))
        fn = getattr(self.lib, f"cuCheckpointProcess{action.capitalize()}")
        code = fn(pid, args)
        if code != 0:
            raise RuntimeFailure(f"cuCheckpointProcess{action.capitalize()}(pid {pid}) failed: {self._error(code)} "
                                 f"(process state {self._state_or_unknown(pid)})")

    def _state_or_unknown(self, pid: int) -> str:
        try:
            return self.state(pid)
        except RuntimeFailure:
            return "unknown"


@functools.cache
def driver_api() -> DriverApi | None:
    """Looked up once per process: the driver does not change under a running supervisor."""
    return DriverApi.load()


def tool() -> str | None:
    """The cuda-checkpoint binary, when one is named or on PATH."""
    return os.environ.get("CKQ_CUDA_CHECKPOINT") or shutil.which("cuda-checkpoint")


def backend() -> str:
    """What drives the steps here: "driver-api", the tool's path, or "" when nothing can."""
    if os.environ.get("CKQ_CUDA_CHECKPOINT"):
        return os.environ["CKQ_CUDA_CHECKPOINT"]  # named explicitly: the operator wants the tool
    if driver_api() is not None:
        return "driver-api"
    return tool() or ""


def _tool_action(exe: str, pid: int, action: str) -> None:
    args = [exe, "--action", action, "--pid", str(pid)]
    if action == "lock":
        args += ["--timeout", str(LOCK_TIMEOUT_MS)]
    proc = subprocess.run(args, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeFailure(f"cuda-checkpoint --action {action} --pid {pid} failed: {proc.stderr.strip()}")


def _action(pid: int, action: str) -> None:
    how = backend()
    if not how:
        raise RuntimeFailure(
            f"process {pid} holds an NVIDIA GPU but its state cannot be checkpointed here: the driver has no "
            "checkpoint API (cuCheckpointProcess*, driver r570+) and cuda-checkpoint is not installed "
            "(put it on PATH or set CKQ_CUDA_CHECKPOINT)"
        )
    api = driver_api()
    if how == "driver-api" and api is not None:
        api.step(pid, action)
    else:
        _tool_action(how, pid, action)


def _expect(pids: list[int], state: str) -> None:
    api = driver_api()
    if api is None or backend() != "driver-api":
        return  # the tool reports its own failures; it has no state query
    for pid in pids:
        now = api.state(pid)
        if now != state:
            raise RuntimeFailure(f"GPU process {pid} is {now} after the step, expected {state}")


# The processes this ckq-run has suspended and not yet resumed (a gang freeze suspends before it stops
# the tree; the dump taken while frozen must then neither suspend them again nor resume them).
_suspended: set[int] = set()


def suspended(pids: list[int]) -> bool:
    """Every one of `pids` is already suspended by this process (a freeze did it)."""
    return bool(pids) and _suspended.issuperset(pids)


def suspend(pids: list[int]) -> None:
    """Lock then checkpoint (device memory → host) every CUDA process; on a failure, put back the ones done."""
    done: list[int] = []
    try:
        for pid in pids:
            _action(pid, "lock")
            done.append(pid)
        for pid in pids:
            _action(pid, "checkpoint")
        _expect(pids, "CHECKPOINTED")
    except RuntimeFailure:
        _undo(done)
        raise
    _suspended.update(pids)


def _undo(pids: list[int]) -> None:
    """Best effort back to RUNNING, so a failed dump does not leave the job's GPUs locked."""
    api = driver_api() if backend() == "driver-api" else None
    for pid in pids:
        with contextlib.suppress(RuntimeFailure):
            if api is None or api.state(pid) == "CHECKPOINTED":
                _action(pid, "restore")  # with the tool: fails harmlessly on a process only locked
        with contextlib.suppress(RuntimeFailure):
            _action(pid, "unlock")


def resume(pids: list[int]) -> None:
    """Restore (host → device) and unlock every CUDA process."""
    _suspended.difference_update(pids)
    for pid in pids:
        _action(pid, "restore")
    for pid in pids:
        _action(pid, "unlock")
    _expect(pids, "RUNNING")

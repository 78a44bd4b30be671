"""Freezing the workload's whole process tree, for a gang checkpoint's barrier.

A checkpoint of a job covers every container of every pod; the node agents stop all of them first
(`freeze`), and only once every one is stopped are they dumped, so no pod runs on (sending messages,
writing files) after another's image was taken. ckq-run stops its workload with SIGSTOP to every
process of its tree, repeated until the tree is stable and every process is in the stopped state:
the cgroup freezer is not usable inside a pod (the cgroup filesystem is mounted read-only) and CRIU
dumps stopped tasks as they are (it seizes them with ptrace, and records and restores the stopped
state, so a restored tree is continued with SIGCONT by the supervisor).

A CUDA process cannot be checkpointed by the driver once it is stopped (its lock waits for the
process's own threads: on an H200 a dump of a SIGSTOPped CUDA process hung for minutes), so a freeze
first moves every CUDA process's device state into host memory (`gpu.suspend`: lock + checkpoint)
while it still runs, then stops the tree; a thaw continues the tree and then gives the GPU back
(`gpu.resume`). A dump taken while frozen finds the GPU state already in host memory and leaves it
there for the thaw (or the restore, which also continues the tree first) to put back.

A freeze carries a token (the Checkpoint's uid) and a hold: unless the token's owner thaws it, stops
it after a dump, or extends the hold (a dump does), the tree thaws itself when the hold runs out, so a
controller or agent that died mid-checkpoint never leaves the job stopped for good. Every operation is
idempotent for its token: the agent may repeat any of them after a restart.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from queue_controller.runtime import gpu, procfs
from queue_controller.runtime.errors import RuntimeFailure

STOP_WAIT = 10.0  # seconds for every process to reach the stopped state after SIGSTOP
MAX_HOLD = 3600.0


def _state(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None  # gone


def stop_tree(root: int, timeout: float = STOP_WAIT) -> list[int]:
    """SIGSTOP every process of root's tree until all are stopped ('T'; 't' when traced) and no new
    one appeared; the stopped PIDs. A process forking while it is stopped cannot add children, so the
    loop ends once a listing finds nothing new."""
    deadline = time.monotonic() + timeout
    while True:
        pids = [p for p in procfs.tree(root) if _state(p) not in (None, "Z", "X")]
        for pid in pids:
            if _state(pid) not in ("T", "t"):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGSTOP)
        while any(_state(p) not in (None, "T", "t", "Z", "X") for p in pids):
            if time.monotonic() > deadline:
                running = [p for p in pids if _state(p) not in (None, "T", "t", "Z", "X")]
                cont_tree(root)
                raise RuntimeFailure(f"could not stop the workload within {timeout:g}s (still running: "
                                     f"{', '.join(map(str, running[:10]))}); it was continued")
            time.sleep(0.005)
        if [p for p in procfs.tree(root) if _state(p) not in (None, "Z", "X")] == pids:
            return pids


def cont_tree(root: int) -> None:
    for pid in procfs.tree(root):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


@dataclass
class Frozen:
    token: str
    at: float  # wall clock (epoch seconds) when every process was stopped
    dumped: str | None = None  # the checkpoint id taken while frozen under this token
    stopped: bool = True  # the processes were stopped (False in Signal mode)
    deadline: float = 0.0  # monotonic
    gpu_pids: tuple[int, ...] = ()  # CUDA processes whose device state was moved to host memory


class Freezer:
    """The freeze state of one supervisor's workload. Every method runs under the supervisor's
    `lock` (the one a dump holds), so a freeze, a dump and the hold's expiry never interleave."""

    def __init__(self, lock: threading.Lock, root: Callable[[], int | None],
                 log: Callable[[str], None]) -> None:
        self.lock = lock
        self.root = root
        self.log = log
        self.frozen: Frozen | None = None
        self.expired: str | None = None  # the last token whose hold ran out (it thawed by itself)
        self.timer: threading.Timer | None = None

    # All of these are called with self.lock held.
    def freeze(self, token: str, hold: float, stop: bool = True) -> Frozen:
        """Stop the tree for `token` (again: the same freeze, its hold re-armed). `stop=False` (Signal
        mode, whose app saves its own state and so must run for it) records the freeze without
        stopping anything: the barrier then only orders the saves after every member's freeze."""
        root = self.root()
        if root is None:
            raise RuntimeFailure("the workload is not running; nothing to freeze")
        if self.frozen is not None:
            if self.frozen.token != token:
                raise RuntimeFailure(f"the workload is frozen for another checkpoint ({self.frozen.token})")
            self._arm(hold)
            return self.frozen
        if self.expired == token:
            raise RuntimeFailure(f"the freeze for {token} ran out of time and thawed; it is not frozen again")
        cuda = gpu.gpu_pids(root) if stop else []
        if cuda:
            gpu.suspend(cuda)  # while the processes still run: the driver cannot lock a stopped one
        try:
            pids = stop_tree(root) if stop else []
        except RuntimeFailure:
            if cuda:
                gpu.resume(cuda)
            raise
        self.frozen = Frozen(token=token, at=time.time(), stopped=stop, gpu_pids=tuple(cuda))
        self._arm(hold)
        self.log(f"froze the workload for {token}: {len(pids)} process(es) stopped, hold {hold:g}s")
        return self.frozen

    def require(self, token: str) -> Frozen:
        if self.frozen is None or self.frozen.token != token:
            why = ("its hold ran out and it thawed" if self.expired == token else
                   f"it is frozen for {self.frozen.token}" if self.frozen else "it is not frozen")
            raise RuntimeFailure(f"the workload is not frozen for {token}: {why}")
        return self.frozen

    def thaw(self, token: str) -> bool:
        """Continue the tree if frozen for `token`; False if it was not (already thawed, or never)."""
        if self.frozen is None or self.frozen.token != token:
            return False
        frozen = self.frozen
        self._release()
        self._continue(frozen)
        self.log(f"thawed the workload ({token})")
        return True

    def forget(self) -> None:
        """The tree is gone (stopped after a dump): nothing to thaw."""
        self._release()

    def extend(self, hold: float) -> None:
        self._arm(hold)

    def _release(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.timer = None
        self.frozen = None

    def _continue(self, frozen: Frozen) -> None:
        """Continue the stopped tree, then give the CUDA processes their device state back."""
        root = self.root()
        if root is not None and frozen.stopped:
            cont_tree(root)
            if frozen.gpu_pids:
                gpu.resume(list(frozen.gpu_pids))

    def _arm(self, hold: float) -> None:
        assert self.frozen is not None
        hold = min(max(hold, 0.0), MAX_HOLD)
        if self.timer is not None:
            self.timer.cancel()
        self.frozen.deadline = time.monotonic() + hold
        frozen = self.frozen
        self.timer = threading.Timer(hold, self._expire, args=(frozen,))
        self.timer.daemon = True
        self.timer.start()

    def _expire(self, frozen: Frozen) -> None:
        with self.lock:
            if self.frozen is not frozen or time.monotonic() < frozen.deadline:
                return  # released, or re-armed since
            self.expired = frozen.token
            self._release()
            self._continue(frozen)
            self.log(f"the freeze for {frozen.token} was held past its deadline with no go-ahead; "
                     "thawed the workload")

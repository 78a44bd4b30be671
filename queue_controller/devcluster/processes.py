"""Component processes: start with a log file, check by recorded pid, stop exactly those pids."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class ProcessRecord:
    """What identifies a started process later: the pid plus its start time (guards pid reuse)."""

    name: str
    pid: int
    start_ticks: int
    log: str
    argv: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "argv": list(self.argv)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ProcessRecord:
        return cls(
            name=data["name"],
            pid=int(data["pid"]),
            start_ticks=int(data["start_ticks"]),
            log=data["log"],
            argv=tuple(data["argv"]),
        )


def _stat(pid: int) -> tuple[str, int] | None:
    """(state letter, start time in clock ticks) from /proc, or None when the pid does not exist."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name may contain spaces and parentheses: split after its last ')'.
    fields = raw[raw.rindex(")") + 2 :].split()
    return fields[0], int(fields[19])


def _die_with_parent() -> None:
    # Runs in the child before exec: the kernel sends SIGTERM when the parent (pytest) dies, so a
    # killed test session cannot leave a control plane behind.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def _preexec(die_with_parent: bool, cgroup_procs: tuple[str, ...]) -> Callable[[], None] | None:
    if not die_with_parent and not cgroup_procs:
        return None

    def run() -> None:
        if die_with_parent:
            _die_with_parent()
        # Join the given cgroups before exec, so the process and all it spawns (containerd's shims)
        # live in them from the first instruction: `down` can then find and kill every one of them.
        for procs in cgroup_procs:
            with open(procs, "w") as fh:
                fh.write("0")

    return run


def start(
    name: str,
    argv: list[str],
    log_path: Path,
    *,
    die_with_parent: bool = False,
    cgroup_procs: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
) -> ProcessRecord:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            # Own session: Ctrl-C in the terminal that ran `ckq dev up` does not reach the cluster,
            # and `down` can signal the whole process group.
            start_new_session=True,
            close_fds=True,
            preexec_fn=_preexec(die_with_parent, cgroup_procs),
            env=env,
        )
    stat = _stat(proc.pid)
    ticks = stat[1] if stat else 0
    _CHILDREN[proc.pid] = proc  # keep the Popen so its exit status is reaped, not left a zombie
    return ProcessRecord(name, proc.pid, ticks, str(log_path), tuple(argv))


_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


def is_alive(rec: ProcessRecord) -> bool:
    child = _CHILDREN.get(rec.pid)
    if child is not None and child.poll() is not None:
        return False
    stat = _stat(rec.pid)
    return stat is not None and stat[0] not in ("Z", "X") and stat[1] == rec.start_ticks


def exit_code(rec: ProcessRecord) -> int | None:
    child = _CHILDREN.get(rec.pid)
    return child.poll() if child is not None else None


def stop(rec: ProcessRecord, *, timeout: float = 15.0) -> None:
    """SIGTERM the recorded process (and its group), SIGKILL after `timeout`. No-op if gone."""
    if not is_alive(rec):
        _CHILDREN.pop(rec.pid, None)
        return
    _signal(rec, signal.SIGTERM)
    if not _wait_gone(rec, timeout):
        _signal(rec, signal.SIGKILL)
        _wait_gone(rec, 5.0)
    _CHILDREN.pop(rec.pid, None)


def _signal(rec: ProcessRecord, sig: signal.Signals) -> None:
    try:
        os.killpg(rec.pid, sig)  # pid == pgid: started with start_new_session
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError):
            os.kill(rec.pid, sig)


def _wait_gone(rec: ProcessRecord, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not is_alive(rec):
            return True
        time.sleep(0.05)
    return not is_alive(rec)


def tail(path: str | Path, lines: int = 15) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 64 * 1024))
            text = fh.read().decode(errors="replace")
    except FileNotFoundError:
        return "(no log file)"
    return "\n".join(text.splitlines()[-lines:])


def wait_for(
    check: Callable[[], bool], *, timeout: float, what: str, alive: Callable[[], None], interval: float = 0.2
) -> None:
    """Poll `check` until true; `alive` raises as soon as a component has died (fail fast)."""
    deadline = time.monotonic() + timeout
    while True:
        alive()
        try:
            if check():
                return
        except Exception:  # any failure of a probe just means "not yet"
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)

"""Thin wrapper around the criu executable: preflight checks, dump, restore, log tails."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from queue_controller.runtime import criu_install, procfs
from queue_controller.runtime.errors import RuntimeFailure

# How a helper thread waits for a child: the supervisor reaps every child centrally (it may be PID 1),
# so helpers hand it the Popen and get the exit status back instead of calling wait() themselves.
Waiter = Callable[[subprocess.Popen[bytes]], int]


def _default_wait(proc: subprocess.Popen[bytes]) -> int:
    return proc.wait()


def log_tail(log: Path, lines: int = 15, head: bool = False) -> str:
    try:
        text = log.read_text(errors="replace").splitlines()
    except OSError:
        return "(no CRIU log)"
    # The RLIMIT_NOFILE line appears on every run without CAP_SYS_RESOURCE and is harmless.
    text = [t for t in text if "RLIMIT_NOFILE" not in t]
    return "\n".join(text[:lines] if head else text[-lines:])


FULL_MODE_CAPS = (procfs.CAP_SYS_ADMIN, procfs.CAP_NET_ADMIN, procfs.CAP_SYS_TIME)


def full_mode_possible() -> bool:
    caps = procfs.effective_caps()
    return all(caps >> cap & 1 for cap in FULL_MODE_CAPS)


@dataclass
class Criu:
    path: str
    version: str
    dirty_tracking: bool = False
    # CRIU's full (root) mode needs CAP_SYS_ADMIN (kernel probes in a new network namespace, a time
    # namespace on restore), CAP_NET_ADMIN (socket buffer sizes) and CAP_SYS_TIME (clock offsets).
    # Without all three (a container that is not privileged) it runs with --unprivileged instead,
    # which skips those probes, cgroup dumping and the time namespace: a restored process then sees
    # the new node's CLOCK_MONOTONIC/BOOTTIME instead of clocks continued from the dump.
    unprivileged: bool = False

    @classmethod
    def locate(cls) -> Criu:
        """Find a usable CRIU >= 4.0 and run `criu check`; raise with a clear message otherwise."""
        info = criu_install.find_criu()
        if info is None:
            raise RuntimeFailure(
                "no usable CRIU found: set CKQ_CRIU to a criu >= 4.0, put one on PATH, "
                "or run `ckq criu install`"
            )
        if info.version < criu_install.MIN_VERSION:
            raise RuntimeFailure(
                f"CRIU {info.version_text} at {info.path} is too old: ckq-run needs >= 4.0 "
                "(older ones fail on current kernels; run `ckq criu install`)"
            )
        mode = [] if full_mode_possible() else ["--unprivileged"]
        check = subprocess.run([info.path, "check", *mode], capture_output=True, text=True)
        if check.returncode != 0 and "ns_last_pid" in check.stdout + check.stderr:
            # `criu check` insists on a writable /proc/sys/kernel/ns_last_pid, which a container that
            # is not privileged never has (/proc/sys is read-only whatever its capabilities). CRIU
            # restores PIDs with clone3(set_tid) instead where the kernel has it (>= 5.5).
            check = subprocess.run([info.path, "check", *mode, "--feature", "clone3_set_tid"],
                                   capture_output=True, text=True)
        if check.returncode != 0:
            detail = [ln for ln in (check.stdout + check.stderr).splitlines() if "RLIMIT_NOFILE" not in ln]
            raise RuntimeFailure(
                f"`{info.path} check` failed, CRIU cannot work here: " + " | ".join(detail[-3:])
            )
        track = subprocess.run(
            [info.path, "check", *mode, "--feature", "mem_dirty_track"], capture_output=True, text=True
        )
        return cls(path=info.path, version=info.version_text, dirty_tracking=track.returncode == 0,
                   unprivileged=bool(mode))

    def _run(self, args: Sequence[str], log: Path, waiter: Waiter, env: dict[str, str] | None = None,
             pass_fds: Sequence[int] = ()) -> None:
        if self.unprivileged:
            args = [args[0], "--unprivileged", *args[1:]]
        with log.with_suffix(".out").open("wb") as out:
            proc = subprocess.Popen(
                [self.path, *args], stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                close_fds=True, pass_fds=tuple(pass_fds), env=env,
            )
        code = waiter(proc)
        if code != 0:
            # CRIU writes to its log once it has parsed its options; before that only to stderr.
            if log.is_file() and log.stat().st_size:
                detail = f"last lines of {log}:\n{log_tail(log)}"
            else:  # e.g. a rejected option: the reason is the first line, then the usage text
                out_path = log.with_suffix(".out")
                detail = f"{out_path}:\n{log_tail(out_path, lines=3, head=True)}"
            raise RuntimeFailure(f"criu {args[0]} failed (exit {code}); {detail}")

    def dump(self, pid: int, images: Path, log: Path, *, leave_running: bool, tcp: str,
             action_script: str | None, env: dict[str, str] | None, waiter: Waiter = _default_wait,
             pre_dump: bool = False, extra: Sequence[str] = ()) -> None:
        args = ["pre-dump" if pre_dump else "dump", "-t", str(pid), "-D", str(images), "-o", str(log), "-v4"]
        if not pre_dump:
            args += ["--file-locks", f"--tcp-{tcp}", "--manage-cgroups=ignore"]
            if leave_running:
                args.append("--leave-running")
            if action_script:
                args += ["--action-script", action_script]
        args += list(extra)
        self._run(args, log, waiter, env=env)

    def restore(self, images: Path, log: Path, workdir: Path, pidfile: Path, *, tcp: str,
                inherit: dict[int, str], waiter: Waiter = _default_wait,
                extra: Sequence[str] = ()) -> int:
        args = [
            "restore", "-D", str(images), "-W", str(workdir), "-o", str(log), "-v4",
            "--restore-detached", "--pidfile", str(pidfile), "--file-locks", f"--tcp-{tcp}",
            "--manage-cgroups=ignore",
        ]
        for fd, key in inherit.items():
            args += ["--inherit-fd", f"fd[{fd}]:{key}"]
        args += list(extra)
        self._run(args, log, waiter, pass_fds=list(inherit))
        try:
            return int(pidfile.read_text().strip())
        except (OSError, ValueError):
            raise RuntimeFailure(f"criu restore succeeded but wrote no pid to {pidfile}") from None

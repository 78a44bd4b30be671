"""CRIU fixtures (issue 5): a provisioned CRIU and "pods" in fresh PID + mount namespaces.

The tier needs root and unshare; CRIU itself is provisioned here (`ckq criu install`'s code) when it is
not already usable, so on CI nothing is skipped.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

CKQ_RUN = str(Path(sys.executable).with_name("ckq-run"))


def _impossible() -> str | None:
    if os.geteuid() != 0:
        return "the criu tier needs root (CRIU and PID namespaces); run it as root"
    if shutil.which("unshare") is None:
        return "the criu tier needs util-linux `unshare` to give each pod a fresh PID + mount namespace"
    if not Path(CKQ_RUN).exists():
        return f"{CKQ_RUN} is missing: install the package (pip install -e .)"
    return None


@pytest.fixture(scope="session")
def criu_bin() -> str:
    """Path of a working CRIU >= 4.0, provisioned into the ckq cache if needed; exported as CKQ_CRIU."""
    reason = _impossible()
    if reason:
        print(f"\n*** SKIPPING the criu tier: {reason} ***", file=sys.stderr)
        pytest.skip(reason)
    from queue_controller.runtime import criu_install
    from queue_controller.runtime.criu import Criu
    from queue_controller.runtime.errors import RuntimeFailure

    info = criu_install.find_criu()
    if info is None or info.version < criu_install.MIN_VERSION:
        try:
            info = criu_install.install()
        except RuntimeFailure as exc:
            pytest.fail(f"cannot provision CRIU for the criu tier: {exc}")
    os.environ["CKQ_CRIU"] = info.path
    try:
        Criu.locate()
    except RuntimeFailure as exc:
        pytest.fail(f"CRIU at {info.path} is unusable here: {exc}")
    return info.path


class Pod:
    """One `ckq-run` supervisor as PID 1 of a fresh PID + mount namespace (like a pod's container)."""

    def __init__(self, ckq_dir: Path, args: list[str], cmd: list[str], log: Path,
                 env: dict[str, str] | None = None) -> None:
        self.dir = ckq_dir
        self.log = log
        full = ["unshare", "--pid", "--fork", "--mount-proc", "--mount", CKQ_RUN, "--dir", str(ckq_dir),
                *args, "--", *cmd]
        with log.open("wb") as out:
            self.proc = subprocess.Popen(full, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True, env={**os.environ, **(env or {})})

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait(self, timeout: float = 120) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"pod did not exit within {timeout}s; output:\n{self.output()}") from None

    def supervisor_pid(self) -> int:
        """Host PID of ckq-run (the child of unshare), for sending it signals from outside."""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            for task in Path(f"/proc/{self.proc.pid}/task").glob("*"):
                kids = (task / "children").read_text().split()
                if kids:
                    return int(kids[0])
            time.sleep(0.02)
        raise AssertionError("ckq-run did not start inside the namespace")

    def checkpoint(self, *flags: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([CKQ_RUN, "checkpoint", "--dir", str(self.dir), *flags],
                              capture_output=True, text=True, timeout=300)
        if check and proc.returncode != 0:
            raise AssertionError(f"checkpoint failed: {proc.stderr}\npod output:\n{self.output()}")
        return proc

    def kill(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)  # PID 1 of the namespace dies: the pod is gone
            self.proc.wait(timeout=30)


@pytest.fixture
def pod(criu_bin: str, tmp_path: Path) -> Iterator[Callable[..., Pod]]:
    """Factory: pod(ckq_dir, cmd, *ckq_run_args, env=None) -> Pod; every pod is killed at teardown."""
    pods: list[Pod] = []

    def start(ckq_dir: Path, cmd: list[str], *args: str, env: dict[str, str] | None = None) -> Pod:
        p = Pod(ckq_dir, list(args), cmd, tmp_path / f"pod-{len(pods)}.log", env=env)
        pods.append(p)
        return p

    yield start
    for p in pods:
        p.kill()


def wait_for(predicate: Callable[[], bool], timeout: float = 60, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []

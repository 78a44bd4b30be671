"""ckq-run's pieces for running inside a container that is not privileged (no CRIU, no namespaces)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from queue_controller.runtime import criu, procfs, supervisor
from queue_controller.runtime.checkpointer import Checkpointer, Settings
from queue_controller.runtime.store import Store

pytestmark = pytest.mark.unit


def test_pid_counter_moves_without_ns_last_pid() -> None:
    """Short-lived threads take the next PIDs: the counter passes the target however it is set."""
    start = supervisor._last_pid() or 0
    last, used = supervisor._use_pids_up_to(start + 40)
    assert last >= start + 40
    assert 1 <= used <= start + 41


def test_full_criu_mode_needs_sys_admin_net_admin_and_sys_time(monkeypatch: pytest.MonkeyPatch) -> None:
    full = sum(1 << c for c in criu.FULL_MODE_CAPS)
    monkeypatch.setattr(procfs, "effective_caps", lambda pid="self": full)
    assert criu.full_mode_possible()
    for cap in criu.FULL_MODE_CAPS:  # e.g. SYS_ADMIN alone failed restores (socket buffers need NET_ADMIN)
        monkeypatch.setattr(procfs, "effective_caps", lambda pid="self", cap=cap: full & ~(1 << cap))
        assert not criu.full_mode_possible()


def test_effective_caps_reads_this_process() -> None:
    text = Path("/proc/self/status").read_text()
    expected = int(next(ln for ln in text.splitlines() if ln.startswith("CapEff:")).split()[1], 16)
    assert procfs.effective_caps() == expected


@pytest.mark.parametrize("injected", [False, True])
def test_fsnap_hook_needs_no_shell(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, injected: bool) -> None:
    """CRIU execs the hook directly: its interpreter line names a Python, never /bin/sh."""
    if injected:  # the injected runtime's launcher names itself: its Python only runs through it
        monkeypatch.setenv("CKQ_PYTHON", "/ckq-runtime/bin/python3")
    else:
        monkeypatch.delenv("CKQ_PYTHON", raising=False)
    store = Store(tmp_path)
    store.ensure()
    hook = Checkpointer(Settings(store=store), None, lambda p: p.wait(), {}, [])._hook_script()
    first = hook.read_text().splitlines()[0]
    assert first == ("#!/ckq-runtime/bin/python3" if injected else f"#!{sys.executable}")
    assert os.access(hook, os.X_OK)
    if not injected:  # it runs: outside a CRIU post-dump action it does nothing and exits 0
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        proc = subprocess.run([str(hook)], env=env, capture_output=True, text=True, check=False)
        assert proc.returncode == 0, proc.stderr


def test_control_server_knows_its_clients_pid_and_waits_for_them(tmp_path: Path) -> None:
    """A client exec'd into the container must not be killed by PID 1's exit before it printed."""
    import socket
    import time

    from queue_controller.runtime import control

    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with a, b:
        assert control._peer_pid(a) == os.getpid()
    server = control.Server(tmp_path / control.SOCKET_NAME, lambda req: {"ok": True})
    server.start()
    code = ("import sys, time, pathlib; from queue_controller.runtime import control; "
            "print(control.request(pathlib.Path(sys.argv[1]), {'op': 'status'}), flush=True); time.sleep(0.5)")
    client = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / control.SOCKET_NAME)],
                              stdout=subprocess.PIPE, text=True)
    while not server.peers:
        time.sleep(0.01)
    t0 = time.monotonic()
    server.close()
    assert time.monotonic() - t0 >= 0.3  # it waited for the client to exit
    assert client.wait(5) == 0 and "'ok': True" in (client.stdout.read() if client.stdout else "")

"""The supervisor's control socket (DIR/ckq-run.sock): one JSON request and one JSON reply per connection."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from queue_controller.runtime import procfs
from queue_controller.runtime.errors import RuntimeFailure

SOCKET_NAME = "ckq-run.sock"
Handler = Callable[[dict[str, Any]], dict[str, Any]]


def _short(path: Path) -> tuple[str, int]:
    """sun_path holds 108 bytes; reach deep directories through an O_PATH fd in /proc/self/fd."""
    fd = os.open(path.parent, os.O_PATH | os.O_DIRECTORY)
    return f"/proc/self/fd/{fd}/{path.name}", fd


def _alive(path: Path) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    short, fd = _short(path)
    try:
        probe.connect(short)
    except OSError:
        return False
    finally:
        os.close(fd)
        probe.close()
    return True


def _recv_all(conn: socket.socket) -> bytes:
    chunks = []
    while chunk := conn.recv(65536):
        chunks.append(chunk)
        if chunk.endswith(b"\n"):
            break
    return b"".join(chunks)


class Server:
    def __init__(self, path: Path, handler: Handler) -> None:
        self.path = path
        self.handler = handler
        if path.exists() and _alive(path):
            raise RuntimeFailure(f"another ckq-run is already supervising {path.parent} (socket {path})")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        path.unlink(missing_ok=True)  # a stale socket of a supervisor that died
        short, fd = _short(path)
        try:
            self.sock.bind(short)
        finally:
            os.close(fd)
        os.chmod(path, 0o600)  # checkpoints hold every memory page: only the owner may ask for one
        self.sock.listen(8)
        self.cond = threading.Condition()
        self.active = 0  # connections being answered
        self.peers: set[int] = set()  # PIDs (in our PID namespace) of clients that were answered

    def start(self) -> None:
        threading.Thread(target=self._serve, name="ckq-control", daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        with self.cond:
            self.active += 1
        try:
            with conn:
                try:
                    request = json.loads(_recv_all(conn) or b"{}")
                    reply = self.handler(request)
                except RuntimeFailure as exc:
                    reply = {"ok": False, "error": str(exc)}
                except Exception as exc:  # a bug must not kill the supervisor or hang the client
                    reply = {"ok": False, "error": f"internal error: {type(exc).__name__}: {exc}"}
                with contextlib.suppress(OSError):
                    conn.sendall(json.dumps(reply).encode() + b"\n")
                pid = _peer_pid(conn)
                if pid > 0:
                    with self.cond:
                        self.peers.add(pid)
        finally:
            with self.cond:
                self.active -= 1
                self.cond.notify_all()

    def close(self, linger: float = 5.0) -> None:
        """Stop listening; wait (at most `linger` s) until every reply is sent and every client that
        runs in our PID namespace has exited: a client exec'd into the container (`kubectl exec …
        ckq-run checkpoint`) is killed by the kernel when we, PID 1, exit, possibly before it printed."""
        self.sock.close()
        self.path.unlink(missing_ok=True)
        deadline = time.monotonic() + linger
        with self.cond:
            while self.active and time.monotonic() < deadline:
                self.cond.wait(0.05)
            peers = set(self.peers)
        while any(procfs.alive(p) for p in peers) and time.monotonic() < deadline:
            time.sleep(0.02)


def _peer_pid(conn: socket.socket) -> int:
    """The client's PID as our PID namespace sees it (0 for a client outside it, e.g. on the host)."""
    try:
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return 0
    return int(struct.unpack("3i", creds)[0])


def request(path: Path, payload: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
    if not path.exists():
        raise RuntimeFailure(f"no ckq-run supervisor is listening at {path} (is the workload running?)")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    short, fd = _short(path)
    try:
        sock.connect(short)
    except OSError as exc:
        raise RuntimeFailure(f"cannot connect to the supervisor at {path}: {exc.strerror}") from None
    finally:
        os.close(fd)
    with sock:
        sock.sendall(json.dumps(payload).encode() + b"\n")
        raw = _recv_all(sock)
    if not raw:
        raise RuntimeFailure("the supervisor closed the connection without replying (did it exit?)")
    reply: dict[str, Any] = json.loads(raw)
    return reply

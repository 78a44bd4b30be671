"""The node agent's client of ckq-run's control socket (`<container dir>/ckq-run.sock`).

The protocol is runtime/control.py's: one JSON request and one JSON reply per connection, each one
line. Requests the agent sends (runtime/supervisor.py `Supervisor.handle`):

    {"op": "status"}                                   -> {"ok": true, "pid", "mode", "running", "checkpoints"}
    {"op": "checkpoint", "leaveRunning": bool,
     "preDump": false, "full": false}                  -> {"ok": true, "id", "manifest"} | {"ok": false, "error"}

and, for a gang checkpoint's barrier (runtime/freezer.py; the token is the Checkpoint's uid, and a
repeated request with the same token is answered as the first was):

    {"op": "freeze", "token", "holdSeconds"}           -> {"ok": true, "frozenAt", "stopped", "dumped"}
    {"op": "checkpoint", "token", "holdSeconds", ...}  -> as above; dumped while frozen, and stays frozen
    {"op": "thaw", "token"}                            -> {"ok": true, "thawed": bool}
    {"op": "stop", "token"}                            -> {"ok": true, "stopped": true} (exits 75)

The socket sits in a directory the workload can write to, so it is opened without following links
(an O_PATH fd of the socket itself, connected through /proc/self/fd), which also keeps the path
short enough for sun_path however deep the store is.
"""

from __future__ import annotations

import json
import os
import socket
import stat
from typing import Any

from queue_controller.runtime.control import SOCKET_NAME


class ControlError(Exception):
    """The supervisor could not be asked (no socket, refused, closed, timed out, or a bad reply)."""


class NotListening(ControlError):
    """No live ckq-run supervisor at this directory (no socket, or nobody accepts on it)."""


def call(container_fd: int, payload: dict[str, Any], timeout: float | None) -> dict[str, Any]:
    try:
        sfd = os.open(SOCKET_NAME, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=container_fd)
    except FileNotFoundError:
        raise NotListening(f"no {SOCKET_NAME}") from None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        if not stat.S_ISSOCK(os.fstat(sfd).st_mode):
            raise NotListening(f"{SOCKET_NAME} is not a socket")
        sock.settimeout(10.0)
        try:
            sock.connect(f"/proc/self/fd/{sfd}")
        except OSError as exc:
            raise NotListening(f"cannot connect to {SOCKET_NAME}: {exc.strerror or exc}") from None
    except BaseException:
        sock.close()
        raise
    finally:
        os.close(sfd)
    with sock:
        sock.settimeout(timeout)
        try:
            sock.sendall(json.dumps(payload).encode() + b"\n")
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
                if chunk.endswith(b"\n"):
                    break
        except TimeoutError:
            raise ControlError(f"ckq-run did not answer within {timeout:g}s") from None
        except OSError as exc:
            raise ControlError(f"the connection to ckq-run failed: {exc.strerror or exc}") from None
    raw = b"".join(chunks)
    if not raw:
        raise ControlError("ckq-run closed the connection without replying (did it exit?)")
    try:
        reply = json.loads(raw)
    except ValueError:
        raise ControlError(f"ckq-run sent a malformed reply: {raw[:200]!r}") from None
    if not isinstance(reply, dict):
        raise ControlError(f"ckq-run sent a malformed reply: {raw[:200]!r}")
    return reply


def status(container_fd: int, timeout: float = 10.0) -> dict[str, Any] | None:
    """The supervisor's status, or None when nothing answers on the socket."""
    try:
        reply = call(container_fd, {"op": "status"}, timeout)
    except ControlError:
        return None
    return reply if reply.get("ok") else None


def checkpoint(container_fd: int, leave_running: bool, timeout: float | None, token: str | None = None,
               hold: float = 0.0) -> dict[str, Any]:
    payload: dict[str, Any] = {"op": "checkpoint", "leaveRunning": leave_running, "preDump": False, "full": False}
    if token:
        payload.update(token=token, holdSeconds=hold)
    return call(container_fd, payload, timeout)


def gang(container_fd: int, op: str, token: str, hold: float = 0.0, timeout: float = 60.0) -> dict[str, Any]:
    """freeze, thaw or stop for the gang checkpoint `token`."""
    return call(container_fd, {"op": op, "token": token, "holdSeconds": hold}, timeout)

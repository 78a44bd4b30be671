"""Free TCP ports on 127.0.0.1, chosen at start so several clusters can run side by side."""

from __future__ import annotations

import contextlib
import socket

from queue_controller.devcluster.errors import DevClusterError


def free_ports(count: int) -> list[int]:
    """`count` distinct ports that are free now (held open together so they cannot repeat)."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind(("127.0.0.1", 0))
            ports.append(sock.getsockname()[1])
        return ports


def require_free(port: int, what: str) -> None:
    """Fail with a clear message when `port` is taken, instead of a component dying later."""
    if not 1 <= port <= 65535:
        raise DevClusterError(f"{what} port {port} is not a valid TCP port (1-65535)")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as exc:
            raise DevClusterError(
                f"{what} port {port} on 127.0.0.1 is already in use ({exc.strerror}); "
                "pick another one or leave the option out to get a free port"
            ) from None

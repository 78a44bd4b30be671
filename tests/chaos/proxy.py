"""A TCP proxy in front of the API server whose connections can be cut on demand (the `watch-cut` fault).

The controller under test is given a kubeconfig whose server is this proxy; bytes pass through
untouched (TLS end to end, so the API server's certificate still verifies: it names 127.0.0.1).
`cut()` resets every open connection at once — the controller's watch streams and whatever requests
are in flight — while the API server itself stays up, as a load balancer restart or a network blip
would. New connections are accepted again at once.
"""

from __future__ import annotations

import contextlib
import re
import selectors
import socket
import struct
import threading
from pathlib import Path


class CuttingProxy:
    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._stopped = threading.Event()
        self.cuts = 0
        self.accepted = 0
        self._thread = threading.Thread(target=self._accept, name="cutting-proxy", daemon=True)
        self._thread.start()

    @classmethod
    def for_kubeconfig(cls, kubeconfig: str, out: Path) -> CuttingProxy:
        """A proxy to the kubeconfig's server, and a copy of the kubeconfig pointing at it, written to `out`."""
        text = Path(kubeconfig).read_text()
        m = re.search(r"server:\s*https://([\d.]+|localhost):(\d+)", text)
        if m is None:
            raise RuntimeError(f"no https://host:port server in {kubeconfig}")
        proxy = cls((m.group(1), int(m.group(2))))
        out.write_text(text.replace(m.group(0), f"server: https://{m.group(1)}:{proxy.port}"))
        return proxy

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                down, _ = self.listener.accept()
            except OSError:
                return
            try:
                up = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                down.close()
                continue
            up.settimeout(None)
            with self._lock:
                self._open |= {down, up}
                self.accepted += 1
            threading.Thread(target=self._pump, args=(down, up), daemon=True).start()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        sel = selectors.DefaultSelector()
        sel.register(a, selectors.EVENT_READ, b)
        sel.register(b, selectors.EVENT_READ, a)
        try:
            while True:
                for key, _ in sel.select():
                    src: socket.socket = key.fileobj  # type: ignore[assignment]
                    data = src.recv(65536)
                    if not data:
                        return
                    key.data.sendall(data)
        except OSError:
            return
        finally:
            sel.close()
            for s in (a, b):
                self._close(s, reset=False)

    def _close(self, s: socket.socket, *, reset: bool) -> None:
        with self._lock:
            self._open.discard(s)
        with contextlib.suppress(OSError):
            if reset:  # SO_LINGER 0: the peer sees a reset, not an orderly end of stream
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            s.close()

    def cut(self) -> int:
        """Reset every open connection; returns how many were cut (both ends of each counted once)."""
        with self._lock:
            victims = list(self._open)
        for s in victims:
            self._close(s, reset=True)
        self.cuts += 1
        return len(victims) // 2

    def stop(self) -> None:
        self._stopped.set()
        with contextlib.suppress(OSError):
            self.listener.close()
        self.cut()

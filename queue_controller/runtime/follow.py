"""Work on CRIU's page files while CRIU is still writing them, so a dump overlaps with its aftermath.

Page files (``pages-*.img``) only grow by appends. A follower thread polls them: for a full dump it
hashes the new bytes and starts their writeback at once (``sync_file_range``), so the disk is busy
during the dump instead of after it (the kernel would otherwise wait for the dirty-memory threshold);
for an incremental dump it delta-encodes them against the parent (pagestore.DeltaSink).
"""

from __future__ import annotations

import ctypes
import hashlib
import mmap
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

_READ = 4 << 20
_SYNC_FILE_RANGE_WRITE = 2
_libc = ctypes.CDLL(None, use_errno=True)
_libc.sync_file_range.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Ask the kernel to start writing this range now (asynchronously); errors are only lost speed."""
    _libc.sync_file_range(fd, offset, length, _SYNC_FILE_RANGE_WRITE)


class Sink(Protocol):
    def feed(self, upto_bytes: int) -> None: ...


class WritebackSink:
    """Starts writeback of each newly written range; runs in its own follower because it may block
    at disk speed, and hashing must not wait for the disk."""

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_RDONLY)
        self.done = 0

    def feed(self, upto_bytes: int) -> None:
        if upto_bytes > self.done:
            start_writeback(self.fd, self.done, upto_bytes - self.done)
            self.done = upto_bytes

    def close(self) -> None:
        os.close(self.fd)


class HashSink:
    """sha256 of a growing file, read through mmap (no copy into Python buffers)."""

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_RDONLY)
        self.digest = hashlib.sha256()
        self.done = 0

    def feed(self, upto_bytes: int) -> None:
        upto_bytes = min(upto_bytes, os.fstat(self.fd).st_size)
        while self.done < upto_bytes:
            want = min(_READ, upto_bytes - self.done)
            with mmap.mmap(self.fd, want, offset=self.done, access=mmap.ACCESS_READ) as view:
                self.digest.update(view)  # hashlib drops the GIL for large buffers
            self.done += want

    def close(self) -> str:
        os.close(self.fd)
        return self.digest.hexdigest()


class Follower:
    """Polls `images` for page files and feeds each to the sink `make(name)` creates for it."""

    def __init__(self, images: Path, make: Callable[[str], Sink | None], block: int = 1 << 20) -> None:
        self.images = images
        self.make = make
        self.block = block
        self.sinks: dict[str, Sink | None] = {}
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ckq-follow", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _pass(self, final: bool) -> None:
        for path in sorted(self.images.glob("pages-*.img")):
            if path.name not in self.sinks:
                self.sinks[path.name] = self.make(path.name)
            sink = self.sinks[path.name]
            if sink is None:
                continue
            size = path.stat().st_size
            if not final:
                size -= size % self.block  # CRIU may be mid-write on the last block
            sink.feed(size)

    def _run(self) -> None:
        try:
            while not self._stop.wait(0.02):
                self._pass(final=False)
        except BaseException as exc:  # reported by finish(); the dump itself must not be disturbed
            self.error = exc

    def finish(self) -> dict[str, Sink | None]:
        """After CRIU exited: stop polling, consume the rest of every file, return the sinks."""
        self._stop.set()
        if self._thread.ident is not None:
            self._thread.join()
        if self.error:
            raise self.error
        self._pass(final=True)
        return self.sinks

    def abandon(self) -> None:
        self._stop.set()
        if self._thread.ident is not None:
            self._thread.join()

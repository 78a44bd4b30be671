"""File operations that never follow a symbolic link below a trusted directory.

Each container's directory is mounted into its pod, so the workload can put anything there, symbolic
links included. The agent and the controller run with more privileges than the workload, so below the
store root every path is walked one component at a time with O_NOFOLLOW, relative to an open
directory, and every create, rename and delete is relative to such a directory.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
from collections.abc import Iterator, Sequence
from typing import Any

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class UnsafePath(Exception):
    """A path component below the root is a symbolic link or not a directory."""


def open_dir(name: str, dir_fd: int | None) -> int:
    """Open one directory entry as a directory, refusing a symbolic link; FileNotFoundError if absent."""
    try:
        return os.open(name, DIR_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise UnsafePath(f"{name!r} is a symbolic link or not a directory") from None
        raise


def ensure_dir(name: str, dir_fd: int, mode: int = 0o755) -> int:
    """open_dir, creating the directory first if it is absent."""
    with contextlib.suppress(FileExistsError):
        os.mkdir(name, mode, dir_fd=dir_fd)
    return open_dir(name, dir_fd)


@contextlib.contextmanager
def walk(root_fd: int, parts: Sequence[str], create: bool = False) -> Iterator[int]:
    """The fd of root/parts[0]/parts[1]/…, each component opened without following links."""
    fds: list[int] = []
    try:
        cur = root_fd
        for part in parts:
            cur = ensure_dir(part, cur) if create else open_dir(part, cur)
            fds.append(cur)
        yield cur
    finally:
        for fd in fds:
            os.close(fd)


def lstat_at(name: str, dir_fd: int) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def is_dir_at(name: str, dir_fd: int) -> bool:
    st = lstat_at(name, dir_fd)
    return st is not None and stat.S_ISDIR(st.st_mode)


def read_text_at(name: str, dir_fd: int, limit: int = 1 << 20) -> str:
    """A small regular file's text (no link followed, at most `limit` bytes)."""
    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=dir_fd)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, f"{name} is not a regular file")
        with os.fdopen(fd, "rb", closefd=False) as fh:
            return fh.read(limit).decode()
    finally:
        os.close(fd)


def read_json_at(name: str, dir_fd: int) -> Any:
    return json.loads(read_text_at(name, dir_fd))


def write_atomic_at(name: str, data: bytes, dir_fd: int, mode: int = 0o600) -> None:
    """Write a file durably under a temporary name, then rename it over `name` (same directory)."""
    tmp = f".{name}.tmp-{os.getpid()}"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp, dir_fd=dir_fd)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=dir_fd)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    os.fsync(dir_fd)


def regular_bytes(dir_fd: int) -> int:
    """Bytes of the regular files below an open directory (hard links counted once, no link followed)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for _path, _dirs, files, fd in os.fwalk(".", dir_fd=dir_fd, follow_symlinks=False):
        for name in files:
            st = lstat_at(name, fd)
            if st is None or not stat.S_ISREG(st.st_mode):
                continue
            key = (st.st_dev, st.st_ino)
            if key not in seen:
                seen.add(key)
                total += st.st_size
    return total

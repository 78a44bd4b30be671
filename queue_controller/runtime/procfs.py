"""Small /proc readers shared by the runtime."""

from __future__ import annotations

from pathlib import Path


def tree(root: int) -> list[int]:
    """root and all its descendants (via /proc/*/task/*/children)."""
    out: list[int] = []
    todo = [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        for task in Path(f"/proc/{pid}/task").glob("*"):
            try:
                todo += [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
    return sorted(set(out))


def tree_rss(pid: int) -> int:
    """Resident bytes of the process tree (shared pages counted more than once: an upper bound)."""
    total = 0
    for p in tree(pid):
        try:
            status = Path(f"/proc/{p}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) * 1024
    return total


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


CAP_NET_ADMIN = 12
CAP_SYS_ADMIN = 21
CAP_SYS_TIME = 25


def effective_caps(pid: int | str = "self") -> int:
    """The process's effective capability set as a bit mask (/proc/PID/status CapEff; 0 if unknown)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    for line in status.splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    return 0

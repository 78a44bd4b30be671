"""Debian packages fetched into a private cache, never installed into the system.

ckq provisions several things from Debian's own archive: CRIU 4.x (`ckq criu install`, from trixie),
and the pieces of a real worker node — containerd, runc, the CNI plugins — plus the contents of the
local images (`ckq.local/python:3`). All of them go the same way: a private apt state directory
(its own sources list, lists and cache, so the system's apt state is untouched), `apt-get
download` of an exact package set, and `dpkg -x`/`dpkg-deb --fsys-tarfile` to unpack. The archive
URI is the one this machine's apt already uses, so a local mirror or proxy keeps working.

`closure()` resolves a package set the way apt would for a minimal install: Depends and Pre-Depends,
the first alternative of an or-group unless another alternative is already chosen, virtual packages
through their first provider; Recommends and Suggests never.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

DEFAULT_MIRROR = "http://deb.debian.org/debian"


class DebianError(RuntimeError):
    """An apt step failed; the message carries the command and the tail of its output."""


def mirror() -> str:
    """The Debian archive URI this machine's apt already uses (so proxies/mirrors keep working)."""
    sources = Path("/etc/apt/sources.list.d/debian.sources")
    if sources.is_file():
        for line in sources.read_text().splitlines():
            if line.startswith("URIs:") and "security" not in line:
                return line.split(":", 1)[1].split()[0]
    legacy = Path("/etc/apt/sources.list")
    if legacy.is_file():
        for line in legacy.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[0] == "deb" and "security" not in parts[1]:
                return next(p for p in parts[1:] if not p.startswith("["))
    return DEFAULT_MIRROR


def host_suite() -> str:
    """This machine's Debian release (e.g. bookworm): host binaries must match its libc."""
    try:
        text = Path("/etc/os-release").read_text()
    except OSError:
        text = ""
    match = re.search(r"^VERSION_CODENAME=(\S+)", text, re.M)
    return match.group(1).strip('"') if match else "bookworm"


class Apt:
    """apt-get/apt-cache confined to a private state directory, for one suite."""

    def __init__(self, state: Path, suite: str) -> None:
        self.state = state
        self.suite = suite
        for sub in ("lists/partial", "cache/archives/partial", "debs"):
            (state / sub).mkdir(parents=True, exist_ok=True)
        self.sources = state / "sources.list"
        self.sources.write_text(f"deb {mirror()} {suite} main\n")
        self.opts = [
            f"-oDir::Etc::SourceList={self.sources}",
            "-oDir::Etc::SourceParts=/dev/null",
            f"-oDir::State::Lists={state / 'lists'}",
            f"-oDir::Cache={state / 'cache'}",
            "-oAPT::Get::List-Cleanup=0",
            "-oDebug::NoLocking=1",
            # Downloads land in a root-owned cache: apt's _apt sandbox user could not write there.
            "-oAPT::Sandbox::User=root",
        ]

    def run(self, tool: str, *args: str, cwd: Path | None = None) -> str:
        cmd = [tool, *self.opts, *args]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, check=False)
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
            raise DebianError(f"`{tool} {' '.join(args)}` failed: " + " | ".join(tail))
        return proc.stdout

    def update(self) -> None:
        self.run("apt-get", "update")

    def versions(self, packages: list[str]) -> dict[str, str]:
        """Candidate version of each package (a cache key: new versions mean a new build)."""
        out = self.run("apt-cache", "show", "--no-all-versions", *packages)
        found: dict[str, str] = {}
        name = ""
        for line in out.splitlines():
            if line.startswith("Package:"):
                name = line.split(":", 1)[1].strip()
            elif line.startswith("Version:") and name:
                found[name] = line.split(":", 1)[1].strip()
        missing = sorted(set(packages) - set(found))
        if missing:
            raise DebianError(f"{self.suite} has no package(s): {', '.join(missing)}")
        return found

    def download(self, packages: list[str], into: Path) -> list[Path]:
        """Download exactly these packages into `into` (emptied first); the .deb paths, sorted."""
        into.mkdir(parents=True, exist_ok=True)
        for old in into.glob("*.deb"):
            old.unlink()
        self.run("apt-get", "download", *packages, cwd=into)
        return sorted(into.glob("*.deb"))

    def closure(self, roots: list[str], *, skip: frozenset[str] = frozenset()) -> list[str]:
        """`roots` plus what they need to run (Depends, Pre-Depends), resolved as described above."""
        chosen: set[str] = set()
        todo = [r for r in roots if r not in skip]
        while todo:
            batch = sorted(set(todo) - chosen)
            todo = []
            if not batch:
                break
            chosen.update(batch)
            for groups in self._depends(batch).values():
                for alternatives in groups:
                    if any(a in chosen for a in alternatives):
                        continue
                    pick = next((a for a in alternatives if a not in skip), None)
                    if pick is not None and pick not in chosen:
                        todo.append(pick)
        return sorted(chosen)

    def _depends(self, packages: list[str]) -> dict[str, list[list[str]]]:
        """Each package's dependency groups (alternatives), virtual names replaced by a provider."""
        out = self.run(
            "apt-cache", "depends", "--no-recommends", "--no-suggests", "--no-conflicts", "--no-breaks",
            "--no-replaces", "--no-enhances", *packages,
        )
        result: dict[str, list[list[str]]] = {}
        current: list[list[str]] | None = None
        pending_or = False
        virtual: str | None = None
        for raw in out.splitlines():
            if raw and not raw[0].isspace():
                current = result.setdefault(raw.strip(), [])
                pending_or = False
                virtual = None
                continue
            if current is None:
                continue
            line = raw.strip()
            match = re.match(r"^(\|?)(Depends|PreDepends): (\S+)", line)
            if match:
                is_or, _, name = match.groups()
                virtual = name[1:-1] if name.startswith("<") else None
                entry = [] if virtual else [name]
                if pending_or and current:
                    current[-1].extend(entry)
                else:
                    current.append(entry)
                pending_or = is_or == "|"
            elif virtual is not None and current and not line.startswith(("Recommends", "Suggests")):
                # An indented provider line under a virtual dependency: take the first one.
                if not current[-1]:
                    current[-1].append(line)
                virtual = None
        for groups in result.values():
            groups[:] = [g for g in groups if g]
        return result

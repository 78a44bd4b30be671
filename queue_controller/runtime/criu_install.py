"""Provision a working CRIU >= 4.0 from Debian's package archive into a per-user cache.

Debian bookworm's CRIU 3.17 fails `criu check` on current kernels (vDSO layout), while trixie's 4.x
works. We never touch system apt state: a private apt directory holds a trixie sources list, the
package closure is derived with `apt-cache depends --recurse`, the .debs are unpacked under one
prefix, and a small `criu` wrapper runs trixie's binary with trixie's own loader and libraries
(bookworm's glibc is too old for it).

Layout: ``<cache>/criu/<version>/{root,bin/criu}`` and ``<cache>/criu/current -> <version>``.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from queue_controller.debian import Apt, DebianError
from queue_controller.runtime.errors import RuntimeFailure

SUITE = "trixie"
MIN_VERSION = (4, 0)

# Debian multiarch triplet and dynamic loader per machine architecture.
_ARCH = {
    "x86_64": ("x86_64-linux-gnu", "ld-linux-x86-64.so.2"),
    "aarch64": ("aarch64-linux-gnu", "ld-linux-aarch64.so.1"),
}


@dataclass(frozen=True)
class CriuInfo:
    path: str
    version: tuple[int, ...]
    version_text: str


def cache_root() -> Path:
    """Where ckq caches things: $CKQ_CACHE_DIR, else $XDG_CACHE_HOME/ckq, else ~/.cache/ckq."""
    if os.environ.get("CKQ_CACHE_DIR"):
        return Path(os.environ["CKQ_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "ckq"


def criu_cache_dir() -> Path:
    return cache_root() / "criu"


def cached_criu() -> Path | None:
    """The wrapper installed by `ckq criu install`, if any."""
    wrapper = criu_cache_dir() / "current" / "bin" / "criu"
    return wrapper if wrapper.is_file() and os.access(wrapper, os.X_OK) else None


def parse_version(text: str) -> tuple[int, ...] | None:
    match = re.search(r"Version:\s*([0-9]+(?:\.[0-9]+)*)", text)
    if not match:
        return None
    return tuple(int(p) for p in match.group(1).split("."))


def probe_version(criu: str) -> CriuInfo | None:
    """Run `criu --version`; None when it does not run at all."""
    try:
        proc = subprocess.run([criu, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    version = parse_version(proc.stdout + proc.stderr)
    if proc.returncode != 0 or version is None:
        return None
    return CriuInfo(path=criu, version=version, version_text=".".join(map(str, version)))


def find_criu() -> CriuInfo | None:
    """Pick the CRIU to use: $CKQ_CRIU (explicit, no fallback), a CRIU >= 4.0 on PATH, then the cache."""
    explicit = os.environ.get("CKQ_CRIU")
    if explicit:
        return probe_version(explicit)
    on_path = shutil.which("criu")
    if on_path:
        info = probe_version(on_path)
        if info and info.version >= MIN_VERSION:
            return info
    cached = cached_criu()
    if cached:
        return probe_version(str(cached))
    return None


def package_closure(apt: Apt) -> list[str]:
    """criu plus every library package it needs, from `apt-cache depends --recurse`.

    Only real packages named lib*/zlib* (plus criu) are kept: the recursion also reaches things like
    debconf or python that the binary does not load. The result is verified afterwards by asking the
    loader to resolve every shared object (see _verify_libraries)."""
    out = apt.run(
        "apt-cache", "depends", "--recurse", "--no-recommends", "--no-suggests", "--no-conflicts",
        "--no-breaks", "--no-replaces", "--no-enhances", "--no-pre-depends", "criu",
    )
    names = {line.strip() for line in out.splitlines() if line and not line[0].isspace()}
    keep = {n for n in names if not n.startswith("<") and (n == "criu" or n.startswith(("lib", "zlib")))}
    # Pre-Depends (e.g. libc6 -> libgcc-s1) were excluded to keep the walk small; libc6 is certain.
    keep.add("libc6")
    return sorted(keep)


def _verify_libraries(root: Path, triplet: str, loader: str) -> None:
    libdir = root / "usr/lib" / triplet
    proc = subprocess.run(
        [str(libdir / loader), "--library-path", _libpath(root, triplet), "--list",
         str(root / "usr/sbin/criu")],
        capture_output=True, text=True,
    )
    missing = [line.split()[0] for line in proc.stdout.splitlines() if "not found" in line]
    if proc.returncode != 0 or missing:
        detail = ", ".join(missing) or proc.stderr.strip()
        raise RuntimeFailure(f"unpacked CRIU misses shared libraries: {detail}")


def _libpath(root: Path, triplet: str) -> str:
    return f"{root / 'usr/lib' / triplet}:{root / 'lib' / triplet}"


def _write_wrapper(prefix: Path, root: Path, triplet: str, loader: str) -> Path:
    wrapper = prefix / "bin" / "criu"
    wrapper.parent.mkdir(parents=True, exist_ok=True)
    # --library-path (not LD_LIBRARY_PATH) so nothing leaks into processes CRIU spawns or restores.
    wrapper.write_text(
        "#!/bin/sh\n"
        "# Generated by `ckq criu install`: Debian trixie's CRIU with its own loader and libraries.\n"
        f"exec '{root / 'usr/lib' / triplet / loader}' --library-path '{_libpath(root, triplet)}' "
        f"'{root / 'usr/sbin/criu'}' \"$@\"\n"
    )
    wrapper.chmod(0o755)
    return wrapper


def install(force: bool = False, log: bool = True) -> CriuInfo:
    """Provision CRIU into the cache (idempotent) and return the wrapper's info."""
    try:
        return _install(force, log)
    except DebianError as exc:
        raise RuntimeFailure(str(exc)) from None


def _install(force: bool, log: bool) -> CriuInfo:
    existing = cached_criu()
    if existing and not force:
        info = probe_version(str(existing))
        if info and info.version >= MIN_VERSION:
            return info
    machine = platform.machine()
    if machine not in _ARCH:
        raise RuntimeFailure(f"no CRIU provisioning recipe for architecture {machine!r}")
    if not shutil.which("apt-get") or not shutil.which("dpkg"):
        raise RuntimeFailure("`ckq criu install` needs apt-get and dpkg (a Debian-based system)")
    triplet, loader = _ARCH[machine]
    base = criu_cache_dir()
    apt = Apt(base / "apt", SUITE)
    if log:
        print(f"ckq: fetching the {SUITE} package index into {apt.state}", flush=True)
    apt.run("apt-get", "update")
    packages = package_closure(apt)
    version = apt.run("apt-cache", "show", "--no-all-versions", "criu")
    match = re.search(r"^Version:\s*(\S+)", version, re.M)
    if not match:
        raise RuntimeFailure("apt-cache did not report a version for criu")
    deb_version = match.group(1).replace(":", "_")
    debs = apt.state / "debs"
    for old in debs.glob("*.deb"):
        old.unlink()
    if log:
        print(f"ckq: downloading criu {deb_version} and {len(packages) - 1} library packages", flush=True)
    apt.run("apt-get", "download", *packages, cwd=debs)
    prefix = base / deb_version
    staging = base / f".{deb_version}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    root = staging / "root"
    root.mkdir(parents=True)
    for deb in sorted(debs.glob("*.deb")):
        subprocess.run(["dpkg", "-x", str(deb), str(root)], check=True)
    _verify_libraries(root, triplet, loader)
    shutil.rmtree(prefix, ignore_errors=True)
    staging.rename(prefix)  # paths in the wrapper point at the final prefix
    wrapper = _write_wrapper(prefix, prefix / "root", triplet, loader)
    info = probe_version(str(wrapper))
    if info is None or info.version < MIN_VERSION:
        raise RuntimeFailure(f"installed CRIU at {wrapper} does not report a version >= 4.0")
    current = base / "current"
    tmp_link = base / ".current.tmp"
    tmp_link.unlink(missing_ok=True)
    tmp_link.symlink_to(deb_version)
    tmp_link.replace(current)  # atomic switch
    return probe_version(str(current / "bin" / "criu")) or info

"""`ckq.local/runtime:<version>`: the self-contained ckq runtime that is injected into users' pods.

The user's image needs nothing from ckq. The controller adds an init container from this image that
copies one directory, `/ckq-runtime`, into a shared `emptyDir`; each checkpointed container then
runs `<mount>/bin/ckq-run --dir … -- <its command>`. That directory must therefore run inside ANY
image, including one with no shell, no Python and a different (or no) libc, so it carries everything:

    bin/ckq-launch            a static Go program (no libc): the entry points below are symlinks to it
    bin/ckq-run               -> the runtime's Python running `queue_controller.runtime.cli`
    bin/criu                  -> Debian trixie's CRIU 4.x with trixie's own loader and libraries
    bin/python3               -> the runtime's Python (isolated mode), e.g. for CRIU action scripts
    bin/ckq-runtime-install   -> copies the directory into DEST: the init container's command
    python/bin/python3.11     Debian bookworm's Python, with its loader and libraries in
    python/lib/<triplet>/     python/lib/<triplet>/ (only the shared objects something here needs)
    python/lib/python3.11/    the standard library (without tests, Tk, IDLE, …), precompiled
    python/lib/python3/dist-packages/   queue_controller (its runtime only) and cryptography
    criu/sbin/criu, criu/lib/<triplet>/  CRIU and exactly the libraries its loader resolves
    python/share/doc/, criu/share/doc/   the Debian copyright files of the packages they come from
    runtime.json              what is inside: versions of ckq, Python, CRIU and the packages

The launcher finds the directory from its own path (/proc/self/exe), so it works wherever the
volume is mounted, and execs `<loader> --library-path <libs> <program>`: the image's libc and
`LD_LIBRARY_PATH` are never used. It exports `CKQ_CRIU` (which CRIU ckq-run uses) and `CKQ_PYTHON`
(how to run this Python again, for CRIU's action-script hook). The Python files are compiled to
unchecked-hash .pyc files at build time, so nothing is written at run time and the volume can be
mounted read-only.

The image holds only `/ckq-runtime`; its entrypoint is the install command. The archive is cached
under `<cache>/images/` by a key of every input (package versions, CRIU, the shipped Python sources,
the launcher source), like the other local images.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path

import queue_controller
from queue_controller.debian import Apt, DebianError, host_suite
from queue_controller.devcluster.errors import DevClusterError
from queue_controller.devcluster.images import (
    LocalImage,
    _cached,
    _goarch,
    _image_config,
    images_dir,
    write_oci_archive,
)
from queue_controller.runtime import criu_install
from queue_controller.runtime.errors import RuntimeFailure

RUNTIME_IMAGE = f"ckq.local/runtime:{queue_controller.__version__}"
# Where the directory lives in the runtime image, and where the controller mounts the shared volume
# in a checkpointed container (the same path keeps commands and logs readable; any path works).
IMAGE_ROOT = "/ckq-runtime"
MOUNT_PATH = "/ckq-runtime"
# The init container mounts the shared volume here and copies the runtime into it.
INSTALL_PATH = "/ckq-install"
INSTALL_COMMAND = [f"{IMAGE_ROOT}/bin/ckq-runtime-install", INSTALL_PATH]
CKQ_RUN = f"{MOUNT_PATH}/bin/ckq-run"

# What a container running ckq-run (CRIU dump and restore of its own child tree) needs under
# runc/containerd, found by trying each combination with real containers (docs/checkpointing.md,
# "Least privilege in a container"). The controller adds this to every checkpointed container.
CONTAINER_SECURITY_CONTEXT: dict[str, object] = {
    "runAsUser": 0,  # CRIU needs CAP_CHECKPOINT_RESTORE effective: a non-root container never has it
    "capabilities": {"add": ["CHECKPOINT_RESTORE", "SYS_PTRACE", "SETPCAP"]},
    "seccompProfile": {"type": "Unconfined"},  # RuntimeDefault: no clone3, no suspending seccomp
}

# Bumped when the way the image is assembled changes, so cached archives are rebuilt (the key also
# holds this file's own digest, so editing the recipe rebuilds it too).
_BUILDER_VERSION = "1"
_PY = "python3.11"
_PYTHON_ROOTS = ["python3.11-minimal", "libpython3.11-stdlib"]
# Reached through Depends but never loaded by ckq-run: mime.types, perl for mailcap, tzdata, and the
# libraries of the extension modules left out below (sqlite, Berkeley DB, gdbm, ncurses, readline,
# NIS with Kerberos, crypt). A library something kept does need fails the build (`_stage_python`).
_PYTHON_SKIP = frozenset({
    "media-types", "mime-support", "mailcap", "perl", "perl-base", "perl-modules-5.36", "libperl5.36", "tzdata",
    "readline-common", "debconf", "dpkg", "install-info", "libsqlite3-0", "libdb5.3", "libgdbm6", "libgdbm-compat4",
    "libncursesw6", "libtinfo6", "libreadline8", "libnsl2", "libtirpc3", "libtirpc-common", "libgssapi-krb5-2",
    "libkrb5-3", "libk5crypto3", "libkrb5support0", "libkeyutils1", "libcom-err2", "libcrypt1",
})
# Standard-library parts ckq-run never imports: tests, GUIs, build files, installers, 2to3.
_STDLIB_DROP = frozenset({"test", "idlelib", "tkinter", "turtledemo", "ensurepip", "lib2to3", "pydoc_data",
                          "distutils", "venv", "unittest", "sqlite3", "dbm", "curses", "turtle.py",
                          "config-3.11-x86_64-linux-gnu", "site-packages", "dist-packages"})
# Extension modules ckq-run never loads; several would pull in sqlite, Berkeley DB, ncurses, Kerberos.
_DYNLOAD_DROP = re.compile(r"^(_test\w*|_xx\w*|xxlimited\w*|_ctypes_test|_crypt|_curses\w*|_dbm|_gdbm|_sqlite3|nis|"
                           r"ossaudiodev|readline|audioop|_lsprof)\.")
# The queue_controller modules ckq-run imports (checked at build time by importing the CLI).
_CKQ_FILES = ["__init__.py", "py.typed", "debian.py", "runtime"]
# Third-party modules ckq-run imports: cryptography (encryption at rest) and the cffi backend it loads.
_THIRD_PARTY = ["cryptography", "_cffi_backend"]
_ENTRY_POINTS = ["ckq-run", "criu", "python3", "ckq-runtime-install"]
_ELF = b"\x7fELF"

_LAUNCHER_GO = """\
// ckq-launch: the entry points of a self-contained ckq runtime directory (ROOT). It is static (no
// libc), finds ROOT from its own path, and execs the runtime's own dynamic loader on the real
// program, so it runs in any image: no shell, no Python, any libc or none. Called through symlinks:
//
//	ckq-run ARGS              the runtime's Python running queue_controller.runtime.cli
//	python3 ARGS              the runtime's Python (isolated mode)
//	criu ARGS                 CRIU with its own loader and libraries
//	ckq-runtime-install DEST  copy ROOT into DEST (the init container's command)
package main

import (
\t"fmt"
\t"io"
\t"io/fs"
\t"os"
\t"path/filepath"
\t"strings"
\t"syscall"
)

const (
\ttriplet = "@TRIPLET@"
\tloader  = "@LOADER@"
\tpython  = "@PYTHON@"
)

func fail(format string, args ...any) {
\tfmt.Fprintf(os.Stderr, "ckq-launch: "+format+"\\n", args...)
\tos.Exit(69)
}

func main() {
\tself, err := os.Executable()
\tif err != nil {
\t\tfail("cannot find my own path: %v", err)
\t}
\troot := filepath.Dir(filepath.Dir(self))
\targs := os.Args[1:]
\tswitch name := filepath.Base(os.Args[0]); name {
\tcase "ckq-run":
\t\trunPython(root, append([]string{"-m", "queue_controller.runtime.cli"}, args...))
\tcase "python3", "python":
\t\trunPython(root, args)
\tcase "criu":
\t\trun(root+"/criu", root+"/criu/sbin/criu", args)
\tcase "ckq-runtime-install":
\t\tinstall(root, args)
\tdefault:
\t\tfail("called as %q; call me as one of ckq-run, criu, python3, ckq-runtime-install", name)
\t}
}

func runPython(root string, args []string) {
\tos.Setenv("CKQ_CRIU", root+"/bin/criu")
\tos.Setenv("CKQ_PYTHON", root+"/bin/python3")
\t// -I: ignore PYTHON* variables and the user site directory, which belong to the workload.
\trun(root+"/python", root+"/python/bin/"+python, append([]string{"-I"}, args...))
}

func run(prefix, program string, args []string) {
\tlib := prefix + "/lib/" + triplet
\t// --library-path replaces LD_LIBRARY_PATH for this program only: nothing leaks into children.
\targv := append([]string{lib + "/" + loader, "--library-path", lib, program}, args...)
\terr := syscall.Exec(lib+"/"+loader, argv, os.Environ())
\tfail("cannot run %s: %v", program, err)
}

func install(root string, args []string) {
\tif len(args) != 1 {
\t\tfail("usage: ckq-runtime-install DEST")
\t}
\tdest, err := filepath.Abs(args[0])
\tif err != nil {
\t\tfail("%v", err)
\t}
\tif dest == root || strings.HasPrefix(dest, root+"/") {
\t\tfail("cannot install %s into itself (%s)", root, dest)
\t}
\tvar files, size int64
\terr = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
\t\tif err != nil {
\t\t\treturn err
\t\t}
\t\trel, _ := filepath.Rel(root, path)
\t\ttarget := filepath.Join(dest, rel)
\t\tinfo, err := d.Info()
\t\tif err != nil {
\t\t\treturn err
\t\t}
\t\tswitch {
\t\tcase d.IsDir():
\t\t\tif err := os.MkdirAll(target, 0o755); err != nil {
\t\t\t\treturn err
\t\t\t}
\t\t\treturn os.Chmod(target, info.Mode().Perm())
\t\tcase info.Mode()&fs.ModeSymlink != 0:
\t\t\tlink, err := os.Readlink(path)
\t\t\tif err != nil {
\t\t\t\treturn err
\t\t\t}
\t\t\tos.Remove(target)
\t\t\treturn os.Symlink(link, target)
\t\tcase info.Mode().IsRegular():
\t\t\tfiles++
\t\t\tsize += info.Size()
\t\t\treturn copyFile(path, target, info.Mode().Perm())
\t\t}
\t\treturn nil
\t})
\tif err != nil {
\t\tfail("installing %s into %s failed: %v", root, dest, err)
\t}
\tfmt.Printf("ckq runtime installed into %s: %d files, %d bytes\\n", dest, files, size)
}

// copyFile writes a temporary file and renames it, so a restarted init container never leaves a
// half-written program behind a complete name.
func copyFile(src, dst string, mode fs.FileMode) error {
\tin, err := os.Open(src)
\tif err != nil {
\t\treturn err
\t}
\tdefer in.Close()
\ttmp := dst + ".ckq-tmp"
\tout, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, mode)
\tif err != nil {
\t\treturn err
\t}
\tif _, err := io.Copy(out, in); err != nil {
\t\tout.Close()
\t\treturn err
\t}
\tif err := out.Close(); err != nil {
\t\treturn err
\t}
\tif err := os.Chmod(tmp, mode); err != nil {
\t\treturn err
\t}
\treturn os.Rename(tmp, dst)
}
"""


def _triplet() -> tuple[str, str]:
    machine = os.uname().machine
    if machine not in criu_install._ARCH:
        raise DevClusterError(f"no runtime image recipe for architecture {machine!r}")
    return criu_install._ARCH[machine]


def _launcher_source() -> str:
    triplet, loader = _triplet()
    return _LAUNCHER_GO.replace("@TRIPLET@", triplet).replace("@LOADER@", loader).replace("@PYTHON@", _PY)


def _ckq_sources() -> list[Path]:
    """The queue_controller files shipped in the image (sorted; no caches)."""
    pkg = Path(queue_controller.__file__).parent
    out: list[Path] = []
    for name in _CKQ_FILES:
        path = pkg / name
        out += sorted(p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts) \
            if path.is_dir() else [path]
    return out


def _third_party() -> list[tuple[Path, str]]:
    """(path, name) of each third-party module/package ckq-run imports, from this interpreter, plus the
    license files of their distributions."""
    import importlib.util

    found: list[tuple[Path, str]] = []
    for name in _THIRD_PARTY:
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None:
            raise DevClusterError(f"the runtime image needs the Python module {name!r}; install ckq's dependencies")
        origin = Path(spec.origin)
        found.append((origin.parent, name) if origin.name == "__init__.py" else (origin, origin.name))
    site = found[0][0].parent
    for dist in ("cryptography", "cffi"):
        for info in sorted(site.glob(f"{dist}-*.dist-info")):
            found.append((info, info.name))
    return found


def _dist_version(name: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "?"


def _tree_digest(paths: list[Path], base: Path) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(f"{path.relative_to(base)}\n".encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


# ---- staging the directory ----------------------------------------------------------------------


def _list_libs(loader: Path, libpath: str, elf: Path) -> tuple[dict[str, Path], list[str]]:
    """The shared objects `elf` needs as the loader resolves them: ({soname: file}, [missing])."""
    proc = subprocess.run([str(loader), "--library-path", libpath, "--list", str(elf)], capture_output=True,
                          text=True, check=False)
    found: dict[str, Path] = {}
    missing: list[str] = []
    for line in proc.stdout.splitlines():
        match = re.match(r"\s*(\S+) => (.*?)(?: \(0x[0-9a-f]+\))?$", line.rstrip())
        if not match:
            continue
        name, where = match.groups()
        if where == "not found":
            missing.append(name)
        elif where.startswith("/"):
            found[name] = Path(where)
    if proc.returncode != 0 and not missing and not found:
        missing.append(f"({proc.stderr.strip() or 'loader failed'})")
    return found, missing


def _copy_libs(libs: dict[str, Path], into: Path) -> None:
    into.mkdir(parents=True, exist_ok=True)
    for soname, path in sorted(libs.items()):
        if not (into / soname).exists():
            shutil.copyfile(path.resolve(), into / soname)
            (into / soname).chmod(0o755)


def _is_elf(path: Path) -> bool:
    with path.open("rb") as fh:
        return fh.read(4) == _ELF


def _stage_python(debs: list[Path], work: Path, stage: Path, log: Callable[[str], None]) -> list[str]:
    """Bookworm's Python, stdlib and the libraries they load, plus the packages ckq-run imports.
    Returns the stdlib extension modules dropped because a library they need is not in the set."""
    triplet, loader_name = _triplet()
    unpacked = work / "bookworm"
    for deb in debs:
        subprocess.run(["dpkg", "-x", str(deb), str(unpacked)], check=True)
    libpath = ":".join(str(unpacked / d / triplet) for d in ("usr/lib", "lib"))
    loader = next(p for p in (unpacked / "usr/lib" / triplet / loader_name, unpacked / "lib" / triplet / loader_name)
                  if p.is_file())
    py = stage / "python"
    libdir = py / "lib" / triplet
    (py / "bin").mkdir(parents=True)
    shutil.copy2(unpacked / "usr/bin" / _PY, py / "bin" / _PY)
    shutil.copytree(unpacked / "usr/lib" / _PY, py / "lib" / _PY, symlinks=True,
                    ignore=lambda _d, names: [n for n in names if n in _STDLIB_DROP or n == "__pycache__"])
    for ext in (py / "lib" / _PY / "lib-dynload").iterdir():
        if _DYNLOAD_DROP.match(ext.name):
            ext.unlink()
    site = py / "lib/python3/dist-packages"
    (site / "queue_controller").mkdir(parents=True)
    pkg = Path(queue_controller.__file__).parent
    for src in _ckq_sources():
        dst = site / "queue_controller" / src.relative_to(pkg)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
    for src, name in _third_party():
        if src.is_dir():
            shutil.copytree(src, site / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copyfile(src, site / name)
    dropped: list[str] = []
    needed: dict[str, Path] = {}
    elves = [py / "bin" / _PY, *sorted(p for p in py.rglob("*.so") if p.is_file() and _is_elf(p))]
    for elf in elves:
        libs, missing = _list_libs(loader, libpath, elf)
        if missing:
            if "lib-dynload" not in elf.parts:
                raise DevClusterError(f"{elf.name} needs {', '.join(missing)}, not in the runtime's packages")
            dropped.append(elf.name.split(".")[0])
            elf.unlink()
            continue
        needed.update(libs)
    _copy_libs(needed, libdir)
    shutil.copyfile(loader.resolve(), libdir / loader_name)
    (libdir / loader_name).chmod(0o755)
    _copy_copyrights(unpacked, py)
    if dropped:
        log(f"runtime image: stdlib modules without their libraries, left out: {', '.join(sorted(dropped))}")
    return sorted(dropped)


def _stage_criu(criu_root: Path, stage: Path) -> None:
    """CRIU and exactly the trixie libraries its loader resolves (from `ckq criu install`'s unpack)."""
    triplet, loader_name = _triplet()
    libpath = ":".join(str(criu_root / d / triplet) for d in ("usr/lib", "lib"))
    loader = criu_root / "usr/lib" / triplet / loader_name
    binary = criu_root / "usr/sbin/criu"
    libs, missing = _list_libs(loader, libpath, binary)
    if missing:
        raise DevClusterError(f"CRIU in {criu_root} misses {', '.join(missing)}; run `ckq criu install --force`")
    (stage / "criu/sbin").mkdir(parents=True)
    shutil.copy2(binary, stage / "criu/sbin/criu")
    libdir = stage / "criu/lib" / triplet
    _copy_libs(libs, libdir)
    shutil.copyfile(loader.resolve(), libdir / loader_name)
    (libdir / loader_name).chmod(0o755)
    _copy_copyrights(criu_root, stage / "criu")


def _copy_copyrights(unpacked: Path, prefix: Path) -> None:
    """Each unpacked package's copyright file (what Debian requires to travel with its binaries)."""
    for src in sorted((unpacked / "usr/share/doc").glob("*/copyright")):
        dst = prefix / "share/doc" / src.parent.name / "copyright"
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src.resolve(), dst)


def _build_launcher(stage: Path) -> None:
    if shutil.which("go") is None:
        raise DevClusterError("building the runtime image needs Go on PATH (the same Go `ckq dev build` uses)")
    bindir = stage / "bin"
    bindir.mkdir(parents=True)
    with tempfile.TemporaryDirectory(prefix="ckq-launch-") as tmp:
        work = Path(tmp)
        (work / "go.mod").write_text("module ckq.local/launch\n\ngo 1.21\n")
        (work / "main.go").write_text(_launcher_source())
        env = {**os.environ, "CGO_ENABLED": "0", "GOTOOLCHAIN": "local", "GOFLAGS": "-trimpath"}
        proc = subprocess.run(["go", "build", "-ldflags=-s -w -buildid=", "-o", str(bindir / "ckq-launch"), "."],
                              cwd=work, env=env, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise DevClusterError(f"building ckq-launch failed: {proc.stderr.strip()[-800:]}")
    for name in _ENTRY_POINTS:
        (bindir / name).symlink_to("ckq-launch")


def _check(stage: Path) -> dict[str, str]:
    """Run the staged runtime as a container would (through the launcher) and compile its Python."""
    def run(*argv: str) -> str:
        proc = subprocess.run(list(argv), capture_output=True, text=True, check=False, env={"PATH": "/nonexistent"})
        if proc.returncode != 0:
            raise DevClusterError(f"the staged runtime fails `{' '.join(argv)}`: "
                                  f"{(proc.stderr or proc.stdout).strip()[-800:]}")
        return proc.stdout + proc.stderr

    py = str(stage / "bin/python3")
    # Unchecked-hash .pyc files: valid whatever the files' mtimes after copying, never rewritten.
    run(py, "-c", "import compileall, py_compile, sys; sys.exit(not compileall.compile_dir(sys.argv[1], "
        "quiet=2, workers=1, invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH))",
        str(stage / "python/lib"))
    out = run(py, "-c", "import sys, queue_controller.runtime.cli, queue_controller.runtime.crypto; "
              "import cryptography.hazmat.primitives.ciphers.aead as a; a.AESGCM(bytes(32)); "
              "print(sys.version.split()[0]); print(sys.prefix)")
    version, prefix = out.split()[:2]
    if Path(prefix) != stage / "python":
        raise DevClusterError(f"the staged Python takes {prefix} as its prefix, not {stage / 'python'}")
    criu = run(str(stage / "bin/criu"), "--version")
    run(str(stage / "bin/ckq-run"), "--help")
    criu_version = criu_install.parse_version(criu)
    return {"python": version, "criu": ".".join(map(str, criu_version or ()))}


def _layer(stage: Path, layer: Path) -> None:
    """One deterministic layer: `ckq-runtime/…` in sorted order, owner root, mtime 0."""
    top = IMAGE_ROOT.strip("/")
    with tarfile.open(layer, "w", format=tarfile.PAX_FORMAT) as tar:
        for path in [stage, *sorted(stage.rglob("*"))]:
            rel = path.relative_to(stage)
            info = tarfile.TarInfo(top if str(rel) == "." else f"{top}/{rel}")
            st = path.lstat()
            info.mode = stat.S_IMODE(st.st_mode)
            info.mtime = 0
            if path.is_symlink():
                info.type = tarfile.SYMTYPE
                info.linkname = os.readlink(path)
                tar.addfile(info)
            elif path.is_dir():
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = st.st_size
                with path.open("rb") as fh:
                    tar.addfile(info, fh)


# ---- the image ----------------------------------------------------------------------------------


def runtime_image(*, log: Callable[[str], None] = lambda _: None) -> LocalImage:
    """`ckq.local/runtime:<ckq version>` (cached by its inputs; built in 20-30 s here)."""
    apt = Apt(images_dir() / "apt", host_suite())
    try:
        if not list((apt.state / "lists").glob("*Packages*")):
            log(f"fetching the {apt.suite} package index into {apt.state}")
            apt.update()
        packages = apt.closure(_PYTHON_ROOTS, skip=_PYTHON_SKIP)
        versions = apt.versions(packages)
    except DebianError as exc:
        raise DevClusterError(f"cannot resolve the packages of {RUNTIME_IMAGE}: {exc}") from None
    try:
        criu = criu_install.install(log=False)
    except RuntimeFailure as exc:
        raise DevClusterError(f"the runtime image needs CRIU: {exc}") from None
    criu_root = (criu_install.criu_cache_dir() / "current").resolve() / "root"
    pkg = Path(queue_controller.__file__).parent
    key = hashlib.sha256(json.dumps({
        "builder": _BUILDER_VERSION, "recipe": hashlib.sha256(Path(__file__).read_bytes()).hexdigest(),
        "arch": _goarch(), "debs": sorted(versions.items()),
        "criu": str(criu_root), "launcher": _launcher_source(), "ckq": _tree_digest(_ckq_sources(), pkg),
        "third_party": {d: _dist_version(d) for d in ("cryptography", "cffi")},
    }, sort_keys=True).encode()).hexdigest()

    def build(target: Path) -> None:
        log(f"building {RUNTIME_IMAGE}: Python from {len(packages)} {apt.suite} packages, CRIU {criu.version_text}")
        with tempfile.TemporaryDirectory(prefix="ckq-runtime-", dir=images_dir()) as tmp:
            work = Path(tmp)
            # The packages go in this build's own directory: two checkouts building at once (their
            # sources differ, so their keys do) must not remove each other's downloads.
            try:
                debs = apt.download(packages, work / "debs")
            except DebianError as exc:
                raise DevClusterError(f"downloading the packages of {RUNTIME_IMAGE} failed: {exc}") from None
            stage = work / "ckq-runtime"
            _build_launcher(stage)
            dropped = _stage_python(debs, work, stage, log)
            _stage_criu(criu_root, stage)
            found = _check(stage)
            manifest = {
                "ckq": queue_controller.__version__, "python": found["python"], "criu": found["criu"],
                "pythonPackages": {p: versions[p] for p in sorted(versions)},
                "criuFrom": f"Debian {criu_install.SUITE} {criu_root.parent.name}",
                "thirdParty": {d: _dist_version(d) for d in ("cryptography", "cffi")},
                "droppedStdlibModules": dropped,
            }
            (stage / "runtime.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
            layer = work / "layer.tar"
            _layer(stage, layer)
            write_oci_archive(target, RUNTIME_IMAGE, layer, _image_config(INSTALL_COMMAND[:1], INSTALL_COMMAND[1:]))

    return _cached(RUNTIME_IMAGE, key, build)


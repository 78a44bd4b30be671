"""Local OCI images, built without Docker or a registry, and imported into real nodes.

A real node never pulls: every image a pod names must already be in its containerd. ckq builds the
images it needs itself and writes each as an OCI image layout packed in a tar (an "OCI archive",
what `ctr images import` and `skopeo` read):

- `ckq.local/pause:3.10` — the pod sandbox image: a static Go program that sleeps and reaps
  children (what `k8s.io/kubernetes/build/pause` does in C), built with the local Go toolchain.
- `ckq.local/python:3` — Debian's python3 with coreutils, procps, bash, grep and sed. The rootfs is
  the unpacked .debs of that package set and what it needs (`queue_controller.debian`), streamed
  straight into one layer: paths are merged-/usr like a Debian 12 install, owners are kept, and every
  mtime is zero, so the same packages always give the same digest. No maintainer script runs; the few
  files those would write (/etc/passwd, /etc/group) are written here.
- `ckq.local/runtime:<ckq version>` — the self-contained ckq-run + CRIU that the controller injects
  into checkpointed pods (`runtime_image.py`).
- `ckq.local/controller:<ckq version>` — the python image plus ckq and what `ckq controller` and
  `ckq agent` import, for running them in the cluster (the Helm chart).

Each archive is cached under `<cache>/images/` by a key of its inputs (package versions, builder
version) and rebuilt only when that key changes. `ckq dev image import FILE` loads any OCI or docker
archive a user built elsewhere into every real node of a cluster.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from queue_controller.debian import Apt, DebianError, host_suite
from queue_controller.devcluster.errors import DevClusterError
from queue_controller.runtime.criu_install import cache_root

PAUSE_IMAGE = "ckq.local/pause:3.10"
PYTHON_IMAGE = "ckq.local/python:3"
# Bumped when the way an image is assembled changes, so cached archives are rebuilt.
_BUILDER_VERSION = "1"
_PYTHON_PACKAGES = ["python3", "coreutils", "procps", "bash", "dash", "grep", "sed", "findutils", "base-files"]
# Needed only by maintainer scripts or init systems, never by a process in a container.
_PYTHON_SKIP = frozenset({"init-system-helpers", "usrmerge", "usr-is-merged", "debconf", "dpkg", "install-info",
                          "perl-base", "libpam-runtime", "lsb-base", "sysvinit-utils"})
_MERGED = {"bin": "usr/bin", "sbin": "usr/sbin", "lib": "usr/lib", "lib64": "usr/lib64", "lib32": "usr/lib32"}
_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

_PAUSE_GO = """\
// pause: the pod sandbox's process. It holds the pod's namespaces, reaps orphans, exits on TERM/INT.
package main

import (
\t"os"
\t"os/signal"
\t"syscall"
)

func main() {
\tsigs := make(chan os.Signal, 8)
\tsignal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
\tfor s := range sigs {
\t\tif s != syscall.SIGCHLD {
\t\t\tos.Exit(0)
\t\t}
\t\tfor {
\t\t\tvar ws syscall.WaitStatus
\t\t\tif pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil); pid <= 0 || err != nil {
\t\t\t\tbreak
\t\t\t}
\t\t}
\t}
}
"""


@dataclass(frozen=True)
class LocalImage:
    """A locally built image: its reference and where its OCI archive is cached."""

    ref: str
    archive: Path


def images_dir() -> Path:
    return cache_root() / "images"


def _goarch() -> str:
    machine = os.uname().machine
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


# ---- OCI layout ---------------------------------------------------------------------------------


def _blob(data: bytes) -> tuple[str, int]:
    return "sha256:" + hashlib.sha256(data).hexdigest(), len(data)


def write_oci_archive(target: Path, ref: str, layer: Path | list[Path], config: dict[str, object]) -> None:
    """Write an OCI image layout as a tar: uncompressed layers (bottom first), config, manifest, index."""
    layers = layer if isinstance(layer, list) else [layer]
    digests = ["sha256:" + _sha256_file(p) for p in layers]
    config = {**config, "rootfs": {"type": "layers", "diff_ids": digests}}
    config_bytes = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
    config_digest, config_size = _blob(config_bytes)
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest,
                   "size": config_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d, "size": p.stat().st_size}
                   for d, p in zip(digests, layers, strict=True)],
    }
    manifest_bytes = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    manifest_digest, manifest_size = _blob(manifest_bytes)
    tag = ref.rsplit(":", 1)[1]
    index = {
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest,
            "size": manifest_size,
            # containerd takes io.containerd.image.name verbatim as the image's name on import.
            "annotations": {"io.containerd.image.name": ref, "org.opencontainers.image.ref.name": tag},
        }],
    }
    tmp = target.with_suffix(".partial")
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        _add_bytes(tar, "oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        _add_bytes(tar, "index.json", json.dumps(index, sort_keys=True).encode())
        _add_bytes(tar, f"blobs/sha256/{config_digest[7:]}", config_bytes)
        _add_bytes(tar, f"blobs/sha256/{manifest_digest[7:]}", manifest_bytes)
        for digest, path in sorted(dict(zip(digests, layers, strict=True)).items()):
            info = tarfile.TarInfo(f"blobs/sha256/{digest[7:]}")
            info.size = path.stat().st_size
            info.mode = 0o644
            with path.open("rb") as fh:
                tar.addfile(info, fh)
    tmp.replace(target)


def _image_config(entrypoint: list[str] | None, cmd: list[str] | None) -> dict[str, object]:
    cfg: dict[str, object] = {"Env": [_PATH, "LANG=C.UTF-8"]}
    if entrypoint:
        cfg["Entrypoint"] = entrypoint
    if cmd:
        cfg["Cmd"] = cmd
    return {"architecture": _goarch(), "os": "linux", "config": cfg}


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes, mode: int = 0o644) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = mode
    tar.addfile(info, io.BytesIO(data))


def _add_dir(tar: tarfile.TarFile, name: str, mode: int = 0o755) -> None:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = mode
    tar.addfile(info)


def _add_symlink(tar: tarfile.TarFile, name: str, target: str) -> None:
    info = tarfile.TarInfo(name)
    info.type = tarfile.SYMTYPE
    info.linkname = target
    info.mode = 0o777
    tar.addfile(info)


# ---- builders -----------------------------------------------------------------------------------


# Archives of one image kept beside the newest: checkouts of different sources (different keys) may
# build and import at the same time, so another key's archive is not removed while it may be in use.
_KEEP_OTHER_VERSIONS = 6


def _cached(ref: str, key: str, build: Callable[[Path], None]) -> LocalImage:
    stem = ref.replace("/", "_").replace(":", "_")
    target = images_dir() / f"{stem}-{key[:16]}.tar"
    if not target.is_file():
        images_dir().mkdir(parents=True, exist_ok=True)
        others = sorted(images_dir().glob(f"{stem}-*.tar"), key=lambda p: p.stat().st_mtime, reverse=True)
        for old in others[_KEEP_OTHER_VERSIONS:]:
            old.unlink(missing_ok=True)
        build(target)  # write_oci_archive writes it whole or not at all
    return LocalImage(ref, target)


def pause_image() -> LocalImage:
    """The sandbox image: a static Go `pause`, built with the local toolchain (cached)."""
    if shutil.which("go") is None:
        raise DevClusterError("building the pause image needs Go on PATH (the same Go `ckq dev build` uses)")
    key = hashlib.sha256(f"{_BUILDER_VERSION}\n{_goarch()}\n{_PAUSE_GO}".encode()).hexdigest()

    def build(target: Path) -> None:
        with tempfile.TemporaryDirectory(prefix="ckq-pause-") as tmp:
            work = Path(tmp)
            (work / "go.mod").write_text("module ckq.local/pause\n\ngo 1.21\n")
            (work / "main.go").write_text(_PAUSE_GO)
            env = {**os.environ, "CGO_ENABLED": "0", "GOTOOLCHAIN": "local", "GOFLAGS": "-trimpath"}
            proc = subprocess.run(["go", "build", "-ldflags=-s -w -buildid=", "-o", "pause", "."], cwd=work,
                                  env=env, capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                raise DevClusterError(f"building the pause image failed: {proc.stderr.strip()[-800:]}")
            layer = work / "layer.tar"
            with tarfile.open(layer, "w", format=tarfile.PAX_FORMAT) as tar:
                info = tarfile.TarInfo("pause")
                data = (work / "pause").read_bytes()
                info.size = len(data)
                info.mode = 0o755
                tar.addfile(info, io.BytesIO(data))
            write_oci_archive(target, PAUSE_IMAGE, layer, _image_config(["/pause"], None))

    return _cached(PAUSE_IMAGE, key, build)


def python_image(*, log: Callable[[str], None] = lambda _: None) -> LocalImage:
    """`ckq.local/python:3` from Debian's packages of this machine's release (cached by versions)."""
    apt = Apt(images_dir() / "apt", host_suite())
    try:
        versions = _resolved_versions(apt, log)
    except DebianError as exc:
        raise DevClusterError(f"cannot resolve the packages of {PYTHON_IMAGE}: {exc}") from None
    packages = sorted(versions)
    key = hashlib.sha256(
        (_BUILDER_VERSION + json.dumps(sorted(versions.items())) + _goarch()).encode()
    ).hexdigest()

    def build(target: Path) -> None:
        log(f"building {PYTHON_IMAGE} from {len(packages)} Debian packages")
        debs_dir = images_dir() / "debs-python"
        try:
            debs = apt.download(packages, debs_dir)
        except DebianError as exc:
            raise DevClusterError(f"downloading the packages of {PYTHON_IMAGE} failed: {exc}") from None
        with tempfile.TemporaryDirectory(prefix="ckq-image-", dir=images_dir()) as tmp:
            layer = Path(tmp) / "layer.tar"
            _rootfs_layer(debs, layer)
            write_oci_archive(target, PYTHON_IMAGE, layer, _image_config(None, ["python3"]))
        shutil.rmtree(debs_dir, ignore_errors=True)

    return _cached(PYTHON_IMAGE, key, build)


def _resolved_versions(apt: Apt, log: Callable[[str], None]) -> dict[str, str]:
    """The image's package set and versions, resolved once per package index (apt-cache is slow:
    ~20 s for the closure here), and again only when the index changes."""
    lists = sorted((apt.state / "lists").glob("*Packages*"))
    if not lists:
        log(f"fetching the {apt.suite} package index into {apt.state}")
        apt.update()
        lists = sorted((apt.state / "lists").glob("*Packages*"))
    stamp = [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in lists]
    cache = apt.state / "python-image-packages.json"
    try:
        saved = json.loads(cache.read_text())
        if saved.get("stamp") == stamp and saved.get("roots") == _PYTHON_PACKAGES:
            return dict(saved["versions"])
    except (OSError, ValueError, KeyError):
        pass
    versions = apt.versions(apt.closure(_PYTHON_PACKAGES, skip=_PYTHON_SKIP))
    cache.write_text(json.dumps({"stamp": stamp, "roots": _PYTHON_PACKAGES, "versions": versions}))
    return versions


def _deb_members(deb: Path) -> Iterator[tuple[tarfile.TarInfo, tarfile.TarFile]]:
    """The entries of a .deb's data archive, read as a stream (`dpkg-deb --fsys-tarfile`)."""
    proc = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
        for member in tar:
            yield member, tar
    if proc.wait() != 0:
        raise DevClusterError(f"dpkg-deb could not read {deb.name}")


def _merged(name: str) -> str:
    if name.startswith("./"):
        name = name[2:]
    name = name.lstrip("/")
    head, _, rest = name.partition("/")
    if head in _MERGED:
        return f"{_MERGED[head]}/{rest}".rstrip("/") if rest else _MERGED[head]
    return name.rstrip("/")


def _rootfs_layer(debs: list[Path], layer: Path) -> None:
    """One layer holding every package's files, merged-/usr, deterministic (mtime 0, sorted input)."""
    seen: set[str] = set()
    with tarfile.open(layer, "w", format=tarfile.PAX_FORMAT) as out:
        for link, target in sorted(_MERGED.items()):
            _add_symlink(out, link, target)
            seen.add(link)
        for d in ("usr", "usr/bin", "usr/sbin", "usr/lib", "usr/lib64", "etc", "var", "var/tmp", "root", "proc",
                  "sys", "dev", "run", "home", "usr/local/bin"):
            _add_dir(out, d, 0o700 if d == "root" else 0o755)
            seen.add(d)
        _add_dir(out, "tmp", 0o1777)
        seen.add("tmp")
        for deb in debs:
            for member, tar in _deb_members(deb):
                name = _merged(member.name)
                if not name or name in seen:
                    continue
                seen.add(name)
                member.name = name
                member.mtime = 0
                member.uname = member.gname = ""
                member.pax_headers = {}  # the packer's atime/ctime would make the digest vary
                if member.islnk():
                    member.linkname = _merged(member.linkname)
                fh = tar.extractfile(member) if member.isfile() else None
                out.addfile(member, fh)
        extra = {
            "etc/passwd": b"root:x:0:0:root:/root:/bin/bash\n"
            b"nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
            "etc/group": b"root:x:0:\nnogroup:x:65534:\n",
            "etc/hostname": b"ckq\n",
        }
        for path, data in extra.items():
            if path not in seen:
                _add_bytes(out, path, data)


# ---- the controller image ------------------------------------------------------------------------
#
# `ckq.local/controller:<version>`: the python image plus ckq and the packages `ckq controller` and
# `ckq agent` import, copied from this interpreter's site-packages (the same wheels the tests ran
# with; compiled extensions are manylinux cp311, which Debian's Python 3.11 loads). matplotlib and what
# only it needs stay out: the controller draws no plots. For the Helm chart and in-cluster runs.

CONTROLLER_IMAGE_NAME = "ckq.local/controller"
_CONTROLLER_SKIP = frozenset({"matplotlib"})
_DIST_PACKAGES = "usr/lib/python3/dist-packages"


def _requirement_name(req: str) -> str | None:
    if "extra ==" in req:
        return None
    match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", req)
    return match.group(0) if match else None


def _dist_closure(root: str) -> list[metadata.Distribution]:
    seen: dict[str, metadata.Distribution] = {}
    todo = [n for r in metadata.requires(root) or [] if (n := _requirement_name(r)) and n not in _CONTROLLER_SKIP]
    while todo:
        name = todo.pop()
        key = re.sub(r"[-_.]+", "-", name).lower()
        if key in seen:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue  # an optional or platform-specific requirement not installed here
        seen[key] = dist
        todo += [n for r in dist.requires or [] if (n := _requirement_name(r))]
    return [seen[k] for k in sorted(seen)]


def controller_image(*, log: Callable[[str], None] = lambda _: None) -> LocalImage:
    """`ckq.local/controller:<ckq version>`: python image + ckq + its runtime dependencies (cached)."""
    import queue_controller

    base = python_image(log=log)
    dists = _dist_closure("ckq")
    pkg = Path(queue_controller.__file__).parent
    sources = sorted(p for p in pkg.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    digest = hashlib.sha256(f"{_BUILDER_VERSION}\n{base.archive.name}\n".encode())
    for dist in dists:
        digest.update(f"{dist.metadata['Name']}=={dist.version}\n".encode())
    for src in sources:
        digest.update(str(src.relative_to(pkg)).encode() + hashlib.sha256(src.read_bytes()).digest())
    ref = f"{CONTROLLER_IMAGE_NAME}:{queue_controller.__version__}"

    def build(target: Path) -> None:
        log(f"building {ref} ({len(dists)} Python distributions)")
        with tempfile.TemporaryDirectory(prefix="ckq-image-", dir=images_dir()) as tmp:
            base_layer = Path(tmp) / "base.tar"
            with tarfile.open(base.archive) as archive:
                index = json.load(archive.extractfile("index.json"))  # type: ignore[arg-type]
                manifest = json.load(archive.extractfile(  # type: ignore[arg-type]
                    f"blobs/sha256/{index['manifests'][0]['digest'][7:]}"))
                blob = archive.extractfile(f"blobs/sha256/{manifest['layers'][0]['digest'][7:]}")
                assert blob is not None
                with base_layer.open("wb") as out:
                    shutil.copyfileobj(blob, out)
            app_layer = Path(tmp) / "app.tar"
            with tarfile.open(app_layer, "w", format=tarfile.PAX_FORMAT) as tar:
                added: set[str] = set()
                for dist in dists:
                    for rel in sorted(dist.files or [], key=str):
                        src = Path(str(dist.locate_file(rel)))
                        if ".." in Path(str(rel)).parts or "__pycache__" in Path(str(rel)).parts or not src.is_file():
                            continue  # scripts in bin/ and caches are not needed
                        _add_file(tar, f"{_DIST_PACKAGES}/{rel}", src, added)
                for src in sources:
                    _add_file(tar, f"{_DIST_PACKAGES}/queue_controller/{src.relative_to(pkg)}", src, added)
            cfg = _image_config(["python3", "-m", "queue_controller.cli"], ["controller"])
            write_oci_archive(target, ref, [base_layer, app_layer], cfg)

    return _cached(ref, digest.hexdigest(), build)


def _add_file(tar: tarfile.TarFile, name: str, src: Path, added: set[str]) -> None:
    """Add `src` as `name` (mtime 0, root-owned, mode kept), with its parent directories once each."""
    parts = name.split("/")
    for i in range(1, len(parts)):
        parent = "/".join(parts[:i])
        if parent not in added:
            added.add(parent)
            _add_dir(tar, parent)
    if name in added:
        return
    added.add(name)
    info = tarfile.TarInfo(name)
    info.size = src.stat().st_size
    info.mode = src.stat().st_mode & 0o777
    with src.open("rb") as fh:
        tar.addfile(info, fh)


def archive_refs(archive: Path) -> list[str]:
    """The image names an OCI or docker archive carries (what `ctr images import` will call them)."""
    try:
        with tarfile.open(archive) as tar:
            names = set(tar.getnames())
            if "index.json" in names:
                member = tar.extractfile("index.json")
                index = json.load(member) if member else {}
                manifests = index.get("manifests", [])
                refs = [m.get("annotations", {}).get("io.containerd.image.name", "") for m in manifests]
                if not all(refs):
                    raise DevClusterError(
                        f"{archive}: an OCI archive whose index names no image (annotation "
                        "io.containerd.image.name); write it with a full name, e.g. `skopeo copy ... "
                        "oci-archive:FILE:registry.example/app:1.0`"
                    )
                return refs
            if "manifest.json" in names:
                member = tar.extractfile("manifest.json")
                manifest = json.load(member) if member else []
                return [t for entry in manifest for t in entry.get("RepoTags") or []]
    except (tarfile.TarError, OSError, ValueError) as exc:
        raise DevClusterError(f"{archive} is not a readable image archive: {exc}") from None
    raise DevClusterError(f"{archive} is neither an OCI archive (index.json) nor a docker archive (manifest.json)")

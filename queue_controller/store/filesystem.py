"""The filesystem checkpoint store: a directory mounted on every node (NFS or a PVC; one host directory
in dev), laid out as `wire.container_store_dir` says:

    <root>/<namespace>/<job>/<podSet>-<index>/<container>/        ckq-run's --dir (mounted in the pod)
        ckq-run.sock                                             its control socket
        checkpoints/<id>/manifest.json, images/, …               one checkpoint (ckq-run writes it)
        checkpoints/.ckq-pruned-<id>                             retention asked to delete <id>
        .ckq-agent/<Checkpoint uid>.json                         the node agent's journal (journal.py)

Incremental checkpoints: a leave-running dump after the first in a workload's life stores only what
changed since its parent (`manifest.parent`), and a restore needs the whole chain. So deleting a
checkpoint that a kept one builds on only marks it (a `.ckq-pruned-<id>` file beside it); every
delete then sweeps the container's directory, removing each marked checkpoint that no remaining
checkpoint names as its parent, until none is left to remove. ckq-run starts a new full chain at
least every `--max-chain` (8) dumps, so at most that many marked checkpoints wait per container.

Safety: every uri is parsed strictly (exact depth, DNS names, no `.`/`..`/empty parts, a
`checkpoint id` without `/` or a leading dot) and must lie under this store's uri root in the
directory of the namespace that asks; below the root nothing follows a symbolic link (fsops.py).
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import os
import re
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path

from queue_controller import wire
from queue_controller.api.common import DNS_LABEL_PATTERN, DNS_SUBDOMAIN_PATTERN
from queue_controller.runtime import manifest as mf
from queue_controller.runtime.errors import RuntimeFailure
from queue_controller.runtime.staging import STAGING_FAILED_PREFIX
from queue_controller.store import fsops
from queue_controller.store.base import ArtifactRef, DeleteOutcome, StoredCheckpoint, StoreError
from queue_controller.store.journal import JOURNAL_DIR, Journal

URI_SCHEME = "file://"
CHECKPOINTS = "checkpoints"  # ckq-run's DIR/checkpoints (runtime/store.py)
PRUNED_PREFIX = ".ckq-pruned-"

_DNS_LABEL = re.compile(DNS_LABEL_PATTERN)
_DNS_SUBDOMAIN = re.compile(DNS_SUBDOMAIN_PATTERN)
_SLOT = re.compile(r"^(?P<pod_set>[a-z0-9]([-a-z0-9]*[a-z0-9])?)-(?P<index>0|[1-9][0-9]{0,8})$")
CHECKPOINT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")  # runtime/store.py new_id() and more


def _check_names(namespace: str, job: str, pod_set: str, index: int, container: str) -> None:
    problems = []
    # fullmatch: `$` alone would accept a trailing newline ("ns\n"), a different directory.
    if not (_DNS_LABEL.fullmatch(namespace) and len(namespace) <= 63):
        problems.append(f"namespace {namespace!r}")
    if not (_DNS_SUBDOMAIN.fullmatch(job) and len(job) <= 253):
        problems.append(f"job {job!r}")
    if not (_DNS_LABEL.fullmatch(pod_set) and len(pod_set) <= 63):
        problems.append(f"pod set {pod_set!r}")
    if isinstance(index, bool) or not isinstance(index, int) or index < 0:
        problems.append(f"pod index {index!r}")
    if not (_DNS_LABEL.fullmatch(container) and len(container) <= 63):
        problems.append(f"container {container!r}")
    if problems:
        raise StoreError("invalid " + ", ".join(problems))


def check_id(checkpoint_id: str) -> str:
    if not CHECKPOINT_ID.fullmatch(checkpoint_id) or ".." in checkpoint_id:
        raise StoreError(f"invalid checkpoint id {checkpoint_id!r}")
    return checkpoint_id


def _slot(pod_set: str, index: int) -> str:
    return f"{pod_set}-{index}"


def _parts(ref: ArtifactRef) -> list[str]:
    return [ref.namespace, ref.job, _slot(ref.pod_set, ref.index), ref.container]


class FilesystemStore:
    """A CheckpointStore over a directory. `uri_root` is the same directory as the cluster names it
    (the ConfigMap's storeHostPath, which artifact uris carry) when this process mounts it elsewhere."""

    def __init__(self, root: str | Path, uri_root: str | None = None) -> None:
        self.root = Path(root)
        if not self.root.is_absolute():
            raise StoreError(f"the store root must be an absolute path, not {str(root)!r}")
        self.uri_root = (uri_root or str(self.root)).rstrip("/") or "/"
        if not self.uri_root.startswith("/") or any(p in (".", "..") for p in self.uri_root.split("/")):
            raise StoreError(f"the store's uri root must be an absolute path, not {uri_root!r}")

    # ---- names ----------------------------------------------------------------------------------
    def host_dir(self, namespace: str, job: str, pod_set: str, index: int, container: str) -> str:
        """The container's directory as the cluster names it (what pods mount and uris carry)."""
        _check_names(namespace, job, pod_set, index, container)
        return wire.container_store_dir(self.uri_root, namespace, job, pod_set, index, container)

    def dir_for(self, namespace: str, job: str, pod_set: str, index: int, container: str) -> Path:
        _check_names(namespace, job, pod_set, index, container)
        return Path(wire.container_store_dir(str(self.root), namespace, job, pod_set, index, container))

    def uri_for(self, namespace: str, job: str, pod_set: str, index: int, container: str,
                checkpoint_id: str) -> str:
        return wire.artifact_uri(self.host_dir(namespace, job, pod_set, index, container), check_id(checkpoint_id))

    def ref_uri(self, ref: ArtifactRef) -> str:
        return self.uri_for(ref.namespace, ref.job, ref.pod_set, ref.index, ref.container, ref.checkpoint_id)

    def parse(self, uri: str, namespace: str) -> ArtifactRef:
        if not uri.startswith(URI_SCHEME):
            raise StoreError(f"artifact uri {uri!r} is not a {URI_SCHEME} uri of this store")
        path = uri[len(URI_SCHEME):]
        prefix = self.uri_root.rstrip("/") + "/"
        if not path.startswith(prefix):
            raise StoreError(f"artifact uri {uri!r} is outside the checkpoint store {self.uri_root}")
        parts = path[len(prefix):].split("/")
        if any(p in ("", ".", "..") for p in parts):
            raise StoreError(f"artifact uri {uri!r} has an empty, '.' or '..' path component")
        if len(parts) != 6 or parts[4] != CHECKPOINTS:
            raise StoreError(f"artifact uri {uri!r} is not <store>/<namespace>/<job>/<podSet>-<index>/"
                             f"<container>/{CHECKPOINTS}/<id>")
        ns, job, slot, container, _, ckpt_id = parts
        m = _SLOT.fullmatch(slot)
        if m is None:
            raise StoreError(f"artifact uri {uri!r}: {slot!r} is not <podSet>-<index>")
        _check_names(ns, job, m["pod_set"], int(m["index"]), container)
        check_id(ckpt_id)
        if ns != namespace:
            raise StoreError(f"artifact uri {uri!r} belongs to namespace {ns!r}, not {namespace!r}")
        return ArtifactRef(ns, job, m["pod_set"], int(m["index"]), container, ckpt_id)

    # ---- safe directory access ------------------------------------------------------------------
    @contextlib.contextmanager
    def _root_fd(self) -> Iterator[int]:
        try:
            fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise StoreError(f"cannot open the checkpoint store {self.root}: {exc.strerror}") from None
        try:
            yield fd
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def open_dir(self, parts: list[str], create: bool = False) -> Iterator[int]:
        """An fd of <root>/<parts…>, no component below the root followed if it is a link."""
        with self._root_fd() as root:
            try:
                with fsops.walk(root, parts, create=create) as fd:
                    yield fd
            except fsops.UnsafePath as exc:
                raise StoreError(f"refusing {self.root}/{'/'.join(parts)}: {exc}") from None

    @contextlib.contextmanager
    def open_container(self, namespace: str, job: str, pod_set: str, index: int, container: str,
                       create: bool = False) -> Iterator[int]:
        _check_names(namespace, job, pod_set, index, container)
        with self.open_dir([namespace, job, _slot(pod_set, index), container], create=create) as fd:
            yield fd

    # ---- reading ----------------------------------------------------------------------------------
    def manifest_at(self, checkpoints_fd: int, checkpoint_id: str) -> mf.Manifest | None:
        """The manifest of checkpoints/<id> (None when absent, unreadable, or not a directory)."""
        try:
            fd = fsops.open_dir(check_id(checkpoint_id), checkpoints_fd)
        except (OSError, fsops.UnsafePath, StoreError):
            return None
        try:
            data = fsops.read_json_at(mf.MANIFEST, fd)
            if not isinstance(data, dict) or "id" not in data or "sha256" not in data:
                return None
            return mf.Manifest.from_dict(data)
        except (OSError, ValueError, TypeError):
            return None
        finally:
            os.close(fd)

    def _entries(self, checkpoints_fd: int) -> tuple[dict[str, mf.Manifest | None], set[str]]:
        """(checkpoint directories -> manifest or None, ids marked pruned)."""
        ckpts: dict[str, mf.Manifest | None] = {}
        marked: set[str] = set()
        for name in os.listdir(checkpoints_fd):
            if name.startswith(PRUNED_PREFIX):
                marked.add(name[len(PRUNED_PREFIX):])
            elif not name.startswith(".") and fsops.is_dir_at(name, checkpoints_fd) and CHECKPOINT_ID.fullmatch(name):
                ckpts[name] = self.manifest_at(checkpoints_fd, name)
        return ckpts, marked

    @contextlib.contextmanager
    def _sub(self, dir_fd: int, name: str) -> Iterator[int]:
        try:
            fd = fsops.open_dir(name, dir_fd)
        except fsops.UnsafePath as exc:
            raise StoreError(f"refusing {name}: {exc}") from None
        try:
            yield fd
        finally:
            os.close(fd)

    def _subdirs(self, dir_fd: int) -> list[str]:
        return sorted(n for n in os.listdir(dir_fd) if not n.startswith(".") and fsops.is_dir_at(n, dir_fd))

    def list(self, namespace: str | None = None, job: str | None = None) -> list[StoredCheckpoint]:
        if namespace is not None and not _DNS_LABEL.fullmatch(namespace):
            raise StoreError(f"invalid namespace {namespace!r}")
        if job is not None and not _DNS_SUBDOMAIN.fullmatch(job):
            raise StoreError(f"invalid job {job!r}")
        out: list[StoredCheckpoint] = []
        with self._root_fd() as root:
            namespaces = [namespace] if namespace else self._subdirs(root)
            for ns in namespaces:
                if not _DNS_LABEL.fullmatch(ns):
                    continue
                with contextlib.suppress(FileNotFoundError, fsops.UnsafePath), fsops.walk(root, [ns]) as nfd:
                    for jb in [job] if job else self._subdirs(nfd):
                        with contextlib.suppress(FileNotFoundError, fsops.UnsafePath), fsops.walk(nfd, [jb]) as jfd:
                            out.extend(self._list_job(ns, jb, jfd))
        return out

    def _list_job(self, ns: str, job: str, job_fd: int) -> builtins.list[StoredCheckpoint]:
        out: builtins.list[StoredCheckpoint] = []
        for slot in self._subdirs(job_fd):
            m = _SLOT.fullmatch(slot)
            if m is None:
                continue
            with contextlib.suppress(FileNotFoundError, fsops.UnsafePath), fsops.walk(job_fd, [slot]) as sfd:
                for container in self._subdirs(sfd):
                    with contextlib.suppress(FileNotFoundError, fsops.UnsafePath), \
                            fsops.walk(sfd, [container, CHECKPOINTS]) as kfd:
                        ckpts, marked = self._entries(kfd)
                        for ckpt_id, man in sorted(ckpts.items()):
                            if man is None:
                                continue
                            try:
                                ref = ArtifactRef(ns, job, m["pod_set"], int(m["index"]), container, ckpt_id)
                                uri = self.ref_uri(ref)
                            except StoreError:
                                continue
                            out.append(StoredCheckpoint(
                                ref=ref, uri=uri, sha256=man.sha256, size_bytes=int(man.sizeBytes or 0),
                                created=man.created, kind=man.kind, parent=man.parent,
                                pruned=ckpt_id in marked))
        return out

    def verify(self, uri: str, namespace: str, sha256: str | None = None) -> mf.Manifest:
        ref = self.parse(uri, namespace)
        try:
            with self.open_dir([*_parts(ref), CHECKPOINTS]) as kfd:
                manifest = self._verify_one(kfd, ref.checkpoint_id, uri)
                if sha256 and manifest.sha256 != sha256:
                    raise StoreError(f"checkpoint {uri} does not match its record: content sha256 "
                                     f"{manifest.sha256[:16]}…, recorded {sha256[:16]}…")
                child = manifest
                depth = 0
                while child.parent:
                    depth += 1
                    if depth > 1024:
                        raise StoreError(f"checkpoint {uri}: its chain of ancestors does not end")
                    parent = self._verify_one(kfd, child.parent, uri, needed_by=child.id)
                    if child.parentSha256 and parent.sha256 != child.parentSha256:
                        raise StoreError(f"checkpoint {uri}: {child.id} was taken against a different "
                                         f"{parent.id} (sha256 mismatch)")
                    child = parent
                return manifest
        except FileNotFoundError:
            raise StoreError(f"checkpoint {uri} is missing (no such container directory)") from None

    def _verify_one(self, checkpoints_fd: int, ckpt_id: str, uri: str, needed_by: str | None = None) -> mf.Manifest:
        what = f"checkpoint {uri}" if needed_by is None else f"ancestor {ckpt_id} (of {needed_by}) of {uri}"
        try:
            fd = fsops.open_dir(check_id(ckpt_id), checkpoints_fd)
        except FileNotFoundError:
            raise StoreError(f"{what} is missing") from None
        except fsops.UnsafePath:
            raise StoreError(f"{what} is a symbolic link or not a directory; refusing it") from None
        try:
            if fsops.lstat_at(mf.MANIFEST, fd) is None:
                raise StoreError(f"{what} has no {mf.MANIFEST}: incomplete or not a checkpoint")
            try:
                manifest = mf.verify(Path(f"/proc/self/fd/{fd}"))  # runtime/manifest.py's tree hash
            except RuntimeFailure as exc:
                raise StoreError(f"{what}: {exc}") from None
            if manifest.id != ckpt_id:
                raise StoreError(f"{what}: its manifest names checkpoint {manifest.id!r}")
            return manifest
        finally:
            os.close(fd)

    def bytes_stored(self, namespace: str | None = None, job: str | None = None) -> int:
        if job is not None and namespace is None:
            raise StoreError("bytes_stored(job=…) needs the job's namespace")
        parts = [p for p in (namespace, job) if p is not None]
        if namespace is not None and not _DNS_LABEL.fullmatch(namespace):
            raise StoreError(f"invalid namespace {namespace!r}")
        if job is not None and not _DNS_SUBDOMAIN.fullmatch(job):
            raise StoreError(f"invalid job {job!r}")
        try:
            with self.open_dir(parts) as fd:
                return fsops.regular_bytes(fd)
        except FileNotFoundError:
            return 0

    # ---- deleting ---------------------------------------------------------------------------------
    def delete(self, uri: str, namespace: str) -> DeleteOutcome:
        ref = self.parse(uri, namespace)
        try:
            with self.open_dir(_parts(ref)) as cfd, self._sub(cfd, CHECKPOINTS) as kfd:
                with contextlib.suppress(FileNotFoundError):  # a staging failure of it (node-local) is moot now
                    os.unlink(STAGING_FAILED_PREFIX + ref.checkpoint_id, dir_fd=kfd)
                st = fsops.lstat_at(ref.checkpoint_id, kfd)
                if st is None:
                    self.sweep(cfd, kfd)
                    return "missing"
                if not stat.S_ISDIR(st.st_mode):  # debris or a planted link: remove the entry itself
                    os.unlink(ref.checkpoint_id, dir_fd=kfd)
                    self.sweep(cfd, kfd)
                    return "deleted"
                fsops.write_atomic_at(PRUNED_PREFIX + ref.checkpoint_id, b"", kfd)
                removed = self.sweep(cfd, kfd)
                return "deleted" if ref.checkpoint_id in removed else "deferred"
        except FileNotFoundError:
            return "missing"

    def sweep(self, container_fd: int, checkpoints_fd: int) -> set[str]:
        """Remove every marked checkpoint that no remaining checkpoint builds on (repeatedly, so a
        chain whose last kept member was marked goes entirely); returns the ids removed."""
        removed: set[str] = set()
        while True:
            ckpts, marked = self._entries(checkpoints_fd)
            for stale in marked - set(ckpts):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(PRUNED_PREFIX + stale, dir_fd=checkpoints_fd)
            needed = {m.parent for m in ckpts.values() if m is not None and m.parent}
            doomed = sorted((marked & set(ckpts)) - needed)
            if not doomed:
                break
            for ckpt_id in doomed:
                try:
                    shutil.rmtree(ckpt_id, dir_fd=checkpoints_fd)
                except OSError as exc:
                    if exc.errno != errno.ENOENT:
                        raise StoreError(f"cannot delete checkpoint {ckpt_id}: {exc.strerror}") from None
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(PRUNED_PREFIX + ckpt_id, dir_fd=checkpoints_fd)
                removed.add(ckpt_id)
        if removed:
            Journal(container_fd).forget(removed)
        return removed


__all__ = ["CHECKPOINTS", "JOURNAL_DIR", "PRUNED_PREFIX", "URI_SCHEME", "FilesystemStore", "check_id"]

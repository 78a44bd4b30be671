"""Moving checkpoint images between the node-local stores of two nodes (storeMode: node-local).

Each node agent serves its node's store over HTTP (`TransferServer`, on the node's InternalIP and the
cluster's storeTransferPort): `GET /v1/checkpoint?namespace=NS&uri=URI` answers one checkpoint
directory as a tar stream. Every request carries `Authorization: Bearer <token>`, the shared secret of
the agents (a Secret the Helm chart and `ckq dev up` create, mounted as a file); anything else is
refused with 401. The uri is parsed by the store as for any other operation (inside the store, in
that namespace, no `..`, no link followed), so a request can read nothing but a checkpoint.

`stage` is the other end, run by the agent of the node a restored pod is bound to: it fetches the
checkpoint and, for an incremental one, each ancestor it builds on that this node lacks, into
`checkpoints/.ckq-staging-<id>/`; recomputes every one's content hash (runtime/manifest.py); requires
the newest one's sha256 to be the one the Checkpoint's status records, and each parent's to be the
one its child was taken against; and only then renames them into place, ancestors first. The rename
of the requested checkpoint is the "staged" signal ckq-run waits for (runtime/staging.py). A transfer
that was cut, tampered with or served from a damaged source is refused by those hashes: nothing
unverified is ever renamed into place.

Integrity does not depend on the channel; confidentiality does: the stream is plain HTTP inside the
cluster network. Jobs whose memory must not cross it in clear set spec.checkpoint.encryptionKey (their
images are ciphertext at rest and in transit).
"""

from __future__ import annotations

import contextlib
import hmac
import http.server
import io
import logging
import os
import shutil
import stat
import tarfile
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from queue_controller.runtime import manifest as mf
from queue_controller.runtime.errors import RuntimeFailure
from queue_controller.store import fsops
from queue_controller.store.base import StoreError
from queue_controller.store.filesystem import CHECKPOINTS, FilesystemStore

log = logging.getLogger("ckq.store.transfer")
PATH = "/v1/checkpoint"
STAGING_PREFIX = ".ckq-staging-"
MAX_CHAIN = 1024


class StagingError(StoreError):
    """A checkpoint could not be staged; the message says which, from where, and why. `transient`: the
    source could not be reached or the transfer broke off (the serving agent restarting, a network
    blip), so asking again may succeed; a refusal or a copy that does not verify is final."""

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


# ---- serving -------------------------------------------------------------------------------------


def _write_tar(ckpt_fd: int, out: io.BufferedIOBase) -> None:
    """The checkpoint directory (an open fd) as a tar stream: directories, regular files and symbolic
    links as they are (none followed); anything else is left out (and then fails the receiver's hash)."""
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for path, dirs, files, dfd in os.fwalk(".", dir_fd=ckpt_fd, follow_symlinks=False):
            for name in sorted(dirs + files):
                st = fsops.lstat_at(name, dfd)
                if st is None:
                    continue
                arc = os.path.normpath(os.path.join(path, name))
                info = tarfile.TarInfo(arc)
                info.mtime = int(st.st_mtime)
                info.mode = stat.S_IMODE(st.st_mode)
                if stat.S_ISDIR(st.st_mode):
                    info.type = tarfile.DIRTYPE
                    tar.addfile(info)
                elif stat.S_ISLNK(st.st_mode):
                    info.type = tarfile.SYMTYPE
                    info.linkname = os.readlink(name, dir_fd=dfd)
                    tar.addfile(info)
                elif stat.S_ISREG(st.st_mode):
                    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
                    with os.fdopen(fd, "rb") as fh:
                        info.size = os.fstat(fh.fileno()).st_size
                        tar.addfile(info, fh)


class TransferServer:
    """The agent's image server: one thread per request, bound to `host:port`."""

    def __init__(self, store: FilesystemStore, token: str, host: str, port: int) -> None:
        if not token:
            raise StoreError("the image transfer needs a token (the agents' shared secret)")
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"  # one request per connection; the body ends when it closes

            def log_message(self, fmt: str, *args: Any) -> None:
                log.debug("transfer: %s " + fmt, self.client_address[0], *args)

            def do_GET(self) -> None:
                server.handle(self)

        self.store = store
        self.token = token.encode()
        self.httpd = http.server.ThreadingHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True
        self.address = f"{host}:{self.httpd.server_address[1]}"
        self.thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    def handle(self, req: http.server.BaseHTTPRequestHandler) -> None:
        given = req.headers.get("Authorization", "").removeprefix("Bearer ").encode()
        if not hmac.compare_digest(given, self.token):
            req.send_error(401, "a valid transfer token is required")
            return
        url = urllib.parse.urlsplit(req.path)
        query = urllib.parse.parse_qs(url.query)
        if url.path != PATH or len(query.get("uri", [])) != 1 or len(query.get("namespace", [])) != 1:
            req.send_error(404, f"GET {PATH}?namespace=NS&uri=URI")
            return
        uri, namespace = query["uri"][0], query["namespace"][0]
        try:
            ref = self.store.parse(uri, namespace)
            parts = [ref.namespace, ref.job, f"{ref.pod_set}-{ref.index}", ref.container, CHECKPOINTS]
            with self.store.open_dir(parts) as kfd:
                try:
                    ckpt_fd = fsops.open_dir(ref.checkpoint_id, kfd)
                except FileNotFoundError:
                    req.send_error(404, f"no checkpoint {uri} on this node")
                    return
                except fsops.UnsafePath:
                    req.send_error(403, f"refusing {uri}: not a directory")
                    return
                try:
                    if fsops.lstat_at(mf.MANIFEST, ckpt_fd) is None:
                        req.send_error(404, f"checkpoint {uri} is incomplete on this node (no manifest)")
                        return
                    req.send_response(200)
                    req.send_header("Content-Type", "application/x-tar")
                    req.end_headers()
                    _write_tar(ckpt_fd, req.wfile)
                    log.info("transfer: served %s to %s", uri, req.client_address[0])
                finally:
                    os.close(ckpt_fd)
        except FileNotFoundError:
            req.send_error(404, f"no checkpoint {uri} on this node")
        except StoreError as exc:
            req.send_error(403, str(exc)[:300])
        except (BrokenPipeError, ConnectionResetError):
            log.info("transfer: %s hung up during %s", req.client_address[0], uri)

    def start(self) -> None:
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="ckq-transfer", daemon=True)
        self.thread.start()

    def shutdown(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


# ---- staging ----------------------------------------------------------------------------------------


def _fetch(source: str, token: str, namespace: str, uri: str, dest: Path, timeout: float) -> None:
    """Unpack the source's tar stream of `uri` into `dest` (tarfile's "data" filter: nothing absolute,
    nothing outside `dest`, no devices, no links leaving it)."""
    query = urllib.parse.urlencode({"namespace": namespace, "uri": uri})
    request = urllib.request.Request(f"{source.rstrip('/')}{PATH}?{query}",
                                     headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp, \
                tarfile.open(fileobj=resp, mode="r|") as tar:
            tar.extractall(dest, filter="data")
    except urllib.error.HTTPError as exc:
        raise StagingError(f"the agent at {source} refused {uri}: {exc.code} {exc.reason}",
                           transient=exc.code >= 500) from None
    except urllib.error.URLError as exc:
        raise StagingError(f"cannot reach the agent at {source} for {uri}: {exc.reason}", transient=True) from None
    except (tarfile.TarError, OSError, EOFError) as exc:
        # A stream cut off mid-way reads as a truncated tar: worth another try. A stream that is not a
        # checkpoint would fail verification anyway, after the retry.
        raise StagingError(f"the transfer of {uri} from {source} broke off or is not a checkpoint: {exc}",
                           transient=True) from None


@contextlib.contextmanager
def _staging_dir(kfd: int, ckpt_id: str) -> Iterator[tuple[int, Path]]:
    name = STAGING_PREFIX + ckpt_id
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(name, dir_fd=kfd)  # debris of a staging a restarted agent did not finish
    os.mkdir(name, 0o700, dir_fd=kfd)
    fd = fsops.open_dir(name, kfd)
    try:
        yield fd, Path(f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(name, dir_fd=kfd)


def stage(store: FilesystemStore, namespace: str, uri: str, sha256: str, source: str, token: str,
          timeout: float = 600.0) -> list[str]:
    """Copy checkpoint `uri` (and the ancestors this node lacks) from the agent at `source` into this
    node's store, verified against `sha256` (the Checkpoint's record). Returns the ids it installed
    (empty when the checkpoint was already here). StagingError says what failed."""
    if not sha256:
        raise StagingError(f"checkpoint {uri} has no recorded sha256 to verify a copy against")
    ref = store.parse(uri, namespace)
    with store.open_container(ref.namespace, ref.job, ref.pod_set, ref.index, ref.container, create=True) as cfd:
        kfd = fsops.ensure_dir(CHECKPOINTS, cfd, 0o700)
        try:
            if fsops.is_dir_at(ref.checkpoint_id, kfd):
                return []  # staged before (a restarted agent, a second pod): ckq-run verifies it on restore
            with _staging_dir(kfd, ref.checkpoint_id) as (tfd, tmp):
                fetched: list[mf.Manifest] = []
                want, want_sha = ref.checkpoint_id, sha256
                while True:
                    if len(fetched) >= MAX_CHAIN:
                        raise StagingError(f"checkpoint {uri}: its chain of ancestors does not end")
                    local = store.manifest_at(kfd, want)
                    if local is not None:  # this node has the rest of the chain
                        if local.sha256 != want_sha:
                            raise StagingError(f"checkpoint {uri}: this node's copy of ancestor {want} is not the "
                                               "one it was taken against (sha256 mismatch)")
                        break
                    part_uri = store.uri_for(ref.namespace, ref.job, ref.pod_set, ref.index, ref.container, want)
                    os.mkdir(want, 0o700, dir_fd=tfd)
                    _fetch(source, token, namespace, part_uri, tmp / want, timeout)
                    try:
                        got = mf.verify(tmp / want)  # recomputes the content hash from the bytes received
                    except RuntimeFailure as exc:
                        raise StagingError(f"the copy of {part_uri} from {source} is corrupt: {exc}") from None
                    if got.id != want:
                        raise StagingError(f"the copy of {part_uri} from {source} names checkpoint {got.id!r}")
                    if got.sha256 != want_sha:
                        raise StagingError(
                            f"the copy of {part_uri} from {source} does not match its record: content sha256 "
                            f"{got.sha256[:16]}…, recorded {want_sha[:16]}…")
                    fetched.append(got)
                    if not got.parent:
                        break
                    if not got.parentSha256:
                        raise StagingError(f"checkpoint {got.id} builds on {got.parent} but records no sha256 of it")
                    want, want_sha = got.parent, got.parentSha256
                for m in reversed(fetched):  # ancestors first: the requested one last is the "staged" signal
                    try:
                        os.rename(m.id, m.id, src_dir_fd=tfd, dst_dir_fd=kfd)
                    except OSError as exc:
                        if not fsops.is_dir_at(m.id, kfd):  # not a concurrent staging of the same id
                            raise StagingError(f"cannot install staged checkpoint {m.id}: {exc.strerror}") from None
                os.fsync(kfd)
                return [m.id for m in reversed(fetched)]
        finally:
            os.close(kfd)

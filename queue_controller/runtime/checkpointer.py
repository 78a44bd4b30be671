"""Taking one checkpoint of the supervised workload, in CRIU mode or Signal mode."""

from __future__ import annotations

import json
import os
import platform
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from queue_controller.runtime import criu_images, crypto, fsnap, gpu, pagestore, procfs, signal_mode
from queue_controller.runtime import manifest as mf
from queue_controller.runtime.checkpoint_request import Chain, Request, Settings
from queue_controller.runtime.criu import Criu, Waiter
from queue_controller.runtime.errors import RuntimeFailure
from queue_controller.runtime.follow import Follower, HashSink, Sink, WritebackSink
from queue_controller.runtime.store import RUNTIME_JSON, new_id


def _host() -> dict[str, str]:
    return {"hostname": socket.gethostname(), "arch": platform.machine()}


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _encrypt_tree(root: Path, key: bytes) -> None:
    for path in sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink()):
        rel = path.relative_to(root).as_posix()
        tmp = path.with_name(path.name + ".enc-tmp")
        crypto.encrypt_file(key, path, tmp, rel)
        tmp.replace(path)


def _close_writeback(sinks: dict[str, Sink | None]) -> None:
    for sink in sinks.values():
        if isinstance(sink, WritebackSink):
            sink.close()


def _close_sinks(sinks: dict[str, Sink | None]) -> dict[str, str]:
    """Finish every sink; returns the digests the hashing sinks computed, by relative path."""
    known: dict[str, str] = {}
    for name, sink in sinks.items():
        if isinstance(sink, HashSink):
            known[f"images/{name}"] = sink.close()
    return known


class Checkpointer:
    def __init__(self, settings: Settings, criu: Criu | None, waiter: Waiter, stdio: dict[str, str],
                 cmd: list[str]) -> None:
        self.s = settings
        self.criu = criu
        self.waiter = waiter
        self.stdio = stdio
        self.cmd = cmd
        self.chain = Chain()

    # ---- common ---------------------------------------------------------------------------------
    def runtime_info(self, pid: int, gpu_pids: list[int]) -> dict[str, Any]:
        return {"mode": self.s.mode, "cmd": self.cmd, "pid": pid, "stdio": self.stdio,
                "writable": self.s.writable, "tcp": self.s.tcp, "gpuPids": gpu_pids}

    def manifest(self, ckpt_id: str, started: float, req: Request, parent: str | None,
                  logical: int, kind: str) -> mf.Manifest:
        parent_sha = None
        if parent:
            parent_sha = mf.read_manifest(self.s.store.path(parent)).sha256
        return mf.Manifest(
            id=ckpt_id, created=_now(), sizeBytes=0, sha256="",
            criuVersion=self.criu.version if self.criu and self.s.mode == "CRIU" else None,
            kernel=platform.release(), durationSeconds=0.0, leaveRunning=req.leave_running or req.pre_dump,
            parent=parent, mode=self.s.mode, kind=kind, restorable=kind != "pre-dump",
            parentSha256=parent_sha, chainDepth=(self.chain.depth + 1) if parent else 0,
            logicalSizeBytes=logical,
            encryption=(
                {"algorithm": crypto.ALGORITHM, "keyId": crypto.key_id(self.s.key)} if self.s.key else None
            ),
            host=_host(),
        )

    def finish(self, tmp: Path, manifest: mf.Manifest, started: float,
                known: dict[str, str] | None = None) -> mf.Manifest:
        if self.s.key:
            _encrypt_tree(tmp, self.s.key)
        manifest.durationSeconds = 0.0
        t0 = time.monotonic()
        self.s.store.publish(tmp, manifest, known)
        manifest.phases["publish"] = round(time.monotonic() - t0, 3)
        # The duration covers everything up to the durable rename; rewrite just that field.
        manifest.durationSeconds = round(time.monotonic() - started, 3)
        final = self.s.store.path(manifest.id)
        mf.write_manifest(final, manifest)
        return manifest

    def take(self, pid: int, req: Request) -> mf.Manifest:
        if self.s.mode == "Signal":
            return signal_mode.take(self, pid, req)
        return self._take_criu(pid, req)

    # ---- CRIU -----------------------------------------------------------------------------------
    def _hook_script(self) -> Path:
        """CRIU execs action scripts directly (no shell: the image may have none), so the hook is a
        Python script whose interpreter line runs this Python: $CKQ_PYTHON when the injected
        runtime's launcher set it (its Python only runs through the launcher), else sys.executable."""
        path = self.s.store.root / ".ckq-fsnap-hook"
        python = os.environ.get("CKQ_PYTHON") or sys.executable
        package_parent = str(Path(__file__).resolve().parents[2])
        text = (f"#!{python}\nimport sys\nsys.path.insert(0, {package_parent!r})\n"
                "from queue_controller.runtime import fsnap\nsys.exit(fsnap.hook())\n")
        if not path.is_file() or path.read_text() != text:
            tmp = path.with_suffix(".tmp")
            tmp.write_text(text)
            tmp.chmod(0o700)
            tmp.replace(path)
        return path

    def _sink_factory(self, images: Path, parent: str | None) -> Callable[[str], Sink | None]:
        def make(name: str) -> Sink | None:
            if self.s.key:
                return None  # the plaintext is about to be replaced by ciphertext: nothing to do early
            runs = pagestore.logical_runs(self.s.store.checkpoints, parent, name) if parent else None
            if runs is None:
                return HashSink(images / name)
            return pagestore.DeltaSink(images, self.s.store.checkpoints, runs[0], name)

        return make

    def _staging(self, pid: int, ckpt_id: str) -> Path | None:
        """Where CRIU writes the full images of an incremental dump: tmpfs when it has room.

        Full page files written to the volume would be dirty page cache, throttled to disk speed by
        the kernel's dirty limits and partly written back, although ckq keeps only the changed pages;
        tmpfs pages are neither. Costs the workload's resident size in memory for the dump's duration."""
        roots = self._staging_roots()
        if not roots:
            return None
        root = roots[0]
        need = int(procfs.tree_rss(pid) * 1.2) + (64 << 20)
        try:
            st = os.statvfs(root)
        except OSError:
            return None
        if st.f_bavail * st.f_frsize < need:
            return None
        path = Path(tempfile.mkdtemp(prefix=f"ckq-{ckpt_id}-", dir=root))
        os.chmod(path, 0o700)  # memory images are secrets
        return path

    def _realign(self, images: Path, parent: str, sinks: dict[str, Sink | None]) -> int:
        """Keep the streamed same-offset deltas where the memory layout did not change; where it did
        (a heap grew, a mapping moved), encode again by virtual address so shifted pages still match."""
        new_maps = {m.pages_file: (fname, m) for fname, m in criu_images.pagemaps(images).items()}
        parent_maps = criu_images.pagemaps(self.s.store.path(parent) / "images")
        realigned = 0
        for name, sink in sinks.items():
            if not isinstance(sink, pagestore.DeltaSink):
                continue
            sink.finish(drop_full=False)
            fname, new_map = new_maps.get(name, (None, None))
            old_map = parent_maps.get(fname) if fname else None
            if new_map and old_map and (new_map.entries != old_map.entries or old_map.pages_file != name):
                pagestore.encode_aligned(images, self.s.store.checkpoints, parent, name, new_map, old_map)
                realigned += 1
            (images / name).unlink()
        return realigned

    def _parent_for(self, req: Request) -> str | None:
        if req.full or self.s.key or self.chain.head is None or self.chain.depth >= self.s.max_chain:
            return None  # encrypted parents would have to be decrypted to compare: always full there
        if not (self.s.store.path(self.chain.head) / mf.MANIFEST).is_file():
            return None
        return self.chain.head

    def _take_criu(self, pid: int, req: Request) -> mf.Manifest:
        """A CRIU dump; whatever fails (CRIU, a full or read-only store, the hook), nothing of it stays
        behind: its temporary directory and tmpfs staging go, so only published checkpoints are left."""
        ckpt_id = new_id()
        try:
            return self._dump(pid, req, ckpt_id)
        except BaseException:
            shutil.rmtree(self.s.store.tmp(ckpt_id), ignore_errors=True)
            for stale in self._staging_roots():
                for path in stale.glob(f"ckq-{ckpt_id}-*"):
                    shutil.rmtree(path, ignore_errors=True)
            raise

    def _staging_roots(self) -> list[Path]:
        if self.s.staging == "none":
            return []
        return [Path("/dev/shm") if self.s.staging == "auto" else Path(self.s.staging)]

    def _dump(self, pid: int, req: Request, ckpt_id: str) -> mf.Manifest:
        assert self.criu is not None
        started = time.monotonic()
        tmp = self.s.store.tmp(ckpt_id)
        tmp.mkdir(parents=True)
        log = self.s.store.logs / f"{ckpt_id}-dump.log"
        parent = self._parent_for(req)
        staging = self._staging(pid, ckpt_id) if parent else None
        images = (staging or tmp) / "images"
        images.mkdir()
        leave = req.leave_running or req.pre_dump
        env = dict(os.environ)
        script = None
        if self.s.writable and not req.pre_dump:
            env[fsnap.ENV_OUT] = str(tmp / fsnap.TAR_NAME)
            env[fsnap.ENV_PATHS] = json.dumps(self.s.writable)
            script = str(self._hook_script())
        gpu_pids = gpu.gpu_pids(pid)
        follower = Follower(images, self._sink_factory(images, parent))
        follower.start()  # hashing (full) or delta-encoding (incremental) runs alongside CRIU
        # Full page files go to disk as CRIU writes them; incremental ones never should.
        writeback = Follower(images, lambda name: None if parent or self.s.key else WritebackSink(images / name),
                             block=4 << 20)
        writeback.start()
        # Frozen for a gang checkpoint: the freeze already moved the GPU state to host memory, and the
        # thaw (or the restore) puts it back; this dump must not touch it.
        gpu_here = bool(gpu_pids) and not gpu.suspended(gpu_pids)
        try:
            if gpu_here:
                gpu.suspend(gpu_pids)
            dumped = False
            try:
                t0 = time.monotonic()
                dump_started = time.time()
                self.criu.dump(pid, images, log, leave_running=leave, tcp=self.s.tcp, action_script=script,
                               env=env, waiter=self.waiter, extra=self.s.extra_criu)
                dumped = True
            finally:
                # The workload goes on after a leave-running dump, and after a failed one (CRIU
                # continues it): either way it needs its GPU back.
                if gpu_here and (leave or not dumped):
                    gpu.resume(gpu_pids)
        except RuntimeFailure:
            writeback.abandon()
            _close_writeback(writeback.sinks)
            follower.abandon()
            for sink in follower.sinks.values():
                if isinstance(sink, HashSink):
                    sink.close()
                elif isinstance(sink, pagestore.DeltaSink):
                    sink.abort()
            shutil.rmtree(tmp, ignore_errors=True)
            if staging:
                shutil.rmtree(staging, ignore_errors=True)
            raise
        try:
            t1 = time.monotonic()
            logical = sum(p.stat().st_size for p in set(tmp.rglob("*")) | set(images.rglob("*")) if p.is_file())
            writeback.abandon()  # the final fsync in publish() covers the tail
            _close_writeback(writeback.sinks)
            sinks = follower.finish()
            known = _close_sinks(sinks)
            realigned = self._realign(images, parent, sinks) if parent else 0
            t2 = time.monotonic()
            shutil.copyfile(log, tmp / "criu-dump.log")
            if req.pre_dump:
                # CRIU's own pre-dump needs soft-dirty tracking; a memory-only pass is emulated by
                # keeping just the pages of a leave-running dump, as the parent of the next one.
                for img in images.iterdir():
                    if not img.name.startswith(("pages-", "pagemap-")):
                        img.unlink()
            if staging:  # only the (small) deltas and metadata images travel to the volume
                (tmp / "images").mkdir()
                for img in images.iterdir():
                    shutil.move(img, tmp / "images" / img.name)
                shutil.rmtree(staging)
            (tmp / RUNTIME_JSON).write_text(json.dumps(self.runtime_info(pid, gpu_pids), indent=2))
            kind = "pre-dump" if req.pre_dump else "dump"
            manifest = self.manifest(ckpt_id, started, req, parent, logical, kind)
            manifest.frozenAt, manifest.dumpStartedAt = req.frozen_at, dump_started
            if gpu_pids:
                manifest.gpu = {"pids": gpu_pids, "tool": gpu.backend()}
            manifest.phases = {"criu": round(t1 - t0, 3), "pages": round(t2 - t1, 3),
                               "realignedFiles": realigned}
            self.finish(tmp, manifest, started, known)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            if staging:
                shutil.rmtree(staging, ignore_errors=True)
            raise
        if leave:
            self.chain = Chain(head=ckpt_id, depth=manifest.chainDepth)
        return manifest

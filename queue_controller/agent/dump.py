"""One container's dump for one Checkpoint: ask ckq-run over its socket, at most once, and survive a
restart of the agent at any moment (the journal, store/journal.py, says how).

This step needs no API server: the agent calls it per container and records the result in the
Checkpoint's status; the criu tests call it against a real ckq-run.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

from queue_controller.agent import control
from queue_controller.runtime import manifest as mf
from queue_controller.runtime.store import TMP_PREFIX
from queue_controller.store import fsops
from queue_controller.store.base import StoreError
from queue_controller.store.filesystem import CHECKPOINTS, FilesystemStore
from queue_controller.store.journal import Journal, JournalEntry


@dataclass(frozen=True)
class Slot:
    """One checkpointed container of one pod of a job: its store directory's coordinates."""

    namespace: str
    job: str
    pod_set: str
    index: int
    container: str

    def args(self) -> tuple[str, str, str, int, str]:
        return (self.namespace, self.job, self.pod_set, self.index, self.container)

    def __str__(self) -> str:
        return f"{self.namespace}/{self.job} {self.pod_set}-{self.index}/{self.container}"


@dataclass(frozen=True)
class DumpRequest:
    uid: str  # the Checkpoint's metadata.uid (the journal's key)
    checkpoint: str  # namespace/name
    leave_running: bool
    node: str
    pod: str
    frozen: bool = False  # a gang member frozen for this Checkpoint (token = uid): dumped frozen, kept so
    hold: float = 0.0  # how long ckq-run keeps it frozen after the dump, waiting for the commit


@dataclass
class DumpResult:
    manifest: mf.Manifest | None = None
    error: str | None = None
    adopted: bool = False  # found from an earlier request (after a restart), not asked for now

    @property
    def ok(self) -> bool:
        return self.manifest is not None


def _created_floor(epoch: float) -> str:
    """ckq-run's `created` format (whole seconds, UTC), rounded down: comparable as strings."""
    return datetime.fromtimestamp(math.floor(epoch), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Dumper:
    """Dumps containers through their store directories. `clock` and `sleep` are injectable for tests."""

    def __init__(self, store: FilesystemStore, timeout: float = 1800.0, poll: float = 0.5, settle: float = 2.0,
                 clock: Callable[[], float] = time.time, sleep: Callable[[float], None] = time.sleep) -> None:
        self.store = store
        self.timeout = timeout
        self.poll = poll
        self.settle = settle
        self.clock = clock
        self.sleep = sleep

    # ---- questions the agent asks before deciding to dump -------------------------------------------
    def live(self, slot: Slot) -> bool:
        """A ckq-run supervisor answers on the container's socket and its workload is running."""
        try:
            with self.store.open_container(*slot.args()) as cfd:
                st = control.status(cfd)
        except (FileNotFoundError, StoreError):
            return False
        return bool(st and st.get("running"))

    def journaled(self, slot: Slot, uid: str) -> bool:
        """This Checkpoint already asked this container for a dump (finished, failed or in flight)."""
        try:
            with self.store.open_container(*slot.args()) as cfd:
                return Journal(cfd).get(uid) is not None
        except (FileNotFoundError, StoreError):
            return False

    # ---- the gang barrier (agent.py): freeze, and release after the checkpoint ended ---------------
    def freeze(self, slot: Slot, uid: str, hold: float) -> tuple[float | None, str | None]:
        """Stop the container's workload for Checkpoint `uid`: (frozenAt epoch seconds, None), (None,
        why not), or (None, None) while another Checkpoint holds it frozen (ask again once released)."""
        try:
            with self.store.open_container(*slot.args()) as cfd:
                reply = control.gang(cfd, "freeze", uid, hold)
        except (FileNotFoundError, StoreError) as exc:
            return None, f"no checkpoint directory ({exc})"
        except control.ControlError as exc:
            return None, f"asking ckq-run to freeze failed: {exc}"
        if reply.get("busyWith"):
            return None, None
        if not reply.get("ok"):
            return None, f"ckq-run: {reply.get('error') or 'freeze failed'}"
        return float(reply.get("frozenAt") or self.clock()), None

    def release(self, slot: Slot, uid: str, how: str) -> str:
        """thaw or stop the container frozen for `uid`: what happened, in words (a container that is
        gone has nothing to release)."""
        try:
            with self.store.open_container(*slot.args()) as cfd:
                reply = control.gang(cfd, how, uid)
        except (FileNotFoundError, StoreError, control.NotListening):
            return "gone"
        except control.ControlError as exc:
            return f"not reached ({exc})"
        if not reply.get("ok"):
            return f"refused: {reply.get('error')}"
        if how == "thaw":
            return "continued" if reply.get("thawed") else "was not frozen"
        return "stopped"

    def taken(self, slot: Slot, uid: str) -> str | None:
        """The id of the checkpoint ckq-run took for Checkpoint `uid`, as the journal records it."""
        try:
            with self.store.open_container(*slot.args()) as cfd:
                entry = Journal(cfd).get(uid)
        except (FileNotFoundError, StoreError):
            return None
        return entry.checkpointId if entry is not None else None

    # ---- the dump ---------------------------------------------------------------------------------
    def dump(self, slot: Slot, req: DumpRequest) -> DumpResult:
        try:
            with self.store.open_container(*slot.args()) as cfd:
                return self._dump(cfd, req)
        except FileNotFoundError:
            return DumpResult(error=f"no checkpoint directory {self.store.dir_for(*slot.args())}")
        except StoreError as exc:
            return DumpResult(error=str(exc))
        except OSError as exc:
            return DumpResult(error=f"store I/O error in {self.store.dir_for(*slot.args())}: {exc}")

    def _dump(self, cfd: int, req: DumpRequest) -> DumpResult:
        journal = Journal(cfd)
        entry = journal.get(req.uid)
        if entry is not None and entry.checkpointId:
            found = self._manifest(cfd, entry.checkpointId)
            if found is None:
                return DumpResult(error=f"checkpoint {entry.checkpointId}, taken for this Checkpoint, is gone "
                                        "from the store")
            return DumpResult(manifest=found, adopted=True)
        if entry is not None and entry.error:
            return DumpResult(error=entry.error)
        if entry is not None:  # the agent stopped while this request was in flight
            resolved = self._resolve_in_flight(cfd, journal, entry)
            if resolved is not None:
                return resolved
        entry = JournalEntry(uid=req.uid, checkpoint=req.checkpoint, node=req.node, pod=req.pod,
                             leaveRunning=req.leave_running, requestedAt=self.clock())
        journal.put(entry)  # durable before the request: a restart finds it
        try:
            reply = control.checkpoint(cfd, req.leave_running, self.timeout, token=req.uid if req.frozen else None,
                                       hold=req.hold)
        except control.NotListening as exc:
            entry.error = f"ckq-run is not listening ({exc}): the container is not running under ckq-run"
            journal.put(entry)
            return DumpResult(error=entry.error)
        except control.ControlError as exc:
            # The request may or may not have reached ckq-run: decide from what is on disk.
            resolved = self._resolve_in_flight(cfd, journal, entry)
            if resolved is not None:
                return resolved
            return DumpResult(error=f"asking ckq-run for a checkpoint failed: {exc}")
        if not reply.get("ok"):
            entry.error = f"ckq-run: {reply.get('error') or 'checkpoint failed'}"
            journal.put(entry)
            return DumpResult(error=entry.error)
        ckpt_id = str(reply.get("id") or "")
        found = self._manifest(cfd, ckpt_id) if ckpt_id else None
        if found is None:
            entry.error = f"ckq-run reported checkpoint {ckpt_id!r}, but it is not in the store"
            journal.put(entry)
            return DumpResult(error=entry.error)
        entry.checkpointId = found.id
        journal.put(entry)
        return DumpResult(manifest=found)

    def _manifest(self, cfd: int, ckpt_id: str) -> mf.Manifest | None:
        try:
            with _sub(cfd, CHECKPOINTS) as kfd:
                found = self.store.manifest_at(kfd, ckpt_id)
        except (FileNotFoundError, StoreError):
            return None
        return found if found is not None and found.id == ckpt_id else None

    def _resolve_in_flight(self, cfd: int, journal: Journal, entry: JournalEntry) -> DumpResult | None:
        """A request whose answer was lost: adopt the dump it produced, or report that none exists.
        None: no dump happened and the workload still runs, so asking again is safe.

        ckq-run creates checkpoints/.tmp-<id> as soon as it starts a dump, so "no temporary directory and
        no new checkpoint" means none was started, except in the instant between the request's arrival
        and that mkdir (or while ckq-run waits for another client's dump to finish): so the answer is
        only trusted if it is the same `settle` seconds later."""
        for look in range(2):
            deadline = self.clock() + self.timeout
            while self._dump_in_progress(cfd):
                if self.clock() > deadline:
                    return DumpResult(error=f"ckq-run's dump requested at {_created_floor(entry.requestedAt)} "
                                            f"did not finish within {self.timeout:g}s")
                self.sleep(self.poll)
            found = self._unclaimed_dump(cfd, journal, entry)
            if found is not None:
                entry.checkpointId = found.id
                journal.put(entry)
                return DumpResult(manifest=found, adopted=True)
            st = control.status(cfd)
            if not (st and st.get("running")):
                break
            if look == 0:
                self.sleep(self.settle)
            else:
                return None
        entry.error = (f"no checkpoint was taken after the request at {_created_floor(entry.requestedAt)} and the "
                       "workload is no longer running under ckq-run")
        journal.put(entry)
        return DumpResult(error=entry.error)

    def _dump_in_progress(self, cfd: int) -> bool:
        """ckq-run builds a dump in checkpoints/.tmp-<id>; debris of a dead supervisor does not count."""
        try:
            with _sub(cfd, CHECKPOINTS) as kfd:
                building = any(n.startswith(TMP_PREFIX) for n in os.listdir(kfd))
        except (FileNotFoundError, StoreError):
            return False
        return building and control.status(cfd) is not None

    def _unclaimed_dump(self, cfd: int, journal: Journal, entry: JournalEntry) -> mf.Manifest | None:
        """The oldest complete dump created at or after the request, with its leaveRunning, that no
        other Checkpoint's journal entry claims."""
        since = _created_floor(entry.requestedAt)
        claimed = journal.claimed_ids(except_uid=entry.uid)
        try:
            with _sub(cfd, CHECKPOINTS) as kfd:
                names = sorted(n for n in os.listdir(kfd) if not n.startswith("."))
                for name in names:
                    if name in claimed:
                        continue
                    m = self.store.manifest_at(kfd, name)
                    if (m is not None and m.id == name and m.kind != "pre-dump" and m.restorable
                            and m.created >= since and bool(m.leaveRunning) == entry.leaveRunning):
                        return m
        except (FileNotFoundError, StoreError):
            return None
        return None


@contextlib.contextmanager
def _sub(dir_fd: int, name: str) -> Iterator[int]:
    """An fd of a subdirectory (no link followed), closed on exit."""
    try:
        fd = fsops.open_dir(name, dir_fd)
    except fsops.UnsafePath as exc:
        raise StoreError(str(exc)) from None
    try:
        yield fd
    finally:
        os.close(fd)

"""The agent's dump step against a fake ckq-run (runtime/control.py's real server, a scripted handler):
at most one dump per Checkpoint and container, across agent restarts."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from queue_controller.agent.dump import Dumper, DumpRequest, Slot
from queue_controller.runtime.control import SOCKET_NAME, Server
from queue_controller.runtime.store import Store
from queue_controller.store import FilesystemStore
from queue_controller.store.journal import Journal, JournalEntry
from tests.unit.store_helpers import fake_checkpoint

pytestmark = pytest.mark.unit

SLOT = Slot("team-a", "train", "worker", 0, "main")
NOW = 1_767_323_045.0  # 2026-01-02T03:04:05Z
REQ = DumpRequest(uid="ck-uid-1", checkpoint="team-a/train-1-preemption-1", leave_running=False, node="real-0",
                  pod="train-1-worker-0")


class FakeRun:
    """A ckq-run supervisor's control socket: status, and checkpoints written like ckq-run writes them."""

    def __init__(self, d: Path) -> None:
        self.dir = d
        self.running = True
        self.requests: list[dict[str, Any]] = []
        self.fail: str | None = None
        self.n = 0
        self.server = Server(d / SOCKET_NAME, self.handle)
        self.server.start()

    def handle(self, req: dict[str, Any]) -> dict[str, Any]:
        if req.get("op") == "status":
            return {"ok": True, "pid": 42, "mode": "CRIU", "running": self.running, "checkpoints": []}
        self.requests.append(req)
        if self.fail:
            return {"ok": False, "error": self.fail}
        self.n += 1
        m = fake_checkpoint(self.dir, f"20260102-0304{self.n:02d}-abcdef", created="2026-01-02T03:04:05Z",
                            leave_running=bool(req.get("leaveRunning")))
        if not req.get("leaveRunning"):
            self.running = False
        return {"ok": True, "id": m.id, "manifest": {"id": m.id}}

    def close(self) -> None:
        self.server.close()


@pytest.fixture
def store(tmp_path: Path) -> FilesystemStore:
    return FilesystemStore(tmp_path / "store")


@pytest.fixture
def cdir(store: FilesystemStore) -> Path:
    d = store.dir_for(*SLOT.args())
    Store(d).ensure()
    return d


@pytest.fixture
def run(cdir: Path) -> Iterator[FakeRun]:
    r = FakeRun(cdir)
    yield r
    r.close()


def dumper(store: FilesystemStore, clock: float = NOW, sleep: Callable[[float], None] | None = None) -> Dumper:
    return Dumper(store, timeout=30, poll=0.01, clock=lambda: clock, sleep=sleep or (lambda _s: None))


def journal_entry(cdir: Path, uid: str = REQ.uid) -> JournalEntry | None:
    fd = os.open(cdir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        return Journal(fd).get(uid)
    finally:
        os.close(fd)


def put_entry(cdir: Path, entry: JournalEntry) -> None:
    fd = os.open(cdir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        Journal(fd).put(entry)
    finally:
        os.close(fd)


def pending(requested_at: float = NOW, uid: str = REQ.uid, leave: bool = False) -> JournalEntry:
    return JournalEntry(uid=uid, checkpoint=REQ.checkpoint, node="real-0", pod=REQ.pod, leaveRunning=leave,
                        requestedAt=requested_at)


def test_dump_asks_once_and_journals_the_id(store: FilesystemStore, cdir: Path, run: FakeRun) -> None:
    d = dumper(store)
    assert d.live(SLOT) and not d.journaled(SLOT, REQ.uid)
    res = d.dump(SLOT, REQ)
    assert res.ok and not res.adopted and res.manifest is not None
    assert run.requests == [{"op": "checkpoint", "leaveRunning": False, "preDump": False, "full": False}]
    entry = journal_entry(cdir)
    assert entry is not None and entry.checkpointId == res.manifest.id and entry.requestedAt == NOW
    assert d.journaled(SLOT, REQ.uid) and not d.live(SLOT)  # the workload stopped (leaveRunning=false)
    again = d.dump(SLOT, REQ)  # a second call (another event, or a restarted agent) asks nothing
    assert again.adopted and again.manifest is not None and again.manifest.id == res.manifest.id
    assert len(run.requests) == 1


def test_a_failed_dump_is_reported_with_ckq_runs_reason_once(store: FilesystemStore, cdir: Path,
                                                              run: FakeRun) -> None:
    run.fail = "criu dump failed (exit 1): Error (criu/cr-dump.c:1234): ptrace seize 77 failed"
    res = dumper(store).dump(SLOT, REQ)
    assert not res.ok and res.error is not None and "ptrace seize 77 failed" in res.error
    again = dumper(store).dump(SLOT, REQ)
    assert again.error == res.error and len(run.requests) == 1


def test_restart_mid_request_adopts_the_dump_that_finished(store: FilesystemStore, cdir: Path,
                                                           run: FakeRun) -> None:
    put_entry(cdir, pending(requested_at=NOW - 0.4))  # the old agent asked, then died before the answer
    m = fake_checkpoint(cdir, "20260102-030405-f00f00", created="2026-01-02T03:04:05Z")
    res = dumper(store).dump(SLOT, REQ)
    assert res.adopted and res.manifest is not None and res.manifest.id == m.id
    assert run.requests == []
    entry = journal_entry(cdir)
    assert entry is not None and entry.checkpointId == m.id


def test_restart_mid_request_ignores_older_claimed_and_other_mode_dumps(store: FilesystemStore, cdir: Path,
                                                                        run: FakeRun) -> None:
    fake_checkpoint(cdir, "20260102-030300-000001", created="2026-01-02T03:03:00Z")  # before the request
    fake_checkpoint(cdir, "20260102-030405-000002", created="2026-01-02T03:04:05Z", leave_running=True)
    claimed = fake_checkpoint(cdir, "20260102-030406-000003", created="2026-01-02T03:04:06Z")
    done = pending(uid="other-ckpt")
    done.checkpointId = claimed.id
    put_entry(cdir, done)
    put_entry(cdir, pending(requested_at=NOW))
    res = dumper(store).dump(SLOT, REQ)  # none of them is ours; the workload still runs: ask again
    assert res.ok and not res.adopted and len(run.requests) == 1


def test_restart_mid_request_waits_for_the_dump_in_progress(store: FilesystemStore, cdir: Path,
                                                            run: FakeRun) -> None:
    put_entry(cdir, pending(requested_at=NOW))
    tmp = cdir / "checkpoints" / ".tmp-20260102-030407-cafe00"
    tmp.mkdir()
    waited = []

    def sleep(_s: float) -> None:  # the old request's dump finishes while we wait
        waited.append(1)
        if len(waited) == 3:
            tmp.rmdir()
            fake_checkpoint(cdir, "20260102-030407-cafe00", created="2026-01-02T03:04:07Z")

    res = dumper(store, sleep=sleep).dump(SLOT, REQ)
    assert len(waited) == 3 and res.adopted and res.manifest is not None
    assert res.manifest.id == "20260102-030407-cafe00" and run.requests == []


def test_restart_mid_request_with_the_workload_gone_fails_clearly(store: FilesystemStore, cdir: Path) -> None:
    put_entry(cdir, pending(requested_at=NOW))
    (cdir / "checkpoints" / ".tmp-debris").mkdir()  # a dead supervisor's debris is not waited for
    res = dumper(store).dump(SLOT, REQ)
    assert not res.ok and res.error is not None and "no longer running" in res.error


def test_no_supervisor(store: FilesystemStore, cdir: Path) -> None:
    d = dumper(store)
    assert not d.live(SLOT)
    res = d.dump(SLOT, REQ)
    assert not res.ok and res.error is not None and "not listening" in res.error
    missing = Slot("team-a", "train", "worker", 9, "main")
    assert not d.live(missing) and not d.journaled(missing, REQ.uid)
    assert "no checkpoint directory" in (d.dump(missing, REQ).error or "")


def test_a_planted_socket_link_is_not_followed(store: FilesystemStore, cdir: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    other = FakeRun(elsewhere)  # some other socket on the host
    try:
        (cdir / SOCKET_NAME).symlink_to(elsewhere / SOCKET_NAME)
        d = dumper(store)
        assert not d.live(SLOT)
        assert not d.dump(SLOT, REQ).ok
        assert other.requests == []
    finally:
        other.close()


def test_deep_store_paths_beyond_sun_path(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60) / "store"
    store = FilesystemStore(deep)
    d = store.dir_for(*SLOT.args())
    Store(d).ensure()
    assert len(str(d / SOCKET_NAME)) > 108
    run = FakeRun(d)
    try:
        res = dumper(store).dump(SLOT, REQ)
        assert res.ok
    finally:
        run.close()


def test_one_request_at_a_time_through_concurrent_calls(store: FilesystemStore, cdir: Path, run: FakeRun) -> None:
    d = dumper(store)
    results = []
    lock = threading.Lock()  # what Agent._dump_one does per container

    def go() -> None:
        with lock:
            results.append(d.dump(SLOT, REQ))

    threads = [threading.Thread(target=go) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(run.requests) == 1 and all(r.ok for r in results)
    assert len({r.manifest.id for r in results if r.manifest}) == 1


def test_restart_mid_request_looks_again_before_asking_again(store: FilesystemStore, cdir: Path,
                                                             run: FakeRun) -> None:
    """Nothing on disk yet, but the request reached ckq-run an instant ago: the settle look finds it."""
    put_entry(cdir, pending(requested_at=NOW))
    slept: list[float] = []

    def sleep(s: float) -> None:
        slept.append(s)
        fake_checkpoint(cdir, "20260102-030405-5e771e", created="2026-01-02T03:04:05Z")

    d = Dumper(store, timeout=30, poll=0.01, settle=2.0, clock=lambda: NOW, sleep=sleep)
    res = d.dump(SLOT, REQ)
    assert slept == [2.0] and res.adopted and run.requests == []

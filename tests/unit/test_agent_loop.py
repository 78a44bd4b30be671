"""The node agent's processing of Checkpoints against a fake API server and a fake dump step: what it
acts on, what it writes, and that it writes it once, through conflicts and outages."""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from queue_controller import wire
from queue_controller.agent.agent import Agent, AgentSettings, WorkQueue
from queue_controller.agent.dump import DumpRequest, DumpResult, Slot
from queue_controller.agent.kube import Conflict, Event, NotFound, Obj, Transient
from queue_controller.api.checkpoint import Checkpoint
from queue_controller.store import FilesystemStore
from tests.unit.test_agent_plan import manifest, pod

pytestmark = pytest.mark.unit

NS = "team-a"
NAME = "train-1-preemption-1"


def ckpt_obj(phase: str | None = "Pending", *, leave: bool = False, job: str = "train", name: str = NAME,
             uid: str = "ck-uid", status: dict[str, Any] | None = None) -> Obj:
    st = dict(status or {})
    if phase:
        st["phase"] = phase
    obj: Obj = {"apiVersion": "ckq.io/v1alpha1", "kind": "Checkpoint",
                "metadata": {"name": name, "namespace": NS, "uid": uid, "resourceVersion": "1",
                             "labels": {"ckq.io/job-name": job}},
                "spec": {"jobName": job, "reason": "Preemption", "leaveRunning": leave}}
    if st:
        obj["status"] = st
    return obj


class FakeKube:
    def __init__(self) -> None:
        self.objs: dict[tuple[str, str], Obj] = {}
        self.pods: list[Obj] = []  # all nodes
        self.node = {"metadata": {"name": "real-0", "labels": {"kubernetes.io/arch": "amd64",
                                                                "nvidia.com/gpu.product": "H200"}}}
        self.rv = 1
        self.writes: list[Obj] = []
        self.before_write: list[Any] = []  # callables run before a write (a concurrent writer)
        self.transient = 0  # fail this many calls with Transient first
        self.job_pod_lists = 0
        self.lock = threading.Lock()

    def add(self, obj: Obj) -> None:
        self.objs[(obj["metadata"]["namespace"], obj["metadata"]["name"])] = obj

    def _flaky(self) -> None:
        if self.transient > 0:
            self.transient -= 1
            raise Transient("connection refused")

    def list_checkpoints(self) -> tuple[list[Obj], str]:
        return [copy.deepcopy(o) for o in self.objs.values()], str(self.rv)

    def watch_checkpoints(self, resource_version: str, timeout: int) -> Iterator[Event]:
        return iter(())

    def list_node_pods(self, node: str) -> tuple[list[Obj], str]:
        return [p for p in self.pods if p["spec"]["nodeName"] == node], str(self.rv)

    def watch_node_pods(self, node: str, resource_version: str, timeout: int) -> Iterator[Event]:
        return iter(())

    def list_job_pods(self, namespace: str, job: str) -> list[Obj]:
        self._flaky()
        self.job_pod_lists += 1
        return [p for p in self.pods if p["metadata"]["namespace"] == namespace
                and p["metadata"]["labels"].get("ckq.io/job-name") == job]

    def get_checkpoint(self, namespace: str, name: str) -> Obj:
        self._flaky()
        with self.lock:
            if (namespace, name) not in self.objs:
                raise NotFound(name)
            return copy.deepcopy(self.objs[(namespace, name)])

    def replace_checkpoint_status(self, namespace: str, name: str, body: Obj) -> Obj:
        self._flaky()
        if self.before_write:
            self.before_write.pop(0)()
        with self.lock:
            cur = self.objs.get((namespace, name))
            if cur is None:
                raise NotFound(name)
            if body["metadata"]["resourceVersion"] != cur["metadata"]["resourceVersion"]:
                raise Conflict("the object has been modified")
            self.rv += 1
            new = copy.deepcopy(cur)
            new["status"] = copy.deepcopy(body.get("status"))
            new["metadata"]["resourceVersion"] = str(self.rv)
            self.objs[(namespace, name)] = new
            self.writes.append(copy.deepcopy(new))
            return copy.deepcopy(new)

    def get_node(self, name: str) -> Obj:
        self._flaky()
        return self.node

    def status(self, name: str = NAME) -> dict[str, Any]:
        return dict(self.objs[(NS, name)].get("status") or {})


class FakeDumper:
    def __init__(self, store: FilesystemStore) -> None:
        self.store = store
        self.live_slots: set[Slot] = set()
        self.journal: dict[tuple[Slot, str], DumpResult] = {}
        self.calls: list[tuple[Slot, DumpRequest]] = []
        self.errors: dict[Slot, str] = {}
        self.frozen: dict[Slot, tuple[str, float]] = {}  # what ckq-run holds frozen, for which uid
        self.freezes: list[Slot] = []
        self.freeze_errors: dict[Slot, str] = {}
        self.releases: list[tuple[Slot, str]] = []

    def freeze(self, slot: Slot, uid: str, hold: float) -> tuple[float | None, str | None]:
        self.freezes.append(slot)
        if slot in self.freeze_errors:
            return None, self.freeze_errors[slot]
        if self.frozen.get(slot, (uid, 0.0))[0] != uid:
            return None, None  # frozen for another checkpoint: ask again later
        return self.frozen.setdefault(slot, (uid, time.time()))[1], None

    def release(self, slot: Slot, uid: str, how: str) -> str:
        self.releases.append((slot, how))
        if self.frozen.get(slot, ("", 0.0))[0] != uid:
            return "was not frozen"
        del self.frozen[slot]
        if how == "stop":
            self.live_slots.discard(slot)
        return "continued" if how == "thaw" else "stopped"

    def taken(self, slot: Slot, uid: str) -> str | None:
        res = self.journal.get((slot, uid))
        return res.manifest.id if res is not None and res.manifest is not None else None

    def live(self, slot: Slot) -> bool:
        return slot in self.live_slots

    def journaled(self, slot: Slot, uid: str) -> bool:
        return (slot, uid) in self.journal

    def dump(self, slot: Slot, req: DumpRequest) -> DumpResult:
        if (slot, req.uid) in self.journal:
            return DumpResult(manifest=self.journal[(slot, req.uid)].manifest,
                              error=self.journal[(slot, req.uid)].error, adopted=True)
        assert req.frozen and self.frozen.get(slot, ("", 0.0))[0] == req.uid, "dumped while not frozen"
        self.calls.append((slot, req))
        if slot in self.errors:
            res = DumpResult(error=self.errors[slot])
        else:
            n = len(self.calls)
            res = DumpResult(manifest=manifest(f"20260102-0304{n:02d}-abcdef", size=1000 * n, duration=0.5 * n))
        self.journal[(slot, req.uid)] = res
        if not req.leave_running:
            self.live_slots.discard(slot)
        return res


@pytest.fixture
def world(tmp_path: Path) -> tuple[FakeKube, FakeDumper, Agent]:
    kube = FakeKube()
    dumper = FakeDumper(FilesystemStore(tmp_path, uri_root="/var/lib/ckq/store"))
    agent = Agent(kube, dumper, AgentSettings(node="real-0", max_backoff=0.01))  # type: ignore[arg-type]
    return kube, dumper, agent


def slot(index: int = 0, container: str = "main", job: str = "train") -> Slot:
    return Slot(NS, job, "worker", index, container)


def sync(kube: FakeKube, agent: Agent) -> None:
    agent.checkpoints_listed(kube.list_checkpoints()[0])
    agent.pods_listed(kube.list_node_pods(agent.node)[0])


def process(kube: FakeKube, agent: Agent, name: str = NAME) -> None:
    sync(kube, agent)
    agent.process((NS, name))


def test_freezes_its_containers_and_dumps_them_only_once_the_whole_gang_is_frozen(
        world: tuple[FakeKube, FakeDumper, Agent]) -> None:
    kube, dumper, agent = world
    kube.add(ckpt_obj())
    kube.pods = [pod("train-1-worker-0", index=0, containers=("main", "side"), gpu=True),
                 pod("train-1-worker-1", index=1, node="real-1")]  # the other node's agent does this one
    dumper.live_slots = {slot(0, "main"), slot(0, "side")}
    process(kube, agent)
    assert sorted(s.container for s in dumper.freezes) == ["main", "side"] and dumper.calls == []
    st = kube.status()
    assert st["phase"] == "Running" and st["startTime"].endswith("Z") and st["members"] == 3
    assert sorted((f["index"], f["container"], f["node"]) for f in st["frozen"]) == [
        (0, "main", "real-0"), (0, "side", "real-0")]
    assert st["restoreConstraints"] == {"nodeLabels": {"kubernetes.io/arch": "amd64",
                                                       "nvidia.com/gpu.product": "H200"}}
    process(kube, agent)  # worker-1 is not frozen yet: still nothing to dump
    assert dumper.calls == []

    kube.objs[(NS, NAME)]["status"]["frozen"].append(  # real-1's agent froze worker-1
        {"podSet": "worker", "index": 1, "container": "main", "node": "real-1",
         "frozenAt": wire.format_time(time.time())})
    process(kube, agent)
    assert sorted(s.container for s, _ in dumper.calls) == ["main", "side"]
    req = dict(dumper.calls)[slot(0, "main")]
    assert (req.uid, req.checkpoint, req.leave_running, req.frozen, req.node, req.pod) == (
        "ck-uid", f"{NS}/{NAME}", True, True, "real-0", "train-1-worker-0")  # kept frozen until the commit
    st = kube.status()
    main = next(a for a in st["artifacts"] if a["container"] == "main")
    assert main["uri"].startswith("file:///var/lib/ckq/store/team-a/train/worker-0/main/checkpoints/")
    assert main["node"] == "real-0" and main["sha256"] == "a" * 64
    assert dumper.releases == []  # the checkpoint has not ended: everything stays frozen
    Checkpoint.model_validate(kube.objs[(NS, NAME)])


def test_never_dumps_twice_for_one_checkpoint(world: tuple[FakeKube, FakeDumper, Agent], tmp_path: Path) -> None:
    kube, dumper, agent = world
    kube.add(ckpt_obj(leave=True))
    kube.pods = [pod()]
    dumper.live_slots = {slot()}
    process(kube, agent)
    writes, lists = len(kube.writes), kube.job_pod_lists
    process(kube, agent)  # another event for the same Checkpoint
    assert len(dumper.calls) == 1 and len(kube.writes) == writes  # and nothing written again
    assert kube.job_pod_lists == lists  # nor read: nothing on this node is left to do
    restarted = Agent(kube, dumper, AgentSettings(node="real-0"))  # type: ignore[arg-type]
    process(kube, restarted)  # the artifact is in the status: nothing to do
    assert len(dumper.calls) == 1 and len(kube.writes) == writes


def test_a_restarted_agent_records_a_dump_its_predecessor_did_not(world: tuple[FakeKube, FakeDumper, Agent]) -> None:
    kube, dumper, agent = world
    kube.add(ckpt_obj())
    kube.objs[(NS, NAME)]["status"]["frozen"] = [  # the barrier was reached before the restart
        {"podSet": "worker", "index": 0, "container": "main", "node": "real-0", "frozenAt": "2026-01-02T03:04:09Z"}]
    kube.pods = [pod(phase="Failed")]  # (and the pod ended meanwhile: the journal still knows)
    dumper.journal[(slot(), "ck-uid")] = DumpResult(manifest=manifest("20260102-030405-0ld0ld"))
    process(kube, agent)
    assert dumper.calls == []
    assert [a["uri"].rsplit("/", 1)[1] for a in kube.status()["artifacts"]] == ["20260102-030405-0ld0ld"]


def test_acts_only_on_in_flight_checkpoints_of_jobs_with_pods_here(world: tuple[FakeKube, FakeDumper, Agent]) -> None:
    kube, dumper, agent = world
    kube.add(ckpt_obj("Completed", name="done"))
    kube.add(ckpt_obj("Failed", name="failed"))
    kube.add(ckpt_obj(name="elsewhere", job="other"))
    kube.pods = [pod(), pod("other-1-worker-0", job="other", node="real-1")]
    dumper.live_slots = {slot(), slot(job="other")}
    for name in ("done", "failed", "elsewhere"):
        process(kube, agent, name)
    assert dumper.calls == [] and kube.writes == []
    assert len(agent.queue) == 0  # and listing queued none of them


def test_only_the_current_attempt_is_dumped(world: tuple[FakeKube, FakeDumper, Agent]) -> None:
    kube, dumper, agent = world
    kube.add(ckpt_obj())
    kube.pods = [pod("train-1-worker-0", attempt=1, phase="Running"),  # a stale pod of the first run
                 pod("train-2-worker-1", attempt=2, index=1)]
    dumper.live_slots = {slot(0), slot(1)}
    process(kube, agent)
    assert [s for s, _ in dumper.calls] == [slot(1)]
    dumper.calls.clear()
    kube.pods.append(pod("train-3-worker-0", attempt=3, node="real-1"))  # a newer attempt on another node
    kube.add(ckpt_obj(name="second", uid="uid-2"))
    process(kube, agent, "second")
    assert dumper.calls == []


def test_pods_that_are_not_running_are_not_asked(world: tuple[FakeKube, FakeDumper, Agent]) -> None:
    kube, dumper, agent = world
    kube.add(ckpt_obj())
    kube.pods = [pod("a", index=0, deleting=True), pod("b", index=1, phase="Pending")]
    dumper.live_slots = {slot(0), slot(1)}
    process(kube, agent)
    assert dumper.calls == [] and kube.writes == []


def test_a_failed_dump_fails_the_checkpoint_naming_pod_container_and_reason(
        world: tuple[FakeKube, FakeDumper, Agent]) -> None:
    kube, dumper, agent = world
    kube.add(ckpt_obj())
    kube.pods = [pod(containers=("main", "side"))]
    dumper.live_slots = {slot(0, "main"), slot(0, "side")}
    dumper.errors[slot(0, "side")] = "ckq-run: criu dump failed: Error (criu/sk-unix.c:123): unix: can't dump"
    process(kube, agent)
    st = kube.status()
    assert st["phase"] == "Failed" and "completionTime" not in st  # the controller stamps it when applied
    assert st["message"] == ("pod team-a/train-1-worker-0 container side on node real-0: ckq-run: criu dump failed: "
                             "Error (criu/sk-unix.c:123): unix: can't dump")
    assert [a["container"] for a in st["artifacts"]] == ["main"]  # the image that exists is recorded
    assert dumper.releases == []
    process(kube, agent)  # the Failed status (a watch event): both are continued, main's image discarded
    assert len(dumper.calls) == 2  # no dump again
    assert sorted((s.container, how) for s, how in dumper.releases) == [("main", "thaw"), ("side", "thaw")]
    assert dumper.frozen == {}
    st = kube.status()
    assert st["phase"] == "Failed" and st["artifacts"] == [] and st["released"] == ["real-0"]
    process(kube, agent)  # released once
    assert len(dumper.releases) == 2
    agent.queue = WorkQueue()
    sync(kube, agent)
    assert len(agent.queue) == 0  # released: no longer queued


def test_concurrent_writers_are_merged_not_overwritten(world: tuple[FakeKube, FakeDumper, Agent]) -> None:
    kube, dumper, agent = world
    kube.add(ckpt_obj())
    kube.pods = [pod()]
    dumper.live_slots = {slot()}
    other = {"podSet": "worker", "index": 1, "container": "main", "node": "real-1",
             "uri": "file:///var/lib/ckq/store/team-a/train/worker-1/main/checkpoints/x", "sha256": "b" * 64,
             "sizeBytes": 7}

    def real_1_writes() -> None:  # the other node's agent gets in first, twice
        obj = kube.objs[(NS, NAME)]
        st = obj.setdefault("status", {})
        st.update(phase="Running", startTime="2026-01-02T03:04:00Z",
                  restoreConstraints={"nodeLabels": {"kubernetes.io/arch": "arm64"}})
        if other not in st.setdefault("artifacts", []):
            st["artifacts"].append(other)
        kube.rv += 1
        obj["metadata"]["resourceVersion"] = str(kube.rv)

    kube.before_write = [real_1_writes, real_1_writes]
    process(kube, agent)
    st = kube.status()
    assert st["startTime"] == "2026-01-02T03:04:00Z"  # the first writer's start stays
    assert st["restoreConstraints"]["nodeLabels"] == {"kubernetes.io/arch": "arm64"}  # merged, not clobbered
    assert sorted((a["index"], a["node"]) for a in st["artifacts"]) == [(0, "real-0"), (1, "real-1")]
    assert st["sizeBytes"] == 1007


def test_survives_a_brief_api_outage(world: tuple[FakeKube, FakeDumper, Agent]) -> None:
    kube, dumper, agent = world
    kube.add(ckpt_obj())
    kube.pods = [pod()]
    dumper.live_slots = {slot()}
    kube.transient = 5
    process(kube, agent)
    assert kube.status()["phase"] == "Running" and len(kube.status()["artifacts"]) == 1
    assert len(dumper.calls) == 1


def test_a_checkpoint_replaced_under_the_same_name_is_not_written(world: tuple[FakeKube, FakeDumper, Agent]) -> None:
    kube, dumper, agent = world
    kube.add(ckpt_obj())
    kube.pods = [pod()]
    dumper.live_slots = {slot()}
    sync(kube, agent)
    kube.add(ckpt_obj(uid="new-uid"))  # deleted and created again between the event and our write
    agent.process((NS, NAME))
    assert kube.writes == []


def test_work_queue_never_hands_out_a_key_twice_at_once() -> None:
    q = WorkQueue()
    q.add(("a", "1"))
    q.add(("a", "1"))
    assert len(q) == 1
    k = q.get(0.01)
    assert k == ("a", "1") and q.get(0.01) is None
    q.add(("a", "1"))  # while it is processed
    assert q.get(0.01) is None
    q.done(("a", "1"))
    assert q.get(0.01) == ("a", "1")


def test_threads_list_process_and_stop(world: tuple[FakeKube, FakeDumper, Agent]) -> None:
    kube, dumper, agent = world
    kube.add(ckpt_obj())
    kube.pods = [pod()]
    dumper.live_slots = {slot()}
    agent.s.resync_seconds = 0.05
    agent.start()
    try:
        assert agent.wait_synced(timeout=5)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not kube.status().get("artifacts"):
            time.sleep(0.02)
        assert len(kube.status()["artifacts"]) == 1
    finally:
        agent.shutdown()
    assert len(dumper.calls) == 1


def test_a_deleted_checkpoint_takes_the_images_this_node_dumped(tmp_path: Path) -> None:
    """Retention and garbage collection delete Checkpoint objects; each node's agent deletes the images
    its node dumped (inside the store, in the Checkpoint's namespace), and leaves other nodes' alone."""
    from tests.unit.store_helpers import fake_checkpoint

    store = FilesystemStore(tmp_path)
    kube = FakeKube()
    agent = Agent(kube, FakeDumper(store), AgentSettings(node="real-0"))  # type: ignore[arg-type]
    mine_dir, theirs_dir = store.dir_for(NS, "train", "worker", 0, "main"), store.dir_for(NS, "train", "worker", 1,
                                                                                           "main")
    fake_checkpoint(Path(mine_dir), "20260102-030405-aaaaaa")
    fake_checkpoint(Path(theirs_dir), "20260102-030405-bbbbbb")
    arts = [{"podSet": "worker", "index": i, "container": "main", "node": node, "sha256": "a" * 64, "sizeBytes": 1,
             "uri": store.uri_for(NS, "train", "worker", i, "main", cid)}
            for i, node, cid in ((0, "real-0", "20260102-030405-aaaaaa"), (1, "real-1", "20260102-030405-bbbbbb"))]
    agent.delete_images(ckpt_obj("Completed", status={"artifacts": arts}))
    assert not (Path(mine_dir) / "checkpoints" / "20260102-030405-aaaaaa").exists()
    assert (Path(theirs_dir) / "checkpoints" / "20260102-030405-bbbbbb").exists()  # real-1's agent deletes it
    agent.delete_images({"metadata": {"name": "broken"}})  # unreadable: logged, nothing raised
    agent.shutdown()


def test_a_container_that_cannot_be_frozen_fails_the_checkpoint_and_the_rest_is_continued(
        world: tuple[FakeKube, FakeDumper, Agent]) -> None:
    kube, dumper, agent = world
    kube.add(ckpt_obj())
    kube.pods = [pod(containers=("main", "side"))]
    dumper.live_slots = {slot(0, "main"), slot(0, "side")}
    dumper.freeze_errors[slot(0, "side")] = "ckq-run: could not stop the workload within 10s"
    process(kube, agent)
    st = kube.status()
    assert st["phase"] == "Failed" and dumper.calls == []
    assert st["message"] == ("pod team-a/train-1-worker-0 container side on node real-0: cannot be frozen: ckq-run: "
                             "could not stop the workload within 10s")
    assert [f["container"] for f in st["frozen"]] == ["main"]
    process(kube, agent)
    assert dumper.releases == [(slot(0, "main"), "thaw")] and dumper.frozen == {}


@pytest.mark.parametrize(("leave", "how"), [(False, "stop"), (True, "thaw")])
def test_a_completed_checkpoint_stops_or_continues_its_frozen_containers_together(
        world: tuple[FakeKube, FakeDumper, Agent], leave: bool, how: str) -> None:
    kube, dumper, agent = world
    kube.add(ckpt_obj(leave=leave))
    kube.pods = [pod()]
    dumper.live_slots = {slot()}
    process(kube, agent)
    assert len(dumper.calls) == 1 and dumper.releases == []  # dumped, still frozen: no commit yet
    kube.objs[(NS, NAME)]["status"]["phase"] = "Completed"  # the controller saw every artifact
    kube.pods = []  # (the controller may have deleted the pods already)
    sync(kube, agent)
    assert (NS, NAME) in agent.queue.queued  # an ended Checkpoint this node froze for is still its business
    process(kube, agent)
    assert dumper.releases == [(slot(), how)]
    st = kube.status()
    assert st["released"] == ["real-0"] and len(st["artifacts"]) == 1  # a completed one keeps its images
    restarted = Agent(kube, dumper, AgentSettings(node="real-0"))  # type: ignore[arg-type]
    process(kube, restarted)
    assert dumper.releases == [(slot(), how)]  # released once, also across a restart


def test_a_restarted_agent_freezes_again_idempotently(world: tuple[FakeKube, FakeDumper, Agent]) -> None:
    kube, dumper, agent = world
    kube.add(ckpt_obj())
    kube.pods = [pod(), pod("train-1-worker-1", index=1, node="real-1")]
    dumper.live_slots = {slot()}
    process(kube, agent)
    first = kube.status()["frozen"]
    writes = len(kube.writes)
    restarted = Agent(kube, dumper, AgentSettings(node="real-0"))  # type: ignore[arg-type]
    process(kube, restarted)
    assert kube.status()["frozen"] == first and len(kube.writes) == writes  # the status has it: no freeze again
    assert dumper.freezes == [slot()]


def test_a_checkpoint_that_ended_before_the_freeze_was_recorded_is_continued_at_once(
        world: tuple[FakeKube, FakeDumper, Agent]) -> None:
    kube, dumper, agent = world
    kube.add(ckpt_obj())
    kube.pods = [pod(), pod("train-1-worker-1", index=1, node="real-1")]
    dumper.live_slots = {slot()}

    def cancelled() -> None:  # the controller gives up while this agent freezes
        obj = kube.objs[(NS, NAME)]
        obj["status"] = {"phase": "Failed", "message": "cancelled by the controller"}
        kube.rv += 1
        obj["metadata"]["resourceVersion"] = str(kube.rv)

    kube.before_write = [cancelled]
    process(kube, agent)
    assert dumper.releases == [(slot(), "thaw")] and dumper.frozen == {} and dumper.calls == []


def test_a_second_checkpoint_of_the_job_waits_for_the_first_to_release_its_freeze(
        world: tuple[FakeKube, FakeDumper, Agent]) -> None:
    kube, dumper, agent = world
    kube.add(ckpt_obj(leave=True, name="periodic", uid="uid-a"))
    kube.pods = [pod()]
    dumper.live_slots = {slot()}
    process(kube, agent, "periodic")  # frozen and dumped, awaiting its commit
    kube.add(ckpt_obj(name="preempt", uid="uid-b"))
    process(kube, agent, "preempt")
    st = kube.status("preempt")
    assert st["phase"] == "Running" and not st.get("frozen") and len(dumper.calls) == 1  # waits, not failed
    kube.objs[(NS, "periodic")]["status"]["phase"] = "Completed"
    process(kube, agent, "periodic")  # released (thawed): the waiting checkpoint is queued again
    assert (NS, "preempt") in agent.queue.queued
    process(kube, agent, "preempt")
    assert [f["index"] for f in kube.status("preempt")["frozen"]] == [0]
    assert [(s, r.uid) for s, r in dumper.calls] == [(slot(), "uid-a"), (slot(), "uid-b")]


def test_images_no_checkpoint_accounts_for_are_collected_after_a_list(tmp_path: Path) -> None:
    """Issue 14 (found by the agent-kill chaos trial): a Checkpoint deleted while its node's agent was
    down leaves images no DELETED event will ever remove, and so does a dump finished after its
    Checkpoint went. After each list the agent deletes such images of its own node — and keeps the
    recorded ones, a dump still in flight for a listed Checkpoint, anything newer than the list, other
    nodes' dumps, and an older image a kept incremental checkpoint builds on."""
    from queue_controller.store.journal import Journal, JournalEntry
    from tests.unit.store_helpers import fake_checkpoint

    store = FilesystemStore(tmp_path)
    agent = Agent(FakeKube(), FakeDumper(store), AgentSettings(node="real-0"))  # type: ignore[arg-type]
    mine, theirs = Path(store.dir_for(NS, "train", "worker", 0, "main")), Path(store.dir_for(NS, "train", "worker", 1,
                                                                                             "main"))
    old, new = "2026-01-02T03:04:05Z", "2026-01-02T04:00:00Z"
    listed_at = 1767326400.0  # 2026-01-02T04:00:00Z: `new` is as young as the list
    ids = {"recorded": "20260102-030401-aaaaaa", "orphan": "20260102-030402-bbbbbb",
           "in-flight": "20260102-030403-cccccc", "deleted-mid-dump": "20260102-030404-dddddd",
           "newer": "20260102-040000-eeeeee", "base": "20260102-030405-ffffff"}
    fake_checkpoint(mine, ids["base"], created=old)  # first: "recorded" builds on it
    for what, cid in ids.items():
        if what != "base":
            fake_checkpoint(mine, cid, created=new if what == "newer" else old,
                            parent=ids["base"] if what == "recorded" else None)
    fake_checkpoint(theirs, "20260102-030406-999999", created=old)
    with store.open_container(NS, "train", "worker", 0, "main") as cfd:
        j = Journal(cfd)
        for what, uid in (("orphan", "gone-1"), ("in-flight", "live-1"), ("deleted-mid-dump", "gone-2"),
                          ("recorded", "done-1"), ("base", "gone-3")):
            j.put(JournalEntry(uid=uid, checkpoint=f"{NS}/x", node="real-0", pod="p", leaveRunning=True,
                               requestedAt=0.0, checkpointId=ids[what]))
    with store.open_container(NS, "train", "worker", 1, "main") as cfd:
        Journal(cfd).put(JournalEntry(uid="gone-4", checkpoint=f"{NS}/y", node="real-1", pod="q", leaveRunning=True,
                                      requestedAt=0.0, checkpointId="20260102-030406-999999"))
    listed = [ckpt_obj("Completed", uid="done-1", name="c1", status={"artifacts": [
                  {"podSet": "worker", "index": 0, "container": "main", "node": "real-0", "sha256": "a" * 64,
                   "sizeBytes": 1, "uri": store.uri_for(NS, "train", "worker", 0, "main", ids["recorded"])}]}),
              ckpt_obj("Running", uid="live-1", name="c2")]
    agent.collect_garbage(listed, listed_at)
    left = {p.name for p in (mine / "checkpoints").iterdir() if not p.name.startswith(".")}
    assert left == {ids["recorded"], ids["in-flight"], ids["newer"], ids["base"]}, left
    assert (theirs / "checkpoints" / "20260102-030406-999999").is_dir()  # real-1's agent collects its own
    agent.shutdown()


def test_the_commit_seen_on_the_watch_is_not_hidden_by_the_agents_own_older_write(
        world: tuple[FakeKube, FakeDumper, Agent]) -> None:
    """Found by the ckq-run-kill chaos soak: the agent recorded its artifact; the controller's commit
    (Completed) came in on the watch while that write's response was on its way back; the agent then put
    its own, older copy into its cache, hid the commit, and never released (thawed) the container until
    its next full list minutes later. The cache keeps the newer object, so the release happens."""
    kube, dumper, agent = world
    kube.add(ckpt_obj(leave=True))
    kube.pods = [pod("train-1-worker-0", index=0)]
    dumper.live_slots = {slot(0, "main")}
    written = kube.replace_checkpoint_status

    def commit_arrives_meanwhile(namespace: str, name: str, body: Obj) -> Obj:
        new = written(namespace, name, body)
        if new["status"].get("artifacts") and new["status"].get("phase") != "Completed":
            committed = copy.deepcopy(new)  # the controller commits right after the artifact is written
            committed["status"]["phase"] = "Completed"
            kube.rv += 1
            committed["metadata"]["resourceVersion"] = str(kube.rv)
            kube.objs[(namespace, name)] = committed
            agent.checkpoint_event("MODIFIED", copy.deepcopy(committed))  # the watch delivers it first
        return new

    kube.replace_checkpoint_status = commit_arrives_meanwhile  # type: ignore[method-assign]
    process(kube, agent)  # freezes, dumps (the whole gang is this one container) and records the artifact
    kube.replace_checkpoint_status = written  # type: ignore[method-assign]
    assert agent.checkpoint_of(NS, NAME)["status"]["phase"] == "Completed"
    agent.process((NS, NAME))  # from the cache alone, as the queue hands it out again
    assert dumper.releases == [(slot(0, "main"), "thaw")]
    agent.shutdown()

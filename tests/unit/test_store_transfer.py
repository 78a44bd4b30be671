"""Node-local stores: one agent serves a checkpoint, another stages it, verified against the recorded
sha256 (store/transfer.py); ckq-run's wait for it (runtime/staging.py); the agent's Stager deciding
what a restored pod needs and reporting the outcome (agent/stage.py)."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from queue_controller import wire
from queue_controller.agent.kube import NotFound
from queue_controller.agent.plan import PodInfo
from queue_controller.agent.stage import Stager, Transfer
from queue_controller.runtime import manifest as mf
from queue_controller.runtime.errors import RuntimeFailure
from queue_controller.runtime.staging import STAGING_FAILED_PREFIX, await_staged
from queue_controller.store import FilesystemStore, StoreError
from queue_controller.store.transfer import PATH, StagingError, TransferServer, stage
from tests.unit.store_helpers import fake_checkpoint

pytestmark = pytest.mark.unit

ID1, ID2, ID3 = "20260102-030405-aaaaaa", "20260102-030406-bbbbbb", "20260102-030407-cccccc"
TOKEN = "t" * 32
NS = "team-a"


def node_store(tmp_path: Path, node: str) -> FilesystemStore:
    """A node's store as the agent opens it in node-local mode: <root>/<node>, uris under <root>."""
    root = tmp_path / "store"
    own = Path(wire.node_store_root(str(root), node))
    own.mkdir(parents=True)
    return FilesystemStore(own, uri_root=str(root))


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[tuple[FilesystemStore, FilesystemStore, TransferServer]]:
    src, dst = node_store(tmp_path, "real-0"), node_store(tmp_path, "real-1")
    server = TransferServer(src, TOKEN, "127.0.0.1", 0)
    server.start()
    yield src, dst, server
    server.shutdown()


def url(server: TransferServer) -> str:
    return f"http://127.0.0.1:{server.port}"


def cdir(store: FilesystemStore) -> Path:
    return store.dir_for(NS, "train", "worker", 0, "main")


def uri(store: FilesystemStore, ckpt: str) -> str:
    return store.uri_for(NS, "train", "worker", 0, "main", ckpt)


def test_an_incremental_chain_is_staged_whole_and_verified(nodes: Any) -> None:
    src, dst, server = nodes
    fake_checkpoint(cdir(src), ID1)
    fake_checkpoint(cdir(src), ID2, parent=ID1)
    top = fake_checkpoint(cdir(src), ID3, parent=ID2)
    assert uri(src, ID3) == uri(dst, ID3)  # a uri names the same checkpoint on every node
    installed = stage(dst, NS, uri(dst, ID3), top.sha256, url(server), TOKEN)
    assert installed == [ID1, ID2, ID3]  # ancestors first: the requested one last is the "staged" signal
    assert dst.verify(uri(dst, ID3), NS, top.sha256).id == ID3  # the whole chain, rehashed here
    for ckpt in (ID1, ID2, ID3):
        a, b = cdir(src) / "checkpoints" / ckpt, cdir(dst) / "checkpoints" / ckpt
        assert sorted(p.relative_to(a) for p in a.rglob("*")) == sorted(p.relative_to(b) for p in b.rglob("*"))
    assert not [p for p in (cdir(dst) / "checkpoints").iterdir() if p.name.startswith(".")]  # no debris
    assert stage(dst, NS, uri(dst, ID3), top.sha256, url(server), TOKEN) == []  # already here


def test_only_the_ancestors_this_node_lacks_are_fetched(nodes: Any) -> None:
    src, dst, server = nodes
    first = fake_checkpoint(cdir(src), ID1)
    stage(dst, NS, uri(dst, ID1), first.sha256, url(server), TOKEN)
    top = fake_checkpoint(cdir(src), ID2, parent=ID1)
    assert stage(dst, NS, uri(dst, ID2), top.sha256, url(server), TOKEN) == [ID2]


def test_a_copy_that_is_not_the_recorded_checkpoint_is_refused(nodes: Any) -> None:
    src, dst, server = nodes
    fake_checkpoint(cdir(src), ID1)
    with pytest.raises(StagingError, match="does not match its record"):
        stage(dst, NS, uri(dst, ID1), "0" * 64, url(server), TOKEN)
    assert not (cdir(dst) / "checkpoints" / ID1).exists()


def test_corrupted_bytes_are_refused_by_the_content_hash(nodes: Any) -> None:
    src, dst, server = nodes
    m = fake_checkpoint(cdir(src), ID1, payload=b"x" * 8192)
    (cdir(src) / "checkpoints" / ID1 / "images" / "pages-1.img").write_bytes(b"x" * 4096 + b"y" + b"x" * 4095)
    with pytest.raises(StagingError, match="corrupt"):
        stage(dst, NS, uri(dst, ID1), m.sha256, url(server), TOKEN)
    assert [p.name for p in (cdir(dst) / "checkpoints").iterdir()] == []  # nothing unverified installed


def test_a_damaged_ancestor_fails_the_whole_staging(nodes: Any) -> None:
    src, dst, server = nodes
    fake_checkpoint(cdir(src), ID1)
    top = fake_checkpoint(cdir(src), ID2, parent=ID1)
    (cdir(src) / "checkpoints" / ID1 / "runtime.json").write_text('{"mode": "tampered"}')
    with pytest.raises(StagingError, match=f"{ID1}.*corrupt"):
        stage(dst, NS, uri(dst, ID2), top.sha256, url(server), TOKEN)
    assert not (cdir(dst) / "checkpoints" / ID2).exists()


def test_a_missing_source_and_an_unreachable_agent_say_so(nodes: Any, tmp_path: Path) -> None:
    _src, dst, server = nodes
    with pytest.raises(StagingError, match="404"):
        stage(dst, NS, uri(dst, ID1), "0" * 64, url(server), TOKEN)
    with pytest.raises(StagingError, match="cannot reach"):
        stage(dst, NS, uri(dst, ID1), "0" * 64, "http://127.0.0.1:1", TOKEN)


def test_the_server_wants_the_token_and_serves_only_checkpoints_of_that_namespace(nodes: Any) -> None:
    src, dst, server = nodes
    m = fake_checkpoint(cdir(src), ID1)
    with pytest.raises(StagingError, match="401"):
        stage(dst, NS, uri(dst, ID1), m.sha256, url(server), "wrong-token-wrong-token")

    def get(query: str) -> int:
        req = urllib.request.Request(f"{url(server)}{PATH}?{query}", headers={"Authorization": f"Bearer {TOKEN}"})
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return int(resp.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)

    u = uri(src, ID1)
    assert get(urllib.parse.urlencode({"namespace": NS, "uri": u})) == 200
    assert get(urllib.parse.urlencode({"namespace": "other", "uri": u})) == 403  # not that namespace's
    escape = u.replace(f"/{NS}/", f"/{NS}/../../")
    assert get(urllib.parse.urlencode({"namespace": NS, "uri": escape})) == 403
    assert get(urllib.parse.urlencode({"namespace": NS, "uri": "file:///etc/passwd"})) == 403


def test_a_served_symlink_stays_a_link_and_is_never_followed(nodes: Any, tmp_path: Path) -> None:
    """A workload writes its own directory: a link it plants is copied as a link (and then fails the
    hash, which covers it), never the file it points to."""
    src, dst, server = nodes
    secret = tmp_path / "secret"
    secret.write_text("host secret")
    m = fake_checkpoint(cdir(src), ID1)
    victim = cdir(src) / "checkpoints" / ID1 / "images" / "pages-1.img"
    victim.unlink()
    victim.symlink_to(secret)
    with pytest.raises(StagingError):
        stage(dst, NS, uri(dst, ID1), m.sha256, url(server), TOKEN)
    assert not any("host secret" in p.read_text(errors="replace") for p in (tmp_path / "store" / "real-1").rglob("*")
                   if p.is_file() and not p.is_symlink())


# ---- ckq-run --await-staged ---------------------------------------------------------------------------


def test_await_staged_returns_once_the_checkpoint_is_in_place(tmp_path: Path) -> None:
    ckpts = tmp_path / "checkpoints"
    ckpts.mkdir()
    staged = threading.Event()

    def later() -> None:
        fake_checkpoint(tmp_path, ID1)
        staged.set()

    t = threading.Timer(0.2, later)
    t.start()
    await_staged(ckpts, ID1, timeout=30)
    assert staged.is_set()
    t.join()


def test_await_staged_fails_with_the_agents_reason_for_this_pod_only(tmp_path: Path) -> None:
    ckpts = tmp_path / "checkpoints"
    ckpts.mkdir()
    marker = ckpts / (STAGING_FAILED_PREFIX + ID1)
    marker.write_text(json.dumps({"podUid": "old-pod", "message": "source node real-0 is gone"}))
    with pytest.raises(RuntimeFailure, match="within 0s"):  # an earlier pod's failure: not this one's
        await_staged(ckpts, ID1, timeout=0, pod_uid="new-pod")
    marker.write_text(json.dumps({"podUid": "new-pod", "message": "checksum mismatch"}))
    with pytest.raises(RuntimeFailure, match="could not be staged on this node: checksum mismatch"):
        await_staged(ckpts, ID1, timeout=30, pod_uid="new-pod")


def test_ckq_run_refuses_await_staged_without_a_restore_id(tmp_path: Path) -> None:
    from queue_controller.runtime.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["--dir", str(tmp_path), "--await-staged", "5", "--restore", "latest", "--", "true"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:  # nothing staged: exit 69, the code the controller reads
        main(["--dir", str(tmp_path), "--await-staged", "0", "--restore", ID1, "--", "true"])
    assert exc.value.code == 69


# ---- the agent's Stager --------------------------------------------------------------------------------


class FakeKube:
    def __init__(self, nodes: dict[str, str]) -> None:
        self.nodes = nodes
        self.events: list[dict[str, Any]] = []

    def get_node(self, name: str) -> dict[str, Any]:
        if name not in self.nodes:
            raise NotFound(name)
        return {"status": {"addresses": [{"type": "Hostname", "address": name},
                                         {"type": "InternalIP", "address": self.nodes[name]}]}}

    def create_event(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        self.events.append(body)
        return body


def restored_pod(uid: str = "uid-1", node: str = "real-1") -> PodInfo:
    return PodInfo(namespace=NS, name="train-2-worker-0", node=node, job="train", pod_set="worker", index=0,
                   attempt=2, phase="Pending", deleting=False, containers=("main",), gpu=False, uid=uid,
                   restore_from="train-1-preemption-1")


def checkpoint_obj(u: str, sha: str, node: str = "real-0") -> dict[str, Any]:
    return {"apiVersion": "ckq.io/v1alpha1", "kind": "Checkpoint",
            "metadata": {"name": "train-1-preemption-1", "namespace": NS, "uid": "c1"},
            "spec": {"jobName": "train", "reason": "Preemption"},
            "status": {"phase": "Completed", "artifacts": [
                {"podSet": "worker", "index": 0, "container": "main", "node": node, "uri": u, "sha256": sha}]}}


def run_stager(stager: Stager, pod: PodInfo) -> None:
    stager.consider(pod)
    stager.pool.shutdown(wait=True)


def test_the_stager_stages_a_restored_pods_images_and_says_so(nodes: Any) -> None:
    src, dst, server = nodes
    m = fake_checkpoint(cdir(src), ID1)
    kube = FakeKube({"real-0": "127.0.0.1"})
    obj = checkpoint_obj(uri(src, ID1), m.sha256)
    stager = Stager(kube, dst, "real-1", Transfer(port=server.port, token=TOKEN), lambda ns, n: obj)
    assert stager.needed(restored_pod(node="real-0")) == []  # another node's pod
    assert [c for c, _ in stager.needed(restored_pod()) or []] == ["main"]
    run_stager(stager, restored_pod())
    assert (cdir(dst) / "checkpoints" / ID1 / mf.MANIFEST).is_file()
    assert [e["reason"] for e in kube.events] == ["Staged"]
    assert kube.events[0]["involvedObject"] == {"apiVersion": "v1", "kind": "Pod", "name": "train-2-worker-0",
                                                "namespace": NS, "uid": "uid-1"}


def test_a_failed_staging_is_an_event_and_the_marker_ckq_run_reads(nodes: Any) -> None:
    src, dst, server = nodes
    fake_checkpoint(cdir(src), ID1)
    kube = FakeKube({"real-0": "127.0.0.1"})
    obj = checkpoint_obj(uri(src, ID1), "f" * 64)  # the record says another checkpoint
    stager = Stager(kube, dst, "real-1", Transfer(port=server.port, token=TOKEN), lambda ns, n: obj)
    run_stager(stager, restored_pod())
    assert [(e["reason"], e["type"]) for e in kube.events] == [("StagingFailed", "Warning")]
    assert "does not match its record" in kube.events[0]["message"]
    with pytest.raises(RuntimeFailure, match="does not match its record"):
        await_staged(cdir(dst) / "checkpoints", ID1, timeout=30, pod_uid="uid-1")


def test_a_source_node_that_is_gone_fails_the_staging_at_once(nodes: Any) -> None:
    src, dst, server = nodes
    kube = FakeKube({})
    obj = checkpoint_obj(uri(src, ID1), "f" * 64)
    stager = Stager(kube, dst, "real-1", Transfer(port=server.port, token=TOKEN), lambda ns, n: obj)
    run_stager(stager, restored_pod())
    assert "node real-0, which holds checkpoint" in kube.events[0]["message"]


def test_images_dumped_on_this_node_need_no_staging(nodes: Any) -> None:
    _src, dst, server = nodes
    obj = checkpoint_obj(uri(dst, ID1), "f" * 64, node="real-1")
    stager = Stager(FakeKube({}), dst, "real-1", Transfer(port=server.port, token=TOKEN), lambda ns, n: obj)
    assert stager.needed(restored_pod()) == []
    unknown = Stager(FakeKube({}), dst, "real-1", Transfer(port=server.port, token=TOKEN), lambda ns, n: None)
    assert unknown.needed(restored_pod()) is None  # its Checkpoint not seen yet: asked again at the resync


def test_the_server_needs_a_token(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="token"):
        TransferServer(node_store(tmp_path, "real-0"), "", "127.0.0.1", 0)


def test_a_source_agent_down_for_a_moment_is_asked_again_not_given_up_on(tmp_path: Path) -> None:
    """Issue 14 (chaos): the serving agent restarting while a restored pod's images are staged. The
    transfer's failure is transient, so the stager asks again with backoff; the agent back within
    `retry_for` costs the restore nothing (giving up at once would fall back to an older checkpoint on
    the same, still absent, source, and then to a fresh start). A refusal is not retried."""
    src, dst = node_store(tmp_path, "real-0"), node_store(tmp_path, "real-1")
    m = fake_checkpoint(cdir(src), ID1)
    probe = TransferServer(src, TOKEN, "127.0.0.1", 0)  # a free port, then closed: nobody answers there yet
    port = probe.port
    probe.httpd.server_close()
    kube = FakeKube({"real-0": "127.0.0.1"})
    obj = checkpoint_obj(uri(src, ID1), m.sha256)
    stager = Stager(kube, dst, "real-1", Transfer(port=port, token=TOKEN, retry_for=60), lambda ns, n: obj)
    back = threading.Event()

    def source_comes_back() -> None:
        # Once the stager has been refused at least once (its warning is the sign), the agent starts.
        server = TransferServer(src, TOKEN, "127.0.0.1", port)
        server.start()
        back.set()
        stopper.wait(30)
        server.shutdown()

    stopper = threading.Event()
    with pytest.MonkeyPatch.context() as mp:
        import queue_controller.agent.stage as stage_mod

        real_stage = stage_mod.stage
        calls: list[int] = []

        def counting_stage(*a: Any, **kw: Any) -> list[str]:
            calls.append(1)
            if len(calls) == 2 and not back.is_set():
                threading.Thread(target=source_comes_back, daemon=True).start()
                back.wait(10)
            return real_stage(*a, **kw)

        mp.setattr(stage_mod, "stage", counting_stage)
        try:
            run_stager(stager, restored_pod())
        finally:
            stopper.set()
    assert len(calls) >= 2  # refused first (nobody listening), then staged
    assert (cdir(dst) / "checkpoints" / ID1 / mf.MANIFEST).is_file()
    assert [e["reason"] for e in kube.events] == ["Staged"]

    refusing = Stager(kube, node_store(tmp_path, "real-2"), "real-2",
                      Transfer(port=port, token="wrong-token-wrong-token", retry_for=60), lambda ns, n: obj)
    server = TransferServer(src, TOKEN, "127.0.0.1", 0)
    server.start()
    try:
        refusing.transfer = Transfer(port=server.port, token="wrong-token-wrong-token", retry_for=60)
        run_stager(refusing, restored_pod(node="real-2"))
    finally:
        server.shutdown()
    assert kube.events[-1]["reason"] == "StagingFailed" and "401" in kube.events[-1]["message"]


def test_staged_ancestors_whose_checkpoints_are_gone_go_with_the_last_child(nodes: Any) -> None:
    """Issue 14 (found by the agent-kill-staging chaos trial): an incremental checkpoint is staged with
    its ancestors, and an ancestor's own Checkpoint may already be deleted (retention): no DELETED event
    will ever name that copy. It is marked at staging, kept while the staged checkpoint builds on it,
    and deleted with it — not left in the store for good."""
    from queue_controller.store.retention import delete_images

    src, dst, server = nodes
    fake_checkpoint(cdir(src), ID1)
    fake_checkpoint(cdir(src), ID2, parent=ID1)
    top = fake_checkpoint(cdir(src), ID3, parent=ID2)
    recorded = {uri(src, ID2), uri(src, ID3)}  # ID1's Checkpoint was pruned by retention
    stager = Stager(FakeKube({"real-0": "127.0.0.1"}), dst, "real-1", Transfer(port=server.port, token=TOKEN),
                    lambda ns, n: checkpoint_obj(uri(src, ID3), top.sha256), recorded=lambda u: u in recorded)
    run_stager(stager, restored_pod())
    held = sorted(p.name for p in (cdir(dst) / "checkpoints").iterdir() if not p.name.startswith("."))
    assert held == [ID1, ID2, ID3]  # ID1 is still needed: the restore reads through it
    assert [sc.ref.checkpoint_id for sc in dst.list(NS) if sc.pruned] == [ID1]
    delete_images(dst, NS, [uri(dst, ID3)])  # the Checkpoints of ID3, then ID2, go
    delete_images(dst, NS, [uri(dst, ID2)])
    assert not [p for p in (cdir(dst) / "checkpoints").iterdir() if not p.name.startswith(".")]

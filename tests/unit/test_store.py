"""The filesystem checkpoint store: layout, uri checks, namespace isolation, verify, retention, bytes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from queue_controller import wire
from queue_controller.api.checkpoint import Artifact, Checkpoint, CheckpointSpec, CheckpointStatus
from queue_controller.api.common import ObjectMeta
from queue_controller.store import FilesystemStore, StoreError, delete_checkpoint_images
from queue_controller.store.filesystem import PRUNED_PREFIX
from queue_controller.store.journal import Journal, JournalEntry
from tests.unit.store_helpers import fake_checkpoint

pytestmark = pytest.mark.unit

ID1, ID2, ID3 = "20260102-030405-aaaaaa", "20260102-030406-bbbbbb", "20260102-030407-cccccc"


@pytest.fixture
def store(tmp_path: Path) -> FilesystemStore:
    root = tmp_path / "store"
    root.mkdir()
    return FilesystemStore(root)


def cdir(store: FilesystemStore, ns: str = "team-a", job: str = "train", ps: str = "worker", i: int = 0,
         c: str = "main") -> Path:
    return store.dir_for(ns, job, ps, i, c)


def test_layout_and_uris_follow_the_wire_contract(store: FilesystemStore) -> None:
    d = store.dir_for("team-a", "train.v2", "worker", 3, "main")
    assert str(d) == wire.container_store_dir(str(store.root), "team-a", "train.v2", "worker", 3, "main")
    uri = store.uri_for("team-a", "train.v2", "worker", 3, "main", ID1)
    assert uri == wire.artifact_uri(str(d), ID1)
    ref = store.parse(uri, "team-a")
    assert (ref.namespace, ref.job, ref.pod_set, ref.index, ref.container, ref.checkpoint_id) == (
        "team-a", "train.v2", "worker", 3, "main", ID1)
    assert wire.checkpoint_id_of(uri) == ID1


def test_pod_set_names_with_dashes_parse(store: FilesystemStore) -> None:
    uri = store.uri_for("ns", "job", "my-workers-2", 10, "c", ID1)
    ref = store.parse(uri, "ns")
    assert (ref.pod_set, ref.index) == ("my-workers-2", 10)


def test_uri_root_differs_from_local_mount(tmp_path: Path) -> None:
    s = FilesystemStore(tmp_path, uri_root="/var/lib/ckq/store/")
    uri = s.uri_for("ns", "job", "main", 0, "c", ID1)
    assert uri == f"file:///var/lib/ckq/store/ns/job/main-0/c/checkpoints/{ID1}"
    assert s.dir_for("ns", "job", "main", 0, "c") == tmp_path / "ns/job/main-0/c"
    assert s.parse(uri, "ns").checkpoint_id == ID1
    with pytest.raises(StoreError, match="outside"):
        s.parse(f"file://{tmp_path}/ns/job/main-0/c/checkpoints/{ID1}", "ns")


@pytest.mark.parametrize("bad", [
    "s3://bucket/ns/job/main-0/c/checkpoints/{id}",
    "file://{root}2/ns/job/main-0/c/checkpoints/{id}",  # a sibling directory sharing the prefix
    "file:///etc/ns/job/main-0/c/checkpoints/{id}",
    "file://{root}/ns/job/main-0/c/checkpoints/../../../../../etc",
    "file://{root}/ns/../ns/job/main-0/c/checkpoints/{id}",
    "file://{root}/ns/job/main-0/c/checkpoints/..",
    "file://{root}/ns/job/main-0/c/checkpoints/./{id}",
    "file://{root}/ns/job//main-0/c/checkpoints/{id}",
    "file://{root}/ns/job/main-0/c/checkpoints/{id}/images",
    "file://{root}/ns/job/main-0/c/logs/{id}",
    "file://{root}/ns/job/main/c/checkpoints/{id}",
    "file://{root}/ns/job/main-0/c/checkpoints/.tmp-{id}",
    "file://{root}/ns/Job/main-0/c/checkpoints/{id}",
    "file://{root}/ns/job/main-0/c/checkpoints/a..b",
])
def test_uris_outside_the_layout_are_refused(store: FilesystemStore, bad: str) -> None:
    uri = bad.format(root=store.root, id=ID1)
    with pytest.raises(StoreError):
        store.parse(uri, "ns")
    with pytest.raises(StoreError):
        store.delete(uri, "ns")
    with pytest.raises(StoreError):
        store.verify(uri, "ns")


def test_invalid_names_are_refused(store: FilesystemStore) -> None:
    for args in [("../x", "j", "p", 0, "c"), ("ns", "j/k", "p", 0, "c"), ("ns", "j", "p", -1, "c"),
                 ("ns", "j", "p", 0, ".."), ("ns", "j", "p-", 0, "c")]:
        with pytest.raises(StoreError):
            store.dir_for(*args)
    with pytest.raises(StoreError):
        store.uri_for("ns", "j", "p", 0, "c", "../x")


def test_a_uri_is_accepted_only_for_its_own_namespace(store: FilesystemStore) -> None:
    fake_checkpoint(cdir(store, ns="team-a"), ID1)
    uri = store.uri_for("team-a", "train", "worker", 0, "main", ID1)
    for op in (store.parse, store.verify, store.delete):
        with pytest.raises(StoreError, match="belongs to namespace 'team-a', not 'team-b'"):
            op(uri, "team-b")
    assert (cdir(store, ns="team-a") / "checkpoints" / ID1).is_dir()
    store.verify(uri, "team-a")


def test_list_by_namespace_and_job(store: FilesystemStore) -> None:
    fake_checkpoint(cdir(store, ns="a", job="j1"), ID1)
    fake_checkpoint(cdir(store, ns="a", job="j1"), ID2, parent=ID1, leave_running=True)
    fake_checkpoint(cdir(store, ns="a", job="j2", c="side"), ID1)
    fake_checkpoint(cdir(store, ns="b", job="j1"), ID3)
    (cdir(store, ns="a", job="j1") / "checkpoints" / ".tmp-x").mkdir()  # debris: not listed
    everything = store.list()
    assert sorted((c.ref.namespace, c.ref.job, c.ref.container, c.ref.checkpoint_id) for c in everything) == [
        ("a", "j1", "main", ID1), ("a", "j1", "main", ID2), ("a", "j2", "side", ID1), ("b", "j1", "main", ID3)]
    assert {c.ref.checkpoint_id for c in store.list("a", "j1")} == {ID1, ID2}
    assert [c.parent for c in store.list("a", "j1")] == [None, ID1]
    assert all(c.uri == store.ref_uri(c.ref) and c.size_bytes > 0 for c in everything)
    assert store.list("nobody") == []
    for ns, job in (("..", None), ("a", "../b"), ("a/b", None), ("a", "j1/../j2")):
        with pytest.raises(StoreError):
            store.list(ns, job)


def test_verify_checks_the_tree_hash_the_record_and_the_chain(store: FilesystemStore) -> None:
    d = cdir(store)
    m1 = fake_checkpoint(d, ID1, leave_running=True)
    m2 = fake_checkpoint(d, ID2, parent=ID1)
    uri1 = store.uri_for("team-a", "train", "worker", 0, "main", ID1)
    uri2 = store.uri_for("team-a", "train", "worker", 0, "main", ID2)
    assert store.verify(uri2, "team-a", sha256=m2.sha256).sha256 == m2.sha256
    with pytest.raises(StoreError, match="does not match its record"):
        store.verify(uri2, "team-a", sha256=m1.sha256)
    page = d / "checkpoints" / ID1 / "images" / "pages-1.img"
    data = bytearray(page.read_bytes())
    data[17] ^= 0xFF
    page.write_bytes(bytes(data))
    with pytest.raises(StoreError, match="corrupted"):
        store.verify(uri1, "team-a")
    with pytest.raises(StoreError, match=f"ancestor {ID1}"):
        store.verify(uri2, "team-a")  # the incremental one needs its corrupted parent
    with pytest.raises(StoreError, match="missing"):
        store.verify(store.uri_for("team-a", "train", "worker", 0, "main", ID3), "team-a")
    with pytest.raises(StoreError, match="missing"):
        store.verify(store.uri_for("team-a", "nojob", "worker", 0, "main", ID3), "team-a")


def test_verify_refuses_links(store: FilesystemStore, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    fake_checkpoint(outside, ID1)
    d = cdir(store)
    (d / "checkpoints").mkdir(parents=True)
    (d / "checkpoints" / ID1).symlink_to(outside / "checkpoints" / ID1)
    with pytest.raises(StoreError, match="symbolic link"):
        store.verify(store.uri_for("team-a", "train", "worker", 0, "main", ID1), "team-a")


def test_delete_is_idempotent_and_leaves_the_rest(store: FilesystemStore) -> None:
    d = cdir(store)
    fake_checkpoint(d, ID1)
    fake_checkpoint(d, ID2)
    uri1 = store.uri_for("team-a", "train", "worker", 0, "main", ID1)
    assert store.delete(uri1, "team-a") == "deleted"
    assert not (d / "checkpoints" / ID1).exists()
    assert not (d / "checkpoints" / (PRUNED_PREFIX + ID1)).exists()
    assert (d / "checkpoints" / ID2 / "manifest.json").is_file()
    assert store.delete(uri1, "team-a") == "missing"
    assert store.delete(store.uri_for("team-a", "gone", "worker", 0, "main", ID1), "team-a") == "missing"


def test_delete_keeps_a_parent_until_no_kept_checkpoint_needs_it(store: FilesystemStore) -> None:
    d = cdir(store)
    fake_checkpoint(d, ID1, leave_running=True)
    fake_checkpoint(d, ID2, parent=ID1, leave_running=True)
    fake_checkpoint(d, ID3, parent=ID2)
    uri = {i: store.uri_for("team-a", "train", "worker", 0, "main", i) for i in (ID1, ID2, ID3)}
    assert store.delete(uri[ID1], "team-a") == "deferred"
    assert store.delete(uri[ID2], "team-a") == "deferred"
    assert {c.ref.checkpoint_id: c.pruned for c in store.list()} == {ID1: True, ID2: True, ID3: False}
    store.verify(uri[ID3], "team-a")  # the kept one still restores
    assert store.delete(uri[ID3], "team-a") == "deleted"
    assert sorted(os.listdir(d / "checkpoints")) == []  # the whole chain went, markers too


def test_delete_never_follows_links(store: FilesystemStore, tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    fake_checkpoint(victim, ID1)
    before = sorted(p.relative_to(victim) for p in victim.rglob("*"))
    d = cdir(store)
    d.mkdir(parents=True)
    # A workload replaces its own checkpoints directory with a link to somewhere else.
    (d / "checkpoints").symlink_to(victim / "checkpoints")
    with pytest.raises(StoreError, match="symbolic link"):
        store.delete(store.uri_for("team-a", "train", "worker", 0, "main", ID1), "team-a")
    # …or one checkpoint with a link: only the link goes.
    (d / "checkpoints").unlink()
    (d / "checkpoints").mkdir()
    (d / "checkpoints" / ID1).symlink_to(victim / "checkpoints" / ID1)
    assert store.delete(store.uri_for("team-a", "train", "worker", 0, "main", ID1), "team-a") == "deleted"
    assert not (d / "checkpoints" / ID1).is_symlink()
    assert sorted(p.relative_to(victim) for p in victim.rglob("*")) == before
    # …or a link higher up, where the job directory should be.
    store_job = store.root / "team-a" / "other"
    store_job.symlink_to(victim)
    with pytest.raises(StoreError, match="symbolic link"):
        store.delete(store.uri_for("team-a", "other", "worker", 0, "main", ID1), "team-a")
    assert sorted(p.relative_to(victim) for p in victim.rglob("*")) == before


def test_delete_forgets_the_agent_journal_of_deleted_checkpoints(store: FilesystemStore) -> None:
    d = cdir(store)
    fake_checkpoint(d, ID1)
    fake_checkpoint(d, ID2)
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        j = Journal(fd)
        for uid, ckpt in (("uid-1", ID1), ("uid-2", ID2)):
            j.put(JournalEntry(uid=uid, checkpoint=f"team-a/{uid}", node="n", pod="p", leaveRunning=False,
                               requestedAt=1.0, checkpointId=ckpt))
        store.delete(store.uri_for("team-a", "train", "worker", 0, "main", ID1), "team-a")
        assert j.get("uid-1") is None
        assert j.get("uid-2") is not None and j.claimed_ids() == {ID2}
    finally:
        os.close(fd)


def test_bytes_stored_per_store_namespace_and_job(store: FilesystemStore, tmp_path: Path) -> None:
    fake_checkpoint(cdir(store, ns="a", job="j1"), ID1, payload=b"x" * 10_000)
    fake_checkpoint(cdir(store, ns="a", job="j2"), ID1, payload=b"y" * 20_000)
    fake_checkpoint(cdir(store, ns="b", job="j1"), ID1, payload=b"z" * 40_000)
    a_j1 = store.bytes_stored("a", "j1")
    assert 10_000 < a_j1 < 12_000  # images + runtime.json + manifest.json
    assert store.bytes_stored("a") == a_j1 + store.bytes_stored("a", "j2")
    assert store.bytes_stored() == store.bytes_stored("a") + store.bytes_stored("b")
    big = tmp_path / "big"
    big.write_bytes(b"0" * 1_000_000)
    (cdir(store, ns="a", job="j1") / "link").symlink_to(big)  # links are not followed
    assert store.bytes_stored("a", "j1") == a_j1
    assert store.bytes_stored("nobody") == 0
    with pytest.raises(StoreError):
        store.bytes_stored(job="j1")


def test_retention_deletes_a_checkpoints_images_and_reports_refusals(store: FilesystemStore) -> None:
    fake_checkpoint(cdir(store, c="main"), ID1)
    fake_checkpoint(cdir(store, c="side"), ID1)
    fake_checkpoint(cdir(store, ns="team-b"), ID1)
    arts = [Artifact(pod_set="worker", index=0, container=c, uri=store.uri_for("team-a", "train", "worker", 0, c, ID1))
            for c in ("main", "side")]
    foreign = store.uri_for("team-b", "train", "worker", 0, "main", ID1)
    arts.append(Artifact(pod_set="worker", index=0, container="evil", uri=foreign))
    arts.append(Artifact(pod_set="worker", index=0, container="evil2", uri="file:///etc/passwd"))
    ckpt = Checkpoint(metadata=ObjectMeta(name="train-1-periodic-1", namespace="team-a"),
                      spec=CheckpointSpec(job_name="train", reason="Periodic"),
                      status=CheckpointStatus(phase="Completed", artifacts=arts))
    result = delete_checkpoint_images(store, ckpt)
    assert sorted(result.deleted) == sorted(a.uri for a in arts[:2])
    assert [u for u, _ in result.refused] == [foreign, "file:///etc/passwd"] and not result.ok
    assert not (cdir(store, c="main") / "checkpoints" / ID1).exists()
    assert (cdir(store, ns="team-b") / "checkpoints" / ID1).is_dir()
    again = delete_checkpoint_images(store, ckpt)
    assert sorted(again.missing) == sorted(a.uri for a in arts[:2])

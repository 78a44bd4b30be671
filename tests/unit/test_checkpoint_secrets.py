"""Checkpoint images are secrets (issue 14): which key encrypts them (job > LocalQueue > namespace default),
what a missing key or a restore with another key makes the job say, namespace isolation in the
controller and the store against crafted inputs, and hostile names and commands never reaching a shell
or leaving the namespace's store directory."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from queue_controller import wire
from queue_controller.api.job import EncryptionKeyRef
from queue_controller.checkpoint.base import ArtifactInfo, LaunchRequest, PodRef, RestoreImpossible, RestoreSource
from queue_controller.checkpoint.base import encryption_key as choose_key
from queue_controller.checkpoint.criu import CriuBackend
from queue_controller.checkpoint.injection import InjectionError, inject
from queue_controller.runtime import crypto
from queue_controller.runtime.cli import _run_parser, main
from queue_controller.store.base import StoreError
from queue_controller.store.filesystem import FilesystemStore
from tests.unit.operator_world import CONFIG, TRAIN_COMMAND, World, make_world
from tests.unit.store_helpers import fake_checkpoint

pytestmark = pytest.mark.unit
CKQ_RUN = ["/ckq-runtime/bin/ckq-run", "--dir", "/ckq/checkpoints"]  # how a wrapped command starts
EXIT_NOTE = ["--exit-note", "/dev/termination-log"]  # ckq-run's last options (runtime/exits.py)

STORE = CONFIG["storeHostPath"]
CRIU = {"mode": "CRIU", "container": {"command": TRAIN_COMMAND}}
ID = "20260102-030405-aaaaaa"
HOSTILE_ARGS = ["; rm -rf /", "$(touch /tmp/ckq-pwned)", "`id`", "a\nb", "../../etc/passwd", "--", "--restore",
                "x", "'\"", "*", "&& true", "| cat"]


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(scenario())


def events(w: World, job: str, reason: str) -> list[str]:
    return [e["message"] for e in w.server.events if e["involvedObject"]["name"] == job and e["reason"] == reason]


# ---- which key ---------------------------------------------------------------------------------------


def test_the_jobs_key_wins_over_its_queues_which_wins_over_the_namespace_default() -> None:
    job, queue = EncryptionKeyRef(secret_name="job-key", key="k"), EncryptionKeyRef(secret_name="queue-key")
    assert (choose_key(job, "main", queue).secret, choose_key(job, "main", queue).key) == ("job-key", "k")
    q = choose_key(None, "main", queue)
    assert (q.secret, q.key, q.required) == ("queue-key", "key", True) and "LocalQueue main" in q.source
    d = choose_key(None, "main", None)
    assert (d.secret, d.key, d.required) == (wire.NAMESPACE_KEY_SECRET, wire.NAMESPACE_KEY_DATA, False)
    assert q.describe("team") == ("Secret team/queue-key (data key 'key', from LocalQueue main's "
                                  "spec.checkpoint.encryptionKey)")


def test_a_localqueue_key_reaches_the_pods_and_the_jobs_own_key_wins() -> None:
    async def scenario() -> None:
        w = make_world("iass", nodes=2, kind="real", config=CONFIG, quota_gpus=16)
        w.server.update_spec("localqueues", "team", "main",
                             checkpoint={"encryptionKey": {"secretName": "queue-key", "key": "aes"}})
        w.submit("a", **CRIU)
        w.submit("b", checkpoint={"encryptionKey": {"secretName": "own-key"}}, **CRIU)
        await w.cycle()
        for job, secret, items in (("a", "queue-key", [{"key": "aes", "path": "key"}]),
                                   ("b", "own-key", [{"key": "key", "path": "key"}])):
            (pod,) = w.server.pods(job)
            volume = {"secretName": secret, "defaultMode": 0o400, "optional": True, "items": items}
            assert {"name": "ckq-encryption-key", "secret": volume} in pod["spec"]["volumes"]
            command = pod["spec"]["containers"][0]["command"]
            assert command[3:5] == ["--encrypt-key-file", "/var/run/ckq/encryption/key"]

    run(scenario)


# ---- a key that is missing, a restore with another key -------------------------------------------


def test_a_missing_key_is_reported_by_the_job_instead_of_pods_stuck_creating() -> None:
    """The Secret is mounted optional, so the pod starts and ckq-run exits 78 before starting anything;
    the job names the Secret (PodsReady condition and a Warning Event) and waits with backoff."""
    async def scenario() -> None:
        w = make_world("iass", kind="real", config=CONFIG)
        w.submit("train", checkpoint={"encryptionKey": {"secretName": "absent"}}, **CRIU)
        await w.cycle()
        w.server.run_pods("train")
        w.server.exit_pods("train", 78, ckq_run=True)
        await w.cycle(1)
        st = w.server.status("train")
        why = ("pod train-1-worker-0 cannot start: its checkpoint encryption key, Secret team/absent (data key "
               "'key', from the job's spec.checkpoint.encryptionKey), is missing, or does not hold a 256-bit key "
               "(ckq-run exit 78; the controller never reads Secrets: create or fix it)")
        assert st["phase"] == "Pending" and st["requeueState"]["count"] == 1 and "PodsReady" in st["message"]
        cond = w.server.conditions("train")["PodsReady"]
        assert (cond["status"], cond["reason"]) == ("False", "EncryptionKeyUnavailable")
        assert cond["message"].startswith(why)
        (event,) = events(w, "train", "EncryptionKeyUnavailable")
        assert event.startswith(why)
        assert "Restarting" not in w.server.event_reasons("train")  # not counted as the workload failing

    run(scenario)


def test_a_restore_with_another_key_fails_naming_the_key_id_and_the_secret() -> None:
    async def scenario() -> None:
        w = make_world("iass", kind="real", config=CONFIG)
        w.submit("train", checkpoint={"encryptionKey": {"secretName": "new-key"}}, **CRIU)
        await w.cycle()
        w.server.run_pods("train")
        await w.cycle()  # the controller first sees the pods running
        await w.cycle(1)
        w.server.update_spec("checkpointablejobs", "team", "train", suspend=True)
        await w.cycle(1)
        (ckpt,) = w.server.checkpoints("train")
        name = ckpt["metadata"]["name"]
        d = wire.container_store_dir(STORE, "team", "train", "worker", 0, "train")
        w.server.patch_checkpoint(name, {"artifacts": [{
            "podSet": "worker", "index": 0, "container": "train", "node": "n0", "uri": wire.artifact_uri(d, ID),
            "sha256": "0" * 64, "sizeBytes": 10, "encryptionKeyId": "0123456789abcdef"}]})
        await w.cycle(1)
        assert w.phase("train") == "Suspended"
        w.server.update_spec("checkpointablejobs", "team", "train", suspend=False)
        await w.cycle(1)
        (pod,) = [p for p in w.server.pods("train") if p["metadata"]["labels"]["ckq.io/attempt"] == "2"]
        w.server.run_pods("train")
        w.server.exit_pods("train", 69, ckq_run=True)  # ckq-run: wrong key for checkpoint …
        await w.cycle(1)
        (event,) = events(w, "train", "RestoreFailed")
        assert "its images were encrypted with key id 0123456789abcdef, and this run's pods had Secret " \
               "team/new-key (data key 'key', from the job's spec.checkpoint.encryptionKey)" in event
        assert w.server.get("checkpoints", name)["status"]["phase"] == "Failed"
        assert pod["metadata"]["annotations"]["ckq.io/restore-from"] == name

    run(scenario)


def test_the_default_key_secret_is_optional_and_ckq_run_tells_absent_from_misconfigured(tmp_path: Path) -> None:
    mount = tmp_path / "encryption"
    mount.mkdir()
    assert crypto.load_default_key(mount / "key") is None  # no such Secret: unencrypted, said in the manifest
    (mount / "..data").mkdir()  # a Secret volume's own bookkeeping is not a data key
    assert crypto.load_default_key(mount / "key") is None
    (mount / "aes").write_bytes(os.urandom(32))
    with pytest.raises(crypto.KeyUnavailable, match="has no data key 'key' \\(it has: aes\\)"):
        crypto.load_default_key(mount / "key")
    key = os.urandom(32)
    (mount / "key").write_bytes(key)
    assert crypto.load_default_key(mount / "key") == key
    (mount / "key").write_text("short")
    with pytest.raises(crypto.KeyUnavailable, match="256-bit"):
        crypto.load_default_key(mount / "key")


def test_ckq_run_exits_78_without_starting_the_workload_when_its_key_is_missing(tmp_path: Path) -> None:
    marker = tmp_path / "started"
    for flag in ("--encrypt-key-file", "--default-key-file"):
        missing = tmp_path / "nokey" / "key"
        if flag == "--default-key-file":  # the default: a Secret without that data key
            missing.parent.mkdir()
            (missing.parent / "other").write_text("x")
        with pytest.raises(SystemExit) as exit_:
            main(["--dir", str(tmp_path / "d"), flag, str(missing), "--", "touch", str(marker)])
        assert exit_.value.code == 78
        assert not marker.exists()


def test_ckq_runs_own_exits_are_noted_and_a_workloads_are_not(tmp_path: Path) -> None:
    """ckq-run writes `ckq-run exit <code>: <why>` to --exit-note (the container's termination message
    file) only when it chose the code itself; a workload's own exit 78 passes through with no note, so
    the controller does not take it for a missing key (runtime/exits.py)."""
    from queue_controller.runtime.exits import noted_code

    note = tmp_path / "termination-log"
    with pytest.raises(SystemExit) as exit_:
        main(["--dir", str(tmp_path / "d"), "--encrypt-key-file", str(tmp_path / "nokey"), "--exit-note", str(note),
              "--", "true"])
    assert exit_.value.code == 78 and noted_code(note.read_text()) == 78
    assert "encryption key" in note.read_text()
    note.unlink()
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    proc = subprocess.run([sys.executable, "-m", "queue_controller.runtime.cli", "--dir", str(tmp_path / "d"),
                           "--mode", "signal", "--exit-note", str(note), "--", "sh", "-c", "exit 78"],
                          env=env, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 78, proc.stderr
    assert not note.exists()  # the workload's code: nothing noted


# ---- namespace isolation: the controller ------------------------------------------------------------


def _launch(namespace: str, uri: str, job: str = "train") -> LaunchRequest:
    from queue_controller.api.job import CheckpointPolicy

    art = ArtifactInfo("worker", 0, "train", "n0", uri, "0" * 64, 1)
    return LaunchRequest(namespace, job, PodRef("p", "worker", 0, "n0", ("train",), 0), CheckpointPolicy(), 0.0,
                         restore=RestoreSource("ckpt", (art,)))


@pytest.mark.parametrize("uri", [
    wire.artifact_uri(wire.container_store_dir(STORE, "team-b", "train", "worker", 0, "train"), ID),  # namespace B
    wire.artifact_uri(wire.container_store_dir(STORE, "team", "other", "worker", 0, "train"), ID),  # another job
    wire.artifact_uri(wire.container_store_dir(STORE, "team", "train", "worker", 1, "train"), ID),  # another pod
    wire.artifact_uri(wire.container_store_dir("/elsewhere", "team", "train", "worker", 0, "train"), ID),
    f"file://{STORE}/team/train/worker-0/train/checkpoints/..",
    f"file://{STORE}/team/train/worker-0/train/checkpoints/../../../../team-b/train/worker-0/train/checkpoints/{ID}",
    f"file://{STORE}/team/train/worker-0/train/checkpoints/.tmp-{ID}",
    f"file://{STORE}/team/train/worker-0/train/checkpoints/{ID}\n",
    f"/{STORE}/team/train/worker-0/train/checkpoints/{ID}",
])
def test_a_pod_never_restores_an_image_outside_its_own_store_directory(uri: str) -> None:
    backend = CriuBackend("ckq.local/runtime:0.1.0", STORE)
    with pytest.raises(RestoreImpossible, match="not in this job's own store directory"):
        backend.pod_info(_launch("team", uri))
    own = wire.artifact_uri(wire.container_store_dir(STORE, "team", "train", "worker", 0, "train"), ID)
    info = backend.pod_info(_launch("team", own))
    assert info.rewrite is not None
    spec = info.rewrite({"containers": [{"name": "train", "image": "x", "command": ["python"]}]})
    assert spec["containers"][0]["command"][-5:] == [ID, *EXIT_NOTE, "--", "python"]


def test_a_checkpoint_naming_another_namespaces_images_is_refused_and_the_job_starts_fresh() -> None:
    """A Checkpoint of this job whose artifacts were rewritten to another namespace's images (the same job
    name there): failed with a RestoreFailed Event, no pod restores it, the job falls back."""
    async def scenario() -> None:
        w = make_world("iass", kind="real", config=CONFIG)
        w.submit("train", **CRIU)
        await w.cycle()
        w.server.run_pods("train")
        await w.cycle()  # the controller first sees the pods running
        await w.cycle(1)
        w.server.update_spec("checkpointablejobs", "team", "train", suspend=True)
        await w.cycle(1)
        (ckpt,) = w.server.checkpoints("train")
        name = ckpt["metadata"]["name"]
        theirs = wire.container_store_dir(STORE, "other-team", "train", "worker", 0, "train")
        w.server.patch_checkpoint(name, {"artifacts": [{
            "podSet": "worker", "index": 0, "container": "train", "node": "n0", "uri": wire.artifact_uri(theirs, ID),
            "sha256": "0" * 64, "sizeBytes": 10}]})
        await w.cycle(1)
        assert w.phase("train") == "Suspended"
        w.server.update_spec("checkpointablejobs", "team", "train", suspend=False)
        await w.cycle(1)
        assert not [p for p in w.server.pods("train") if p["metadata"]["labels"]["ckq.io/attempt"] == "2"]
        (event,) = events(w, "train", "RestoreFailed")
        assert f"is not in this job's own store directory {STORE}/team/train/worker-0/train" in event
        assert event.endswith("falls back to a fresh start")
        assert w.server.get("checkpoints", name)["status"]["phase"] == "Failed"
        await w.cycle(1)
        (fresh,) = [p for p in w.server.pods("train") if p["metadata"]["labels"]["ckq.io/attempt"] == "3"]
        assert "--restore" not in fresh["spec"]["containers"][0]["command"]

    run(scenario)


def test_a_hand_written_restore_from_annotation_fails_no_other_checkpoint() -> None:
    """A pod's ckq.io/restore-from names the checkpoint the controller restores from; one edited to name
    another checkpoint is not trusted: that other checkpoint is never failed because of it."""
    async def scenario() -> None:
        w = make_world("iass", kind="real", config=CONFIG)
        w.submit("train", **CRIU)
        await w.cycle()
        w.server.run_pods("train")
        await w.cycle()  # the controller first sees the pods running
        await w.cycle(1)
        stored = w.server.objects[("pods", "team", "train-1-worker-0")]
        stored["metadata"].setdefault("annotations", {})["ckq.io/restore-from"] = "victim-ckpt"  # by hand
        w.server._changed("MODIFIED", "pods", stored)
        w.server.exit_pods("train", 69, ckq_run=True)
        await w.cycle(1)
        assert not events(w, "train", "RestoreFailed")
        assert events(w, "train", "Restarting")  # an ordinary failure of the run

    run(scenario)


# ---- namespace isolation: the store, against crafted inputs --------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> FilesystemStore:
    root = tmp_path / "store"
    root.mkdir()
    return FilesystemStore(root)


@pytest.mark.parametrize("names", [
    ("team\n", "train", "worker", 0, "train"),  # `$` alone would accept a trailing newline
    ("team", "train\n", "worker", 0, "train"),
    ("team", "train", "worker\n", 0, "train"),
    ("team", "train", "worker", 0, "train\n"),
    ("/etc", "train", "worker", 0, "train"),
    ("team", "..", "worker", 0, "train"),
    ("team", "a/../../team-b", "worker", 0, "train"),
    ("team", "train", "worker", 0, "; rm -rf /"),
    ("team", "train", "$(id)", 0, "train"),
])
def test_hostile_names_never_make_a_store_path(store: FilesystemStore, names: tuple[Any, ...]) -> None:
    with pytest.raises(StoreError):
        store.dir_for(*names)
    with pytest.raises(StoreError), store.open_container(*names, create=True):
        pass
    with pytest.raises(ValueError, match="not a valid name for a store path"):
        wire.container_store_dir(STORE, *names)
    assert not any(store.root.iterdir())  # nothing was created


def test_a_symlink_into_another_namespace_is_never_followed(store: FilesystemStore) -> None:
    theirs = store.dir_for("team-b", "train", "worker", 0, "train")
    fake_checkpoint(theirs, ID)
    (store.root / "team-a").mkdir()
    (store.root / "team-a" / "train").symlink_to(store.root / "team-b" / "train")  # planted by someone
    uri = store.uri_for("team-a", "train", "worker", 0, "train", ID)
    for op in (store.verify, store.delete):
        with pytest.raises(StoreError, match="refusing"):
            op(uri, "team-a")
    with pytest.raises(StoreError, match="refusing"), store.open_container("team-a", "train", "worker", 0, "train"):
        pass
    assert (theirs / "checkpoints" / ID).is_dir()  # namespace B's image is untouched
    with pytest.raises(StoreError, match="belongs to namespace 'team-b', not 'team-a'"):
        store.verify(store.uri_for("team-b", "train", "worker", 0, "train", ID), "team-a")


# ---- shells and paths: hostile commands and names --------------------------------------------------


def test_hostile_commands_are_passed_as_argv_verbatim_and_never_through_a_shell() -> None:
    cmd = ["python3", "-c", "import sys; print(sys.argv)"]
    spec = {"containers": [{"name": "train", "image": "x", "command": cmd, "args": HOSTILE_ARGS}]}
    out = inject(spec, image="ckq.local/runtime:0.1.0", store_root=STORE, namespace="team", job="train",
                 pod_set="worker", index=0, restore={"train": ID})
    command = out["containers"][0]["command"]
    assert "args" not in out["containers"][0]  # all of it is in command: no shell joins it
    cut = command.index("--")
    assert command[cut + 1:] == [*cmd, *HOSTILE_ARGS]
    assert command[:cut] == [*CKQ_RUN, "--restore", ID, *EXIT_NOTE]
    args = _run_parser().parse_args(command[1:cut])  # ckq-run's own options stop at the first `--`
    assert args.restore == ID and args.dir == "/ckq/checkpoints"


def test_ckq_run_execs_the_workload_with_its_argv_untouched(tmp_path: Path) -> None:
    """ckq-run (Signal mode: no CRIU needed) starts the command without a shell: every hostile argument
    arrives as one argv entry, and `$(touch …)` touches nothing."""
    pwned = tmp_path / "pwned"
    hostile = [*HOSTILE_ARGS, f"$(touch {pwned})", f"; touch {pwned}"]
    out = tmp_path / "argv"
    script = f"import json, sys; open({str(out)!r}, 'w').write(json.dumps(sys.argv[1:]))"
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    proc = subprocess.run([sys.executable, "-m", "queue_controller.runtime.cli", "--dir", str(tmp_path / "d"),
                           "--mode", "signal", "--", sys.executable, "-c", script, *hostile],
                          env=env, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    import json

    assert json.loads(out.read_text()) == hostile
    assert not pwned.exists()


@pytest.mark.parametrize("field,value", [
    ("namespace", "../team-b"), ("namespace", "team\n"), ("job", "train/../../x"), ("job", "$(id)"),
    ("pod_set", "w;rm -rf /"), ("container", "../../etc"),
])
def test_hostile_names_are_refused_before_a_hostpath_is_built(field: str, value: str) -> None:
    names: dict[str, Any] = {"namespace": "team", "job": "train", "pod_set": "worker"}
    container = value if field == "container" else "train"
    if field != "container":
        names[field] = value
    spec = {"containers": [{"name": container, "image": "x", "command": ["python"]}]}
    with pytest.raises(InjectionError, match="not a valid name for a store path"):
        inject(spec, image="ckq.local/runtime:0.1.0", store_root=STORE, index=0, **names)

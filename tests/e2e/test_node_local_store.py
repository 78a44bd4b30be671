"""Restore on a node that does not share the checkpoint store (storeMode: node-local, issue 10).

The real nodes of `real_cluster_local` keep their images in stores of their own (store/<node>/). A job
checkpointed on one node is resumed on the other (the first is cordoned): that node's agent stages
the images from the first node's agent, verified against the sha256 the Checkpoint records, and the
workload resumes with its memory — the nonce it drew before the checkpoint and the digest of an
uninterrupted run (tests/e2e/test_real_checkpoints.py's workload). A copy that does not verify is
refused: the restore falls back to the previous checkpoint, staged the same way. Deleting the job
deletes its Checkpoints, and every node's agent deletes its copies with them: nothing is left behind.
"""

from __future__ import annotations

import contextlib
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes.client.exceptions import ApiException

from queue_controller import wire
from tests.e2e.test_real_checkpoints import (
    _final_of,
    _has_sa,
    _nonce_of,
    _only_pod,
    _queue,
    checkpoint_holding_the_nonce,
    expected_digest,
    real_job,
)
from tests.plugins.controller import ControllerProcess, Kube, free_namespace
from tests.plugins.realnodes import RealCluster, ensure_real_flavor

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def local_kube(real_cluster_local: RealCluster) -> Kube:
    kube = Kube(real_cluster_local.state.kubeconfig)
    kube.apply_crds()
    ensure_real_flavor(kube)
    return kube


@pytest.fixture
def local_ns(local_kube: Kube) -> Iterator[str]:
    ns = f"local-{uuid.uuid4().hex[:6]}"
    local_kube.core.create_namespace({"metadata": {"name": ns}})
    local_kube.wait("default ServiceAccount", lambda: _has_sa(local_kube, ns), timeout=60)
    yield ns
    free_namespace(local_kube, ns)


@pytest.fixture
def local_controller(local_kube: Kube, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ControllerProcess]:
    monkeypatch.setenv("KUBECONFIG", local_kube.kubeconfig)
    ctl = ControllerProcess(local_kube.kubeconfig, "iass", tmp_path / "controller.log")
    ctl.start()
    yield ctl
    ctl.stop()
    print(f"--- controller log ---\n{ctl.log_tail(80)}")


def node_dir(cluster: RealCluster, node: str, uri: str) -> Path:
    """Where a node keeps the checkpoint a uri names (uris name storeHostPath; each node has its own)."""
    store = cluster.state.store
    rel = uri.removeprefix("file://").removeprefix(store.rstrip("/") + "/")
    return Path(wire.node_store_root(store, node)) / rel


def events(kube: Kube, ns: str, pod_prefix: str, reason: str) -> list[str]:
    """Messages of the Events `reason` on pods named `pod_prefix`… (those of deleted pods included)."""
    return [e.message for e in kube.core.list_namespaced_event(ns).items
            if e.involved_object.kind == "Pod" and e.involved_object.name.startswith(pod_prefix)
            and e.reason == reason]


class PodLogs:
    """The logs of every pod of a job, read while they exist (the controller deletes failed attempts), to
    print when a test fails: a refused restore says why only there (ckq-run's stderr)."""

    def __init__(self, kube: Kube, ns: str, job: str) -> None:
        self.kube, self.ns, self.job = kube, ns, job
        self.logs: dict[str, str] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.wait(0.5):
            try:
                for p in self.kube.pods(self.ns, self.job):
                    with contextlib.suppress(ApiException):
                        self.logs[p.metadata.name] = self.kube.core.read_namespaced_pod_log(p.metadata.name, self.ns)
            except Exception:  # the API server busy for a moment: read again at the next turn
                continue

    def dump(self) -> None:
        self.stop.set()
        self.thread.join()
        for name, log in sorted(self.logs.items()):
            print(f"--- log of pod {name} ---\n{log[-3000:]}")


def files_of(cluster: RealCluster, ns: str, job: str) -> list[Path]:
    out = []
    for n in cluster.state.real_nodes:
        d = Path(wire.node_store_root(cluster.state.store, n.name)) / ns / job
        out += [p for p in d.rglob("*") if p.is_file() and "checkpoints" in p.parts]
    return out


def test_a_job_checkpointed_on_one_node_resumes_on_the_other_from_a_staged_copy(
    local_kube: Kube, local_ns: str, local_controller: ControllerProcess, real_cluster_local: RealCluster
) -> None:
    kube, ns, cluster = local_kube, local_ns, real_cluster_local
    cq = _queue(kube, ns, "2")
    handle = cluster.handle
    cordoned = None
    logs = PodLogs(kube, ns, "mover")
    try:
        kube.create("checkpointablejobs", real_job("mover", "main", pods=1, cpu="1"), ns)
        kube.wait_phase(ns, "mover", "Running", timeout=120)
        pod = kube.wait("the first pod", lambda: _only_pod(kube, ns, "mover", "1"), timeout=30)
        first = pod.spec.node_name
        nonce = kube.wait("the nonce", lambda: _nonce_of(kube, ns, pod.metadata.name), timeout=60)
        kube.create("checkpointablejobs", real_job("urgent", "main", pods=1, cpu="2", priority=100,
                                                   script="import time; time.sleep(3)"), ns)
        suspended = kube.wait_phase(ns, "mover", "Suspended", timeout=180)["status"]
        ckpt = kube.get("checkpoints", suspended["lastCheckpoint"]["name"], ns)
        (art,) = ckpt["status"]["artifacts"]
        assert art["node"] == first
        assert (node_dir(cluster, first, art["uri"]) / "manifest.json").is_file()  # in the dumping node's store
        handle.kubectl("cordon", first)  # the checkpoint must come back on the other node
        cordoned = first
        kube.wait_phase(ns, "mover", "Succeeded", timeout=240)
        resumed = _only_pod(kube, ns, "mover", "2")
        assert resumed is not None and resumed.spec.node_name != first
        other = resumed.spec.node_name
        assert (node_dir(cluster, other, art["uri"]) / "manifest.json").is_file()  # staged into its own store
        staged = events(kube, ns, resumed.metadata.name, "Staged")
        assert staged and f"from node {first}" in staged[0], staged
        assert _final_of(kube, ns, resumed.metadata.name) == (nonce, expected_digest(nonce))
        assert files_of(cluster, ns, "mover")
        kube.delete("checkpointablejobs", "mover", ns)  # its Checkpoints go (owner references) ...
        kube.wait("every node's copies deleted with the Checkpoints", lambda: not files_of(cluster, ns, "mover"),
                  timeout=120)  # ... and every node's images with them, the staged copy included
    finally:
        logs.dump()
        if cordoned:
            handle.kubectl("uncordon", cordoned)
        kube.delete("clusterqueues", cq)


def test_a_corrupted_transfer_is_refused_and_the_previous_checkpoint_is_staged_instead(
    local_kube: Kube, local_ns: str, local_controller: ControllerProcess, real_cluster_local: RealCluster
) -> None:
    """The preemption checkpoint's images are damaged in the source node's store: the copy the other node
    receives does not hash to the recorded sha256, so it is refused (StagingFailed), the checkpoint is
    failed, and the job resumes there from the newest periodic checkpoint, staged and verified."""
    kube, ns, cluster = local_kube, local_ns, real_cluster_local
    cq = _queue(kube, ns, "2")
    handle = cluster.handle
    cordoned = None
    logs = PodLogs(kube, ns, "fragile")
    try:
        kube.create("checkpointablejobs", real_job("fragile", "main", pods=1, cpu="1",
                                                   checkpoint={"interval": "6s", "retain": 3}), ns)
        kube.wait_phase(ns, "fragile", "Running", timeout=120)
        pod = kube.wait("the first pod", lambda: _only_pod(kube, ns, "fragile", "1"), timeout=30)
        first = pod.spec.node_name
        nonce = kube.wait("the nonce", lambda: _nonce_of(kube, ns, pod.metadata.name), timeout=60)
        checkpoint_holding_the_nonce(kube, ns)
        handle.kubectl("cordon", first)  # the resume must be on the other node (the running pod stays)
        cordoned = first
        kube.create("checkpointablejobs", real_job("urgent", "main", pods=1, cpu="2", priority=100,
                                                   script="import time; time.sleep(4)"), ns)
        suspended = kube.wait_phase(ns, "fragile", "Suspended", timeout=180)["status"]
        bad = kube.get("checkpoints", suspended["lastCheckpoint"]["name"], ns)
        assert bad["spec"]["reason"] == "Preemption"
        for art in bad["status"]["artifacts"]:
            images = node_dir(cluster, first, art["uri"]) / "images"
            victim = max((p for p in images.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
            data = bytearray(victim.read_bytes())
            data[len(data) // 2] ^= 0xFF  # one flipped byte in the largest image file, at the source
            victim.write_bytes(bytes(data))
        done = kube.wait_phase(ns, "fragile", "Succeeded", timeout=300)["status"]
        assert kube.get("checkpoints", bad["metadata"]["name"], ns)["status"]["phase"] == "Failed"
        refused = events(kube, ns, "fragile-", "StagingFailed")
        assert refused and "corrupt" in refused[0], refused
        assert done.get("lostRunTimeSeconds", 0) > 0  # the progress after the periodic checkpoint, counted
        last = max(kube.pods(ns, "fragile"), key=lambda p: int(p.metadata.labels["ckq.io/attempt"]))
        assert last.spec.node_name != first
        assert _final_of(kube, ns, last.metadata.name) == (nonce, expected_digest(nonce))
    finally:
        logs.dump()
        for e in kube.core.list_namespaced_event(ns).items:
            print(f"event {e.involved_object.kind}/{e.involved_object.name} {e.reason}: {e.message}")
        if cordoned:
            handle.kubectl("uncordon", cordoned)
        kube.delete("clusterqueues", cq)

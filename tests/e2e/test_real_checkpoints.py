"""The product's promise on real nodes (issue 10): a job's processes are checkpointed with CRIU by the
controller and the node agents, and restored — on the same or the other node — with their memory.

The workload draws a random nonce when it starts, prints it, and extends a sha256 chain over a buffer
in memory one step at a time; at the end it prints the nonce it holds and the final digest. The test
reads the nonce from the FIRST pod's log while it runs and computes the digest an uninterrupted run
gives. A restored run ends with that nonce and that digest; a restarted one draws another nonce.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from tests.plugins.controller import (
    GROUP,
    VERSION,
    ControllerProcess,
    Kube,
    cjob,
    cluster_queue,
    free_namespace,
    local_queue,
)
from tests.plugins.realnodes import RealCluster, ensure_real_flavor

pytestmark = pytest.mark.e2e

STEPS = 240
STEP_S = 0.1
BUFFER = 1 << 20
WORKLOAD = f"""
import hashlib, os, sys, time
# One write per line: print() writes each part on its own, and a checkpoint taken between two of
# them splits the line across two containers' logs.
def say(*parts):
    os.write(1, (" ".join(map(str, parts)) + "\\n").encode())
nonce = os.urandom(16).hex()
say("nonce", nonce)
buf = bytearray(hashlib.sha256(nonce.encode()).digest() * ({BUFFER} // 32))
state = hashlib.sha256(nonce.encode()).digest()
for step in range({STEPS}):
    buf[step % len(buf)] = state[0]
    state = hashlib.sha256(state + bytes(buf[:4096])).digest()
    if step % 20 == 0:
        say("step", step, state.hex())
    time.sleep({STEP_S})
say("final", nonce, state.hex())
"""


def expected_digest(nonce: str, steps: int = STEPS) -> str:
    buf = bytearray(hashlib.sha256(nonce.encode()).digest() * (BUFFER // 32))
    state = hashlib.sha256(nonce.encode()).digest()
    for step in range(steps):
        buf[step % len(buf)] = state[0]
        state = hashlib.sha256(state + bytes(buf[:4096])).digest()
    return state.hex()


@pytest.fixture(scope="module")
def real_kube(real_cluster: RealCluster) -> Kube:
    kube = Kube(real_cluster.state.kubeconfig)
    kube.apply_crds()
    ensure_real_flavor(kube)
    return kube


@pytest.fixture
def real_ns(real_kube: Kube) -> Iterator[str]:
    ns = f"ckpt-{uuid.uuid4().hex[:6]}"
    real_kube.core.create_namespace({"metadata": {"name": ns}})
    real_kube.wait("default ServiceAccount", lambda: _has_sa(real_kube, ns), timeout=60)
    yield ns
    free_namespace(real_kube, ns)


def _has_sa(kube: Kube, ns: str) -> bool:
    try:
        kube.core.read_namespaced_service_account("default", ns)
        return True
    except ApiException:
        return False


@pytest.fixture
def controller(real_kube: Kube, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ControllerProcess]:
    monkeypatch.setenv("KUBECONFIG", real_kube.kubeconfig)  # this cluster only, whatever the session set
    ctl = ControllerProcess(real_kube.kubeconfig, "iass", tmp_path / "controller.log")
    ctl.start()
    yield ctl
    ctl.stop()
    print(f"--- controller log ---\n{ctl.log_tail(80)}")


def real_job(name: str, queue: str, *, pods: int, cpu: str, priority: int = 0, script: str = WORKLOAD,
             **spec: Any) -> dict[str, Any]:
    body = cjob(name, queue, gpus=0, pods=pods, priority=priority, mode="CRIU", **spec)
    container = body["spec"]["podSets"][0]["template"]["spec"]["containers"][0]
    container.update({
        "image": "ckq.local/python:3", "imagePullPolicy": "IfNotPresent",
        "command": ["python3", "-u", "-c", script],
        "resources": {"requests": {"cpu": cpu, "memory": "128Mi"}},
    })
    body["metadata"]["annotations"] = {}
    return body


def _nonce_of(kube: Kube, ns: str, pod: str) -> str | None:
    try:
        log = kube.core.read_namespaced_pod_log(pod, ns)
    except ApiException:
        return None
    match = re.search(r"^nonce ([0-9a-f]{32})$", log, re.M)
    return match.group(1) if match else None


def checkpoint_holding_the_nonce(kube: Kube, ns: str, timeout: float = 90) -> None:
    """Call once the nonce was read from the log: waits for a checkpoint begun after that, so that a
    restore from it must bring the nonce back. One completed earlier may hold the process before it drew
    its nonce (on a loaded machine the interpreter can take longer to start than the first interval), and
    a restore from it rightly draws a new one."""
    before = {c["metadata"]["name"] for c in kube.list("checkpoints", ns)}
    kube.wait("a checkpoint begun after the nonce was printed", lambda: [
        c for c in kube.list("checkpoints", ns) if c["metadata"]["name"] not in before
        and (c.get("status") or {}).get("phase") == "Completed"], timeout=timeout)


def _final_of(kube: Kube, ns: str, pod: str) -> tuple[str, str] | None:
    log = kube.core.read_namespaced_pod_log(pod, ns)
    match = re.search(r"^final ([0-9a-f]{32}) ([0-9a-f]{64})$", log, re.M)
    return (match.group(1), match.group(2)) if match else None


def test_gang_preempted_by_criu_checkpoint_resumes_with_its_memory(
    real_kube: Kube, real_ns: str, controller: ControllerProcess
) -> None:
    kube, ns = real_kube, real_ns
    cq = cluster_queue(f"{ns}-cq", gpus=0, flavors=("real",), preemption={"withinClusterQueue": "LowerPriority"})
    cq["spec"]["resourceGroups"][0]["flavors"][0]["resources"][0]["nominalQuota"] = "2"
    kube.create("clusterqueues", cq)
    kube.create("localqueues", local_queue("main", ns, cq["metadata"]["name"]), ns)
    try:
        kube.create("checkpointablejobs", real_job("train", "main", pods=2, cpu="1"), ns)
        kube.wait_phase(ns, "train", "Running", timeout=120)
        first = sorted(p.metadata.name for p in kube.pods(ns, "train"))
        nonces = {p: kube.wait(f"the nonce in {p}'s log", lambda p=p: _nonce_of(kube, ns, p), timeout=60)
                  for p in first}
        # The urgent job needs the whole quota: the gang must make room by checkpoint.
        kube.create("checkpointablejobs", real_job("urgent", "main", pods=1, cpu="2", priority=100,
                                                   script="print('urgent done')"), ns)
        suspended = kube.wait_phase(ns, "train", "Suspended", timeout=180)["status"]
        assert suspended["preemptions"] == 1
        ckpt = kube.get("checkpoints", suspended["lastCheckpoint"]["name"], ns)
        assert ckpt["spec"]["reason"] == "Preemption" and ckpt["status"]["phase"] == "Completed"
        artifacts = ckpt["status"]["artifacts"]
        assert len(artifacts) == 2 and all(a["sizeBytes"] > BUFFER for a in artifacts), artifacts
        assert all(re.fullmatch(r"[0-9a-f]{64}", a["sha256"]) for a in artifacts)
        assert ckpt["status"]["sizeBytes"] == sum(a["sizeBytes"] for a in artifacts)
        # The freeze barrier: both containers were frozen before either was dumped, by the times each
        # ckq-run recorded in its manifest (the real nodes share one host: one clock).
        st = ckpt["status"]
        assert st["members"] == 2 and len(st["frozen"]) == 2, st
        manifests = [json.loads((Path(a["uri"].removeprefix("file://")) / "manifest.json").read_text())
                     for a in artifacts]
        assert max(m["frozenAt"] for m in manifests) <= min(m["dumpStartedAt"] for m in manifests), manifests
        kube.wait_phase(ns, "urgent", "Succeeded", timeout=120)
        done = kube.wait_phase(ns, "train", "Succeeded", timeout=240)["status"]
        resumed = {p.metadata.labels["ckq.io/pod-index"]: p.metadata.name for p in kube.pods(ns, "train")
                   if p.metadata.labels.get("ckq.io/attempt") == "2"}
        assert len(resumed) == 2, resumed
        for pod in first:
            index = kube.core.read_namespaced_pod(pod, ns).metadata.labels["ckq.io/pod-index"] \
                if _exists(kube, ns, pod) else pod.rsplit("-", 1)[1]
            final = _final_of(kube, ns, resumed[index])
            assert final is not None, f"no final line in {resumed[index]}"
            nonce, digest = final
            assert nonce == nonces[pod], "the resumed process holds another nonce: it was restarted"
            assert digest == expected_digest(nonce)
        assert done["runTimeSeconds"] > 0 and done.get("lostRunTimeSeconds", 0) == 0
    finally:
        kube.delete("clusterqueues", cq["metadata"]["name"])


def _exists(kube: Kube, ns: str, pod: str) -> bool:
    try:
        kube.core.read_namespaced_pod(pod, ns)
        return True
    except ApiException:
        return False



def _queue(kube: Kube, ns: str, cpu: str) -> str:
    cq = cluster_queue(f"{ns}-cq", gpus=0, flavors=("real",), preemption={"withinClusterQueue": "LowerPriority"})
    cq["spec"]["resourceGroups"][0]["flavors"][0]["resources"][0]["nominalQuota"] = cpu
    kube.create("clusterqueues", cq)
    kube.create("localqueues", local_queue("main", ns, cq["metadata"]["name"]), ns)
    return str(cq["metadata"]["name"])


def _only_pod(kube: Kube, ns: str, job: str, attempt: str) -> Any:
    pods = [p for p in kube.pods(ns, job) if p.metadata.labels.get("ckq.io/attempt") == attempt]
    return pods[0] if len(pods) == 1 else None


def test_resumed_job_migrates_to_the_other_node_with_its_memory(
    real_kube: Kube, real_ns: str, controller: ControllerProcess, real_cluster: RealCluster
) -> None:
    kube, ns = real_kube, real_ns
    cq = _queue(kube, ns, "2")
    handle = real_cluster.handle
    cordoned = None
    try:
        kube.create("checkpointablejobs", real_job("mover", "main", pods=1, cpu="1"), ns)
        kube.wait_phase(ns, "mover", "Running", timeout=120)
        pod = kube.wait("the first pod", lambda: _only_pod(kube, ns, "mover", "1"), timeout=30)
        first_node = pod.spec.node_name
        nonce = kube.wait("the nonce", lambda: _nonce_of(kube, ns, pod.metadata.name), timeout=60)
        kube.create("checkpointablejobs", real_job("urgent", "main", pods=1, cpu="2", priority=100,
                                                   script="import time; time.sleep(3)"), ns)
        kube.wait_phase(ns, "mover", "Suspended", timeout=180)
        handle.kubectl("cordon", first_node)  # the checkpoint must come back on the other node
        cordoned = first_node
        kube.wait_phase(ns, "mover", "Succeeded", timeout=240)
        resumed = _only_pod(kube, ns, "mover", "2")
        assert resumed is not None and resumed.spec.node_name != first_node
        final = _final_of(kube, ns, resumed.metadata.name)
        assert final == (nonce, expected_digest(nonce)), final
    finally:
        if cordoned:
            handle.kubectl("uncordon", cordoned)
        kube.delete("clusterqueues", cq)


def _workload_pids(node: Any, nonce_marker: str) -> list[int]:
    """Host pids of the workload (the python3 -c process) in a real node's cgroups."""
    from queue_controller.devcluster import realnode

    pids = []
    for pid in realnode.iter_processes_of(node):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if cmd[:2] == [b"python3", b"-u"] and nonce_marker.encode() in b" ".join(cmd):
            pids.append(pid)
    return pids


def test_killed_workload_restores_from_the_last_periodic_checkpoint(
    real_kube: Kube, real_ns: str, controller: ControllerProcess, real_cluster: RealCluster
) -> None:
    """Periodic leave-running checkpoints; then the workload's process is SIGKILLed on its node. The
    job restarts from the newest periodic checkpoint: same nonce, same final digest, and it loses at
    most about one interval of work (the run time it had at that checkpoint is kept)."""
    import signal

    kube, ns = real_kube, real_ns
    cq = _queue(kube, ns, "2")
    try:
        body = real_job("steady", "main", pods=1, cpu="1", checkpoint={"interval": "8s", "retain": 2})
        kube.create("checkpointablejobs", body, ns)
        kube.wait_phase(ns, "steady", "Running", timeout=120)
        pod = kube.wait("the first pod", lambda: _only_pod(kube, ns, "steady", "1"), timeout=30)
        nonce = kube.wait("the nonce", lambda: _nonce_of(kube, ns, pod.metadata.name), timeout=60)

        def periodic_done() -> int:
            st = kube.job(ns, "steady").get("status") or {}
            return int(st.get("checkpoints") or 0) >= 2 and int(st["checkpoints"])

        checkpoint_holding_the_nonce(kube, ns, timeout=120)
        kube.wait("two periodic checkpoints", periodic_done, timeout=120)
        ckpts = [c for c in kube.list("checkpoints", ns) if c["spec"]["reason"] == "Periodic"]
        assert all(c["spec"]["leaveRunning"] for c in ckpts)
        assert len([c for c in ckpts if (c.get("status") or {}).get("phase") == "Completed"]) <= 2  # retain
        node = next(n for n in real_cluster.state.real_nodes if n.name == pod.spec.node_name)
        victims = kube.wait("the workload's process on the node", lambda: _workload_pids(node, "nonce"), timeout=10)
        for pid in victims:
            os.kill(pid, signal.SIGKILL)
        restarted = kube.wait("a restart", lambda: (s := kube.job(ns, "steady").get("status") or {}).get(
            "restarts") == 1 and s, timeout=120)
        assert restarted.get("lostRunTimeSeconds", 0) <= 8 + 4, restarted
        kube.wait_phase(ns, "steady", "Succeeded", timeout=240)
        resumed = _only_pod(kube, ns, "steady", "2")
        assert resumed is not None
        assert _final_of(kube, ns, resumed.metadata.name) == (nonce, expected_digest(nonce))
    finally:
        kube.delete("clusterqueues", cq)


def test_a_corrupted_checkpoint_falls_back_to_the_previous_one(
    real_kube: Kube, real_ns: str, controller: ControllerProcess, real_cluster: RealCluster
) -> None:
    """Periodic checkpoints, then a preemption checkpoint whose images are damaged on disk before the
    resume: ckq-run refuses them (tree hash), the controller fails that checkpoint, and the job resumes
    from the newest periodic one instead — still with its memory: same nonce, same final digest."""
    kube, ns = real_kube, real_ns
    cq = _queue(kube, ns, "2")
    try:
        kube.create("checkpointablejobs", real_job("fragile", "main", pods=1, cpu="1",
                                                   checkpoint={"interval": "6s", "retain": 3}), ns)
        kube.wait_phase(ns, "fragile", "Running", timeout=120)
        pod = kube.wait("the first pod", lambda: _only_pod(kube, ns, "fragile", "1"), timeout=30)
        nonce = kube.wait("the nonce", lambda: _nonce_of(kube, ns, pod.metadata.name), timeout=60)
        checkpoint_holding_the_nonce(kube, ns)
        kube.create("checkpointablejobs", real_job("urgent", "main", pods=1, cpu="2", priority=100,
                                                   script="import time; time.sleep(4)"), ns)
        suspended = kube.wait_phase(ns, "fragile", "Suspended", timeout=180)["status"]
        bad = kube.get("checkpoints", suspended["lastCheckpoint"]["name"], ns)
        assert bad["spec"]["reason"] == "Preemption"
        for art in bad["status"]["artifacts"]:
            images = Path(art["uri"].removeprefix("file://")) / "images"
            assert images.is_dir() and Path(real_cluster.state.store) in images.parents
            victim = max((p for p in images.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
            data = bytearray(victim.read_bytes())
            data[len(data) // 2] ^= 0xFF  # one flipped byte in the largest image file
            victim.write_bytes(bytes(data))
        done = kube.wait_phase(ns, "fragile", "Succeeded", timeout=300)["status"]
        assert kube.get("checkpoints", bad["metadata"]["name"], ns)["status"]["phase"] == "Failed"
        assert done.get("lostRunTimeSeconds", 0) > 0  # the progress after the periodic checkpoint, counted
        last = max((p for p in kube.pods(ns, "fragile")), key=lambda p: int(p.metadata.labels["ckq.io/attempt"]))
        assert _final_of(kube, ns, last.metadata.name) == (nonce, expected_digest(nonce))
    finally:
        kube.delete("clusterqueues", cq)


def test_an_encrypted_job_is_stored_as_ciphertext_and_resumes_with_its_memory(
    real_kube: Kube, real_ns: str, controller: ControllerProcess, real_cluster: RealCluster
) -> None:
    """spec.checkpoint.encryptionKey (issues 10 and 14): the images of a preempted job hold process
    memory, so with a key they are stored encrypted — the nonce the process holds appears in none of the
    stored files, and the manifest records the key's id — and the job still resumes with its memory."""
    import base64
    import json

    from kubernetes import client

    kube, ns = real_kube, real_ns
    cq = _queue(kube, ns, "2")
    key = os.urandom(32)
    kube.core.create_namespaced_secret(ns, client.V1Secret(
        metadata=client.V1ObjectMeta(name="ckpt-key"), data={"key": base64.b64encode(key).decode()}))
    try:
        kube.create("checkpointablejobs", real_job("sealed", "main", pods=1, cpu="1",
                                                   checkpoint={"encryptionKey": {"secretName": "ckpt-key"}}), ns)
        kube.wait_phase(ns, "sealed", "Running", timeout=120)
        pod = kube.wait("the first pod", lambda: _only_pod(kube, ns, "sealed", "1"), timeout=30)
        nonce = kube.wait("the nonce", lambda: _nonce_of(kube, ns, pod.metadata.name), timeout=60)
        kube.create("checkpointablejobs", real_job("urgent", "main", pods=1, cpu="2", priority=100,
                                                   script="import time; time.sleep(4)"), ns)
        suspended = kube.wait_phase(ns, "sealed", "Suspended", timeout=180)["status"]
        ckpt = kube.get("checkpoints", suspended["lastCheckpoint"]["name"], ns)
        for art in ckpt["status"]["artifacts"]:
            root = Path(art["uri"].removeprefix("file://"))
            files = [p for p in root.rglob("*") if p.is_file()]
            assert files and Path(real_cluster.state.store) in root.parents
            manifest = json.loads(next(p for p in files if p.name == "manifest.json").read_text())
            assert (manifest.get("encryption") or {}).get("keyId"), manifest
            assert not [p for p in files if nonce.encode() in p.read_bytes()], "process memory stored in clear"
        kube.wait_phase(ns, "sealed", "Succeeded", timeout=300)
        resumed = _only_pod(kube, ns, "sealed", "2")
        assert resumed is not None and _final_of(kube, ns, resumed.metadata.name) == (nonce, expected_digest(nonce))
    finally:
        kube.delete("clusterqueues", cq)


def test_a_controller_killed_mid_checkpoint_carries_on_and_nothing_runs_twice(
    real_kube: Kube, real_ns: str, controller: ControllerProcess
) -> None:
    """Issue 10: the controller SIGKILLed while the node agent dumps a preempted job on a real node; a new
    controller carries the checkpoint on from the objects alone. The job resumes once (attempt 2, no
    third), with its memory: the nonce and digest of an uninterrupted run."""
    import signal

    kube, ns = real_kube, real_ns
    cq = _queue(kube, ns, "2")
    try:
        # 64 MiB that cannot be compressed, so that the dump takes a while: the controller is killed
        # while it runs, not after (a small process is dumped in well under a second).
        script = WORKLOAD.replace("nonce = os.urandom(16).hex()",
                                  "ballast = os.urandom(64 << 20)\nnonce = os.urandom(16).hex()")
        kube.create("checkpointablejobs", real_job("steady", "main", pods=1, cpu="1", script=script), ns)
        kube.wait_phase(ns, "steady", "Running", timeout=120)
        pod = kube.wait("the first pod", lambda: _only_pod(kube, ns, "steady", "1"), timeout=30)
        nonce = kube.wait("the nonce", lambda: _nonce_of(kube, ns, pod.metadata.name), timeout=60)
        # Watched, not polled: `Checkpointing` may last less than a poll's interval, and a watch started
        # before the preemptor exists sees every phase the controller writes.
        listed = kube.custom.list_namespaced_custom_object(GROUP, VERSION, ns, "checkpointablejobs")
        rv = listed["metadata"]["resourceVersion"]
        kube.create("checkpointablejobs", real_job("urgent", "main", pods=1, cpu="2", priority=100,
                                                   script="import time; time.sleep(4)"), ns)
        _watch_phase(kube, ns, "steady", "Checkpointing", rv, timeout=60)
        controller.kill(signal.SIGKILL)  # mid-checkpoint: the agent goes on dumping meanwhile
        controller.start()
        kube.wait_phase(ns, "steady", "Succeeded", timeout=300)
        attempts = sorted({p.metadata.labels["ckq.io/attempt"] for p in kube.pods(ns, "steady")})
        assert attempts == ["2"], attempts  # the checkpointed run's pods are gone; resumed once, no third run
        st = job_status_of(kube, ns, "steady")
        assert st["preemptions"] == 1 and st.get("restarts", 0) == 0
        preemption = [c for c in kube.list("checkpoints", ns) if c["spec"]["jobName"] == "steady"
                      and c["spec"]["reason"] == "Preemption"]
        assert len(preemption) == 1 and preemption[0]["status"]["phase"] == "Completed"
        assert _final_of(kube, ns, _only_pod(kube, ns, "steady", "2").metadata.name) == (nonce, expected_digest(nonce))
    finally:
        kube.delete("clusterqueues", cq)


def _watch_phase(kube: Kube, ns: str, name: str, phase: str, resource_version: str, timeout: float) -> None:
    """Return as soon as a watch from `resource_version` shows the job in `phase`."""
    from kubernetes import watch

    seen: list[str] = []
    w = watch.Watch()
    try:
        for event in w.stream(kube.custom.list_namespaced_custom_object, GROUP, VERSION, ns, "checkpointablejobs",
                              field_selector=f"metadata.name={name}", resource_version=resource_version,
                              timeout_seconds=int(timeout)):
            status = event["object"].get("status")  # an ERROR event's object is a Status: its `status` a string
            current = status.get("phase") if isinstance(status, dict) else event["type"]
            if current == phase:
                return
            if not seen or seen[-1] != current:
                seen.append(str(current))
    finally:
        w.stop()
    raise AssertionError(f"job {ns}/{name} never showed phase {phase} within {timeout:.0f}s; phases seen: {seen}")


def job_status_of(kube: Kube, ns: str, name: str) -> dict[str, Any]:
    return kube.job(ns, name).get("status") or {}


def _events(kube: Kube, ns: str, name: str, reason: str) -> list[str]:
    return [e.message for e in kube.core.list_namespaced_event(ns).items
            if e.involved_object.name == name and e.reason == reason]


def _suspend(kube: Kube, ns: str, name: str, suspend: bool) -> None:
    kube.patch("checkpointablejobs", name, {"spec": {"suspend": suspend}}, ns)


def test_a_job_in_one_namespace_never_restores_an_image_taken_in_another(
    real_kube: Kube, real_ns: str, controller: ControllerProcess, real_cluster: RealCluster
) -> None:
    """Issue 14, namespace isolation: two jobs of the same name in namespaces A and B are checkpointed
    (suspended). B has a default key Secret (`ckq-checkpoint-key`): its images are encrypted without the
    job asking. A's Checkpoint is then rewritten to name B's images (what a user able to write
    Checkpoints could do). Resumed, A refuses them — RestoreFailed, naming its own store directory — and
    never holds B's nonce; B resumes from its own images with its memory."""
    import base64
    import json

    from kubernetes import client

    kube, ns_a = real_kube, real_ns
    ns_b = f"{ns_a}-b"
    kube.core.create_namespace({"metadata": {"name": ns_b}})
    cq = _queue(kube, ns_a, "2")
    try:
        kube.wait("B's default ServiceAccount", lambda: _has_sa(kube, ns_b), timeout=60)
        kube.create("localqueues", local_queue("main", ns_b, cq), ns_b)
        kube.core.create_namespaced_secret(ns_b, client.V1Secret(
            metadata=client.V1ObjectMeta(name="ckq-checkpoint-key"),
            data={"key": base64.b64encode(os.urandom(32)).decode()}))
        nonces = {}
        for ns in (ns_b, ns_a):
            kube.create("checkpointablejobs", real_job("twin", "main", pods=1, cpu="1"), ns)
        for ns in (ns_b, ns_a):
            kube.wait_phase(ns, "twin", "Running", timeout=120)
            pod = kube.wait("the first pod", lambda ns=ns: _only_pod(kube, ns, "twin", "1"), timeout=30)
            nonces[ns] = kube.wait("the nonce", lambda ns=ns, pod=pod: _nonce_of(kube, ns, pod.metadata.name),
                                   timeout=60)
            _suspend(kube, ns, "twin", True)
        ckpts = {}
        for ns in (ns_b, ns_a):
            st = kube.wait_phase(ns, "twin", "Suspended", timeout=180)["status"]
            ckpts[ns] = kube.get("checkpoints", st["lastCheckpoint"]["name"], ns)
        theirs = ckpts[ns_b]["status"]["artifacts"]
        assert all(a.get("encryptionKeyId") for a in theirs)  # B's default key, without the job asking
        for a in theirs:
            root = Path(a["uri"].removeprefix("file://"))
            manifest = json.loads((root / "manifest.json").read_text())
            assert manifest["encryption"]["keyId"] == a["encryptionKeyId"]
            assert not [p for p in root.rglob("*") if p.is_file() and nonces[ns_b].encode() in p.read_bytes()]
        assert not any(a.get("encryptionKeyId") for a in ckpts[ns_a]["status"]["artifacts"])  # A has no key
        # A's Checkpoint now names B's images.
        name_a = ckpts[ns_a]["metadata"]["name"]
        kube.custom.patch_namespaced_custom_object_status("ckq.io", "v1alpha1", ns_a, "checkpoints", name_a,
                                                          {"status": {"artifacts": theirs}})
        _suspend(kube, ns_a, "twin", False)
        refused = kube.wait("A's RestoreFailed Event", lambda: _events(kube, ns_a, "twin", "RestoreFailed"),
                            timeout=120)
        own_dir = f"{real_cluster.state.store}/{ns_a}/twin/worker-0/train"
        assert any(f"is not in this job's own store directory {own_dir}" in m for m in refused), refused
        assert kube.get("checkpoints", name_a, ns_a)["status"]["phase"] == "Failed"
        kube.wait_phase(ns_a, "twin", "Succeeded", timeout=300)
        for pod in kube.pods(ns_a, "twin"):
            assert _nonce_of(kube, ns_a, pod.metadata.name) != nonces[ns_b]
        last_a = max(kube.pods(ns_a, "twin"), key=lambda p: int(p.metadata.labels["ckq.io/attempt"]))
        final = _final_of(kube, ns_a, last_a.metadata.name)
        assert final is not None and final[0] != nonces[ns_b] and final[1] == expected_digest(final[0])
        # B's images were sound all along: B resumes from them with its memory.
        _suspend(kube, ns_b, "twin", False)
        kube.wait_phase(ns_b, "twin", "Succeeded", timeout=300)
        resumed = _only_pod(kube, ns_b, "twin", "2")
        assert resumed is not None
        assert _final_of(kube, ns_b, resumed.metadata.name) == (nonces[ns_b], expected_digest(nonces[ns_b]))
    finally:
        free_namespace(kube, ns_b)
        kube.delete("clusterqueues", cq)


def test_a_missing_key_secret_is_reported_by_the_job_not_left_in_container_creating(
    real_kube: Kube, real_ns: str, controller: ControllerProcess
) -> None:
    """A LocalQueue's spec.checkpoint.encryptionKey naming a Secret that does not exist: the pod's key
    volume is optional, so the kubelet starts it, ckq-run exits 78 before starting the workload, and the
    job says which Secret (PodsReady condition, Warning Event) instead of waiting forever."""
    kube, ns = real_kube, real_ns
    cq = cluster_queue(f"{ns}-cq", gpus=0, flavors=("real",))
    cq["spec"]["resourceGroups"][0]["flavors"][0]["resources"][0]["nominalQuota"] = "2"
    kube.create("clusterqueues", cq)
    lq = local_queue("keyed", ns, cq["metadata"]["name"])
    lq["spec"]["checkpoint"] = {"encryptionKey": {"secretName": "nowhere", "key": "aes"}}
    kube.create("localqueues", lq, ns)
    try:
        kube.create("checkpointablejobs", real_job("keyless", "keyed", pods=1, cpu="1"), ns)
        events = kube.wait("the EncryptionKeyUnavailable Event",
                           lambda: _events(kube, ns, "keyless", "EncryptionKeyUnavailable"), timeout=180)
        assert f"Secret {ns}/nowhere (data key 'aes', from LocalQueue keyed's spec.checkpoint.encryptionKey)" \
            in events[0]
        cond = {c["type"]: c for c in job_status_of(kube, ns, "keyless")["conditions"]}["PodsReady"]
        assert (cond["status"], cond["reason"]) == ("False", "EncryptionKeyUnavailable")
    finally:
        kube.delete("clusterqueues", cq["metadata"]["name"])


def _agent_pid(real_cluster: RealCluster, node: str) -> int:
    """This cluster's node agent for `node` (a host process; its --store names this cluster's store)."""
    want = [b"agent", b"--node", node.encode(), b"--store", real_cluster.state.store.encode()]
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if all(w in cmd for w in want):
            return int(entry.name)
    raise AssertionError(f"no node agent for {node} found")


def _ppid(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("PPid:")))


def test_a_gang_checkpoint_with_one_failed_dump_is_all_or_nothing(
    real_kube: Kube, real_ns: str, controller: ControllerProcess, real_cluster: RealCluster
) -> None:
    """Issue 10: a leave-running checkpoint of a 2-pod gang on 2 nodes in which pod 0 is dumped and pod
    1's dump fails (its checkpoint directory replaced by a file). The order is made certain by pausing
    processes, never by waiting for time: node 0's agent is paused until pod 1 is frozen, pod 1's
    ckq-run is paused (holding the dump request) until pod 0's artifact is recorded. Then the
    checkpoint fails: no Completed checkpoint exists to restore from, pod 0's image is deleted, both
    agents release their pods, and the job runs on to the end with its memory (the nonces it drew and
    the digests of an uninterrupted run, never restarted)."""
    import signal

    from queue_controller.store.filesystem import CHECKPOINTS, FilesystemStore

    kube, ns = real_kube, real_ns
    cq = _queue(kube, ns, "3")
    store = FilesystemStore(Path(real_cluster.state.store))
    broken: Path | None = None
    paused: list[int] = []

    def pause(pid: int) -> None:
        os.kill(pid, signal.SIGSTOP)
        paused.append(pid)

    def resume(pid: int) -> None:
        os.kill(pid, signal.SIGCONT)
        paused.remove(pid)

    def status() -> dict[str, Any]:
        return kube.get("checkpoints", "pair-manual", ns).get("status") or {}

    try:
        # 1.5 CPUs each on 2-CPU nodes: one pod per node, so two agents take part.
        kube.create("checkpointablejobs", real_job("pair", "main", pods=2, cpu="1500m"), ns)
        kube.wait_phase(ns, "pair", "Running", timeout=120)
        pods = {int(p.metadata.labels["ckq.io/pod-index"]): p for p in kube.pods(ns, "pair")}
        assert len(pods) == 2 and pods[0].spec.node_name != pods[1].spec.node_name
        nonces = {i: kube.wait(f"the nonce of pod {i}", lambda p=p: _nonce_of(kube, ns, p.metadata.name),
                               timeout=60) for i, p in pods.items()}
        dirs = {i: store.dir_for(ns, "pair", "worker", i, p.spec.containers[0].name) for i, p in pods.items()}
        node1 = next(n for n in real_cluster.state.real_nodes if n.name == pods[1].spec.node_name)
        [workload1] = kube.wait("pod 1's workload", lambda: _workload_pids(node1, "nonce"), timeout=10)
        ckq_run1 = _ppid(workload1)

        pause(_agent_pid(real_cluster, pods[0].spec.node_name))
        kube.create("checkpoints", {"apiVersion": "ckq.io/v1alpha1", "kind": "Checkpoint",
                                    "metadata": {"name": "pair-manual"},
                                    "spec": {"jobName": "pair", "reason": "User", "leaveRunning": True}}, ns)
        kube.wait("pod 1 frozen", lambda: [f for f in status().get("frozen") or () if f["index"] == 1], timeout=60)
        pause(ckq_run1)  # the dump request node 1's agent sends next waits in its socket's backlog
        resume(paused[0])  # node 0's agent: freezes pod 0, the barrier is reached, it dumps pod 0
        [art0] = kube.wait("pod 0's artifact", lambda: [a for a in status().get("artifacts") or ()
                                                       if a["index"] == 0], timeout=120)
        image0 = Path(art0["uri"].removeprefix("file://"))
        assert (image0 / "manifest.json").is_file()
        broken = dirs[1] / CHECKPOINTS
        broken.rename(broken.with_name("checkpoints.aside"))
        broken.write_text("not a directory: ckq-run cannot dump here\n")
        resume(ckq_run1)  # answers the dump request: it fails

        nodes = {p.spec.node_name for p in pods.values()}
        kube.wait("the checkpoint to fail and both agents to release",
                  lambda: status().get("phase") == "Failed" and set(status().get("released") or ()) == nodes,
                  timeout=120)
        st = status()
        assert pods[1].metadata.name in st["message"] and "container" in st["message"], st["message"]
        assert st["members"] == 2 and len(st["frozen"]) == 2, st  # the barrier was reached
        assert st.get("artifacts", []) == []  # nothing a restore could pick
        assert not [c for c in kube.list("checkpoints", ns) if (c.get("status") or {}).get("phase") == "Completed"]
        assert not image0.exists()  # pod 0's image is deleted again
        assert not [n for n in os.listdir(dirs[0] / CHECKPOINTS) if not n.startswith(".")]

        broken.unlink()
        broken.with_name("checkpoints.aside").rename(broken)
        broken = None
        kube.wait_phase(ns, "pair", "Succeeded", timeout=240)
        assert {p.metadata.labels["ckq.io/attempt"] for p in kube.pods(ns, "pair")} == {"1"}  # never restarted
        for i, p in pods.items():
            assert _final_of(kube, ns, p.metadata.name) == (nonces[i], expected_digest(nonces[i]))
    finally:
        for pid in list(paused):
            resume(pid)
        if broken is not None and broken.is_file():
            broken.unlink()
            broken.with_name("checkpoints.aside").rename(broken)
        kube.delete("clusterqueues", cq)

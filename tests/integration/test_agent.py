"""`ckq agent` as a process against the real control plane (a kwok node stands for the agent's node):
its pods' ckq-run is a scripted control socket (runtime/control.py's server), so no CRIU or root is
needed. The agent is killed in the middle of a dump and started again: the dump is recorded once.
A failed dump fails the Checkpoint with the pod, the container and ckq-run's reason."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from queue_controller import wire
from queue_controller.runtime.control import SOCKET_NAME, Server
from queue_controller.store import FilesystemStore
from tests.plugins.controller import Kube
from tests.unit.store_helpers import fake_checkpoint

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
NODE = "h100-0"


class ScriptedRun:
    """A ckq-run control socket whose dumps take `delay` seconds (or fail with `error`)."""

    def __init__(self, d: Path, delay: float = 0.0, error: str | None = None) -> None:
        self.dir, self.delay, self.error = d, delay, error
        self.asked = threading.Event()
        self.dumps: list[str] = []
        self.frozen: list[str] = []
        self.released: list[str] = []
        self.running = True
        d.mkdir(parents=True, exist_ok=True)
        self.server = Server(d / SOCKET_NAME, self.handle)
        self.server.start()

    def handle(self, req: dict[str, Any]) -> dict[str, Any]:
        if req.get("op") == "status":
            return {"ok": True, "pid": 1, "mode": "CRIU", "running": self.running, "checkpoints": []}
        if req.get("op") == "freeze":  # the gang barrier (runtime/freezer.py): always granted here
            self.frozen.append(str(req.get("token")))
            return {"ok": True, "frozenAt": time.time(), "stopped": True, "dumped": None}
        if req.get("op") in ("thaw", "stop"):
            self.released.append(str(req.get("op")))
            return {"ok": True, "thawed": True, "stopped": True}
        self.asked.set()
        if self.error:
            return {"ok": False, "error": self.error}
        ckpt_id = time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + f"-{len(self.dumps):06x}"
        building = self.dir / "checkpoints" / f".tmp-{ckpt_id}"  # as ckq-run builds a dump
        building.mkdir(parents=True)
        time.sleep(self.delay)
        building.rmdir()
        fake_checkpoint(self.dir, ckpt_id, created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                        leave_running=bool(req.get("leaveRunning")))
        self.dumps.append(ckpt_id)
        self.running = bool(req.get("leaveRunning"))
        return {"ok": True, "id": ckpt_id, "manifest": {"id": ckpt_id}}

    def close(self) -> None:
        self.server.close()


class AgentProcess:
    def __init__(self, kubeconfig: str, store: Path, log: Path) -> None:
        self.cmd = [sys.executable, "-m", "queue_controller.cli", "agent", "--node", NODE, "--kubeconfig",
                    kubeconfig, "--store", str(store), "--resync", "1"]
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        start = len(self.text())
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(self.cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
                                         env={**os.environ, "PYTHONUNBUFFERED": "1"})
        deadline = time.time() + 30
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"agent exited at start:\n{self.text()}")
            if "ckq agent started" in self.text()[start:]:
                return
            time.sleep(0.1)
        raise AssertionError(f"agent did not start:\n{self.text()}")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=30)

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@pytest.fixture
def agent(kube: Kube, tmp_path: Path) -> Iterator[AgentProcess]:
    (tmp_path / "store").mkdir()
    a = AgentProcess(kube.kubeconfig, tmp_path / "store", tmp_path / "agent.log")
    yield a
    a.kill(signal.SIGTERM)
    print(f"--- agent log ---\n{a.text()}")


def uri_root(kube: Kube, store: Path) -> str:
    try:
        cm = kube.core.read_namespaced_config_map(wire.CONFIG_MAP, wire.CONFIG_NAMESPACE)
    except ApiException as e:
        if e.status == 404:
            return str(store)
        raise
    return (cm.data or {}).get(wire.CONFIG_STORE_HOST_PATH) or str(store)


def managed_pod(kube: Kube, ns: str, job: str, containers: tuple[str, ...]) -> None:
    labels = {wire.JOB_LABEL: job, wire.POD_SET_LABEL: "worker", wire.POD_INDEX_LABEL: "0",
              wire.ATTEMPT_LABEL: "1", wire.MANAGED_LABEL: "true"}
    body = client.V1Pod(
        metadata=client.V1ObjectMeta(name=wire.pod_name(job, 1, "worker", 0), labels=labels),
        spec=client.V1PodSpec(node_name=NODE, tolerations=[client.V1Toleration(operator="Exists")],
                              containers=[client.V1Container(name=c, image="x") for c in containers]))
    kube.core.create_namespaced_pod(ns, body)
    kube.wait("pod Running", lambda: kube.core.read_namespaced_pod(wire.pod_name(job, 1, "worker", 0), ns)
              .status.phase == "Running", timeout=30)


def create_checkpoint(kube: Kube, ns: str, job: str, name: str, leave: bool) -> None:
    kube.create("checkpoints", {"apiVersion": "ckq.io/v1alpha1", "kind": "Checkpoint",
                                "metadata": {"name": name, "labels": {wire.JOB_LABEL: job}},
                                "spec": {"jobName": job, "reason": "Preemption", "leaveRunning": leave}}, ns)


def status(kube: Kube, ns: str, name: str) -> dict[str, Any]:
    return dict(kube.get("checkpoints", name, ns).get("status") or {})


def test_agent_killed_mid_dump_records_it_once(kube: Kube, namespace: str, agent: AgentProcess,
                                              tmp_path: Path) -> None:
    store_dir = tmp_path / "store"
    store = FilesystemStore(store_dir, uri_root=uri_root(kube, store_dir))
    managed_pod(kube, namespace, "train", ("main",))
    run = ScriptedRun(store.dir_for(namespace, "train", "worker", 0, "main"), delay=3.0)
    try:
        agent.start()
        create_checkpoint(kube, namespace, "train", "train-1-preemption-1", leave=False)
        assert run.asked.wait(30), agent.text()
        agent.kill()  # while ckq-run is still dumping (perhaps before its Running write landed)
        agent.start()
        st = kube.wait("the artifact", lambda: status(kube, namespace, "train-1-preemption-1").get("artifacts")
                       and status(kube, namespace, "train-1-preemption-1"), timeout=30)
        assert run.dumps and len(run.dumps) == 1
        [art] = st["artifacts"]
        assert art["uri"] == store.uri_for(namespace, "train", "worker", 0, "main", run.dumps[0])
        assert (art["podSet"], art["index"], art["container"], art["node"]) == ("worker", 0, "main", NODE)
        manifest = store.verify(art["uri"], namespace, sha256=art["sha256"])
        assert art["sizeBytes"] == manifest.sizeBytes == st["sizeBytes"]
        assert st["phase"] == "Running" and st["startTime"]
        assert st["restoreConstraints"]["nodeLabels"]["kubernetes.io/arch"] == "amd64"
        assert "nvidia.com/gpu.product" not in st["restoreConstraints"]["nodeLabels"]  # not a GPU pod
        assert "found after a restart" in agent.text()
        time.sleep(2)  # resyncs: nothing more happens
        assert len(run.dumps) == 1 and status(kube, namespace, "train-1-preemption-1") == st
    finally:
        run.close()


def test_a_failed_dump_fails_the_checkpoint(kube: Kube, namespace: str, agent: AgentProcess, tmp_path: Path) -> None:
    store = FilesystemStore(tmp_path / "store")
    managed_pod(kube, namespace, "broken", ("main",))
    run = ScriptedRun(store.dir_for(namespace, "broken", "worker", 0, "main"),
                      error="criu dump failed (exit 1): Error (criu/sk-unix.c:670): unix: Can't dump socket")
    try:
        agent.start()
        create_checkpoint(kube, namespace, "broken", "broken-1-preemption-1", leave=True)
        st = kube.wait("Failed", lambda: (s := status(kube, namespace, "broken-1-preemption-1")).get("phase")
                       == "Failed" and s, timeout=30)
        assert st["message"] == (f"pod {namespace}/broken-1-worker-0 container main on node {NODE}: ckq-run: criu "
                                 "dump failed (exit 1): Error (criu/sk-unix.c:670): unix: Can't dump socket")
        assert not st.get("completionTime") and not st.get("artifacts")
    finally:
        run.close()

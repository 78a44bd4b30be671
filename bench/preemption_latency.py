"""Preemption by CRIU checkpoint on a real node, end to end, against the bare ckq-run dump.

A victim job holds `--state-mib` MiB of resident, distinct memory in one pod on a real node (CRIU mode,
injected runtime, node agent). A higher-priority job then needs the victim's CPUs. Measured by this
client from watch events (each figure is from the moment the victim's phase turned Checkpointing,
i.e. the engine's preempt decision as the API shows it):

  (a) resources free — the victim's pod is gone (its CPUs can be bound again),
  (b) preemptor Running,
  (c) victim Running again, after the preemptor finished and released the room,
plus the Checkpoint's sizeBytes and the agent's measured dump seconds.

Side by side, in the same run: the bare `ckq-run checkpoint` (stop, not leave-running) of the same
workload as a host process in a fresh PID namespace — what the control plane adds is (a) minus it.

    python bench/preemption_latency.py [--state-mib 1024] [--repeat 1]

Prints a table and, as its last line, one JSON object. Goal (issue 10): (a) <= 1.5 x the bare dump.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kubernetes import watch  # noqa: E402

from queue_controller import devcluster as dc  # noqa: E402
from tests.plugins.controller import ControllerProcess, Kube, local_queue  # noqa: E402

CLUSTER = "ckq-bench-preempt"
CKQ_RUN = str(Path(sys.executable).with_name("ckq-run"))
NS = "bench"

HOLDER = """
import mmap, os, sys, time
size = int(sys.argv[1])
mem = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
stamp = os.urandom(64)
for off in range(0, size, 4096):  # every page resident and distinct
    mem[off:off + 8] = off.to_bytes(8, "little")
    mem[off + 8:off + 72] = stamp
print("ready", flush=True)
while True:
    time.sleep(0.1)
"""


def bare_dump(state_mib: int, work: Path) -> dict[str, float]:
    """ckq-run on the host, in a fresh PID + mount namespace: start, wait until resident, dump (stop)."""
    ckq = work / "bare"
    script = work / "holder.py"
    script.write_text(HOLDER)
    log = work / "bare.log"
    with log.open("wb") as out:
        pod = subprocess.Popen(["unshare", "--pid", "--fork", "--mount-proc", "--mount", CKQ_RUN, "--dir", str(ckq),
                                "--", sys.executable, str(script), str(state_mib << 20)],
                               stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while "ready" not in log.read_text(errors="replace"):
            if pod.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the bare workload did not start: {log.read_text(errors='replace')[-800:]}")
            time.sleep(0.05)
        t0 = time.monotonic()
        res = subprocess.run([CKQ_RUN, "checkpoint", "--dir", str(ckq), "--json"], capture_output=True, text=True)
        wall = time.monotonic() - t0
        if res.returncode != 0:
            raise SystemExit(f"bare checkpoint failed: {res.stderr}")
        manifest = json.loads(res.stdout)
        pod.wait(timeout=60)
        return {"bare_dump_s": round(wall, 2), "bare_size_bytes": int(manifest["sizeBytes"])}
    finally:
        if pod.poll() is None:
            os.killpg(pod.pid, signal.SIGKILL)
            pod.wait()
        shutil.rmtree(ckq, ignore_errors=True)


def job(name: str, cpu: str, priority: int, command: list[str], memory: str) -> dict[str, Any]:
    return {"apiVersion": "ckq.io/v1alpha1", "kind": "CheckpointableJob", "metadata": {"name": name},
            "spec": {"queueName": "main", "priority": priority, "checkpoint": {"mode": "CRIU"},
                     "podSets": [{"name": "w", "count": 1, "template": {"spec": {"containers": [{
                         "name": "main", "image": dc.PYTHON_IMAGE, "imagePullPolicy": "IfNotPresent",
                         "command": command, "resources": {"requests": {"cpu": cpu, "memory": memory}}}]}}}]}}


class Watcher:
    """Records the first time each (job, phase) and each pod deletion is seen on a watch."""

    def __init__(self, kube: Kube) -> None:
        self.kube = kube
        self.seen: dict[tuple[str, str], float] = {}
        self.stop = threading.Event()
        threading.Thread(target=self._jobs, daemon=True).start()
        threading.Thread(target=self._pods, daemon=True).start()

    def _jobs(self) -> None:
        while not self.stop.is_set():
            w = watch.Watch()
            for ev in w.stream(self.kube.custom.list_namespaced_custom_object, "ckq.io", "v1alpha1", NS,
                               "checkpointablejobs", timeout_seconds=30):
                obj = ev["object"]
                phase = (obj.get("status") or {}).get("phase") or ""
                key = (obj["metadata"]["name"], phase)
                if key in self.seen and phase == "Running":
                    key = (obj["metadata"]["name"], "Running-again") if self.seen.get(
                        (obj["metadata"]["name"], "Suspended")) else key
                self.seen.setdefault(key, time.time())

    def _pods(self) -> None:
        while not self.stop.is_set():
            w = watch.Watch()
            for ev in w.stream(self.kube.core.list_namespaced_pod, NS, timeout_seconds=30):
                if ev["type"] == "DELETED":
                    self.seen.setdefault((ev["object"].metadata.labels.get("ckq.io/job-name", "?"), "pod-gone"),
                                         time.time())

    def wait(self, key: tuple[str, str], timeout: float = 600) -> float:
        deadline = time.time() + timeout
        while key not in self.seen:
            if time.time() > deadline:
                raise SystemExit(f"timed out waiting for {key}; seen {sorted(self.seen)}")
            time.sleep(0.05)
        return self.seen[key]


def cluster_run(state: dc.ClusterState, state_mib: int, work: Path) -> dict[str, float]:
    kube = Kube(state.kubeconfig)
    body = {"apiVersion": "ckq.io/v1alpha1", "kind": "ResourceFlavor", "metadata": {"name": "real"},
            "spec": {"nodeLabels": {"ckq.io/node-kind": "real"}}}
    kube.create("resourceflavors", body)
    kube.core.create_namespace({"metadata": {"name": NS}})
    while True:
        try:
            kube.core.read_namespaced_service_account("default", NS)
            break
        except Exception:
            time.sleep(0.2)
    resources = [{"name": "cpu", "nominalQuota": "2"}, {"name": "memory", "nominalQuota": "16Gi"}]
    spec = {"namespaceSelector": {}, "preemption": {"withinClusterQueue": "LowerPriority"},
            "resourceGroups": [{"coveredResources": ["cpu", "memory"],
                                "flavors": [{"name": "real", "resources": resources}]}]}
    kube.create("clusterqueues", {"apiVersion": "ckq.io/v1alpha1", "kind": "ClusterQueue",
                                  "metadata": {"name": "cq"}, "spec": spec})
    kube.create("localqueues", local_queue("main", NS, "cq"), NS)
    os.environ["KUBECONFIG"] = state.kubeconfig
    ctl = ControllerProcess(state.kubeconfig, "iass", work / "controller.log")
    ctl.start()
    watcher = Watcher(kube)
    try:
        memory = f"{state_mib * 2}Mi"
        kube.create("checkpointablejobs", job("victim", "1", 0, ["python3", "-u", "-c", HOLDER, str(state_mib << 20)],
                                              memory), NS)
        watcher.wait(("victim", "Running"))
        # Resident before the preemptor arrives: the holder prints "ready" once every page is written.
        pod = kube.wait("the victim's pod", lambda: (kube.pods(NS, "victim") or [None])[0], timeout=60)
        kube.wait("the victim's memory resident", lambda: "ready" in kube.core.read_namespaced_pod_log(
            pod.metadata.name, NS), timeout=300)
        kube.create("checkpointablejobs", job("preemptor", "2", 100, ["python3", "-c", "import time; time.sleep(5)"],
                                              "64Mi"), NS)
        decided = watcher.wait(("victim", "Checkpointing"))
        freed = watcher.wait(("victim", "pod-gone"))
        preemptor = watcher.wait(("preemptor", "Running"))
        back = watcher.wait(("victim", "Running-again"))
        st = kube.job(NS, "victim")["status"]
        ckpt = kube.get("checkpoints", st["lastCheckpoint"]["name"], NS)["status"]
        return {"a_resources_free_s": round(freed - decided, 2), "b_preemptor_running_s": round(preemptor - decided, 2),
                "c_victim_running_again_s": round(back - decided, 2), "checkpoint_size_bytes": int(ckpt["sizeBytes"]),
                "agent_dump_s": float(ckpt.get("durationSeconds") or 0)}
    finally:
        watcher.stop.set()
        ctl.stop()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--state-mib", type=int, default=1024)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ckq-bench-preempt-"))
    root = work / "state"
    result: dict[str, Any] = {"bench": "preemption_latency", "state_mib": args.state_mib}
    try:
        result.update(bare_dump(args.state_mib, work))
        state, _ = dc.up(CLUSTER, [], root=root, real_nodes=1, timeout=180)
        result.update(cluster_run(state, args.state_mib, work))
    finally:
        dc.down(CLUSTER, root=root)
        shutil.rmtree(work, ignore_errors=True)
    result["a_over_bare"] = round(result["a_resources_free_s"] / result["bare_dump_s"], 2)
    goals = {"a_over_bare": "<= 1.5"}
    print(f"{'figure':<28}{'value':>14}   goal")
    for key, value in result.items():
        if key != "bench":
            print(f"{key:<28}{value!s:>14}   {goals.get(key, '')}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()

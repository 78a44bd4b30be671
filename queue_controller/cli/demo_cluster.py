"""The live demo: a real local control plane with kwok GPU nodes and two real worker nodes, the
controller and its node agents, and a mix of jobs that are queued, preempted by checkpoint and resumed,
shown as a live table until the scenario is over.

Jobs on kwok nodes run no process: their checkpoints are simulated, and the table says so. The job on
the real nodes is a real process: a hash chain over memory that drew a random nonce at start. It is
checkpointed with CRIU when an urgent job needs its CPUs, and restored; the end of the demo shows the
nonce it printed before the checkpoint, the one it printed after the restore, and whether its final
digest is the one an uninterrupted run computes."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from queue_controller import devcluster as dc
from queue_controller.checkpoint.simulated import SIMULATED_RUNTIME_ANNOTATION

CLUSTER = "ckq-demo"
ROOT = Path(__file__).resolve().parents[2]
GROUP_VERSION = "ckq.io/v1alpha1"


def _queue(name: str, gpus: int) -> dict[str, Any]:
    return {"apiVersion": GROUP_VERSION, "kind": "ClusterQueue", "metadata": {"name": name}, "spec": {
        "cohort": "ml", "namespaceSelector": {},
        "preemption": {"withinClusterQueue": "LowerPriority", "reclaimWithinCohort": "Any"},
        "resourceGroups": [{"coveredResources": ["cpu", "memory", "nvidia.com/gpu"], "flavors": [{
            "name": "h100", "resources": [{"name": "cpu", "nominalQuota": "128"},
                                          {"name": "memory", "nominalQuota": "1Ti"},
                                          {"name": "nvidia.com/gpu", "nominalQuota": str(gpus)}]}]}]}}


def _job(name: str, queue: str, pods: int, gpus: int, seconds: int, priority: int, mode: str = "Simulated",
         interval: str | None = None, estimate: int | None = None) -> dict[str, Any]:
    ckpt: dict[str, Any] = {"mode": mode}
    if interval:
        ckpt["interval"] = interval
    spec: dict[str, Any] = {
        "queueName": queue, "priority": priority, "checkpoint": ckpt,
        "podSets": [{"name": "worker", "count": pods, "template": {"spec": {"containers": [{
            "name": "main", "image": "registry.example/ml/train:latest",
            "resources": {"requests": {"cpu": "8", "memory": "8Gi", "nvidia.com/gpu": str(gpus)}}}]}}}],
    }
    if estimate:
        spec["runtimeEstimateSeconds"] = estimate
    return {"apiVersion": GROUP_VERSION, "kind": "CheckpointableJob",
            "metadata": {"name": name, "namespace": "ml-team",
                         "annotations": {SIMULATED_RUNTIME_ANNOTATION: str(seconds)}},
            "spec": spec}


REAL_STEPS = 300
REAL_STEP_S = 0.15
# A real process whose state cannot be recomputed from its inputs: a random nonce, then a sha256 chain.
REAL_WORKLOAD = f"""
import hashlib, os, time
# One write per line: print() writes each part on its own, and a checkpoint taken between two of
# them splits the line across two containers' logs.
def say(*parts):
    os.write(1, (" ".join(map(str, parts)) + "\\n").encode())
nonce = os.urandom(16).hex()
say("nonce", nonce)
state = hashlib.sha256(nonce.encode()).digest()
ballast = bytearray(os.urandom(64 << 20))  # 64 MiB of memory the checkpoint has to carry
for step in range({REAL_STEPS}):
    state = hashlib.sha256(state + step.to_bytes(4, "big")).digest()
    time.sleep({REAL_STEP_S})
say("final", nonce, state.hex())
"""


def _chain_digest(nonce: str) -> str:
    state = hashlib.sha256(nonce.encode()).digest()
    for step in range(REAL_STEPS):
        state = hashlib.sha256(state + step.to_bytes(4, "big")).digest()
    return state.hex()


def _real_queue() -> dict[str, Any]:
    return {"apiVersion": GROUP_VERSION, "kind": "ClusterQueue", "metadata": {"name": "lab"}, "spec": {
        "namespaceSelector": {}, "preemption": {"withinClusterQueue": "LowerPriority"},
        "resourceGroups": [{"coveredResources": ["cpu", "memory"], "flavors": [{
            "name": "real", "resources": [{"name": "cpu", "nominalQuota": "2"},
                                          {"name": "memory", "nominalQuota": "4Gi"}]}]}]}}


def _real_job(name: str, cpu: str, priority: int, script: str) -> dict[str, Any]:
    return {"apiVersion": GROUP_VERSION, "kind": "CheckpointableJob",
            "metadata": {"name": name, "namespace": "ml-team"},
            "spec": {"queueName": "lab", "priority": priority, "checkpoint": {"mode": "CRIU"},
                     "podSets": [{"name": "worker", "count": 1, "template": {"spec": {"containers": [{
                         "name": "main", "image": "ckq.local/python:3", "imagePullPolicy": "IfNotPresent",
                         "command": ["python3", "-u", "-c", script],
                         "resources": {"requests": {"cpu": cpu, "memory": "256Mi"}}}]}}}]}}


REAL_SCENARIO: list[tuple[float, dict[str, Any]]] = [
    (0, _real_job("hash-chain", "1", 0, REAL_WORKLOAD)),
    (20, _real_job("urgent-check", "2", 100, "import time; print('urgent work'); time.sleep(10)")),
]

# (seconds after start, job): a long training run borrows the idle half of the cohort; an urgent
# fine-tune reclaims it, so the training run is checkpointed and later resumed where it stopped.
SCENARIO: list[tuple[float, dict[str, Any]]] = [
    (0, _job("llm-pretrain", "research", 3, 8, 60, 0, interval="20s", estimate=60)),
    (0, _job("eval-sweep", "research", 1, 2, 25, 10, mode="None", estimate=25)),
    (15, _job("urgent-finetune", "production", 2, 8, 20, 100, estimate=20)),
    (18, _job("notebook", "production", 1, 1, 15, 50, estimate=15)),
]


def _rows(kubectl: Any) -> list[dict[str, Any]]:
    data = kubectl("get", "cjob", "-n", "ml-team", "-o", "json")
    return sorted(data.get("items", []), key=lambda j: j["metadata"]["creationTimestamp"] + j["metadata"]["name"])


def _where(j: dict[str, Any]) -> str:
    if (j["spec"].get("checkpoint") or {}).get("mode") == "Simulated" or j["spec"]["queueName"] != "lab":
        return "kwok (simulated)"
    return "[bold]real (CRIU)[/]"


def _last_ckpt(j: dict[str, Any], ckpts: dict[str, dict[str, Any]]) -> str:
    name = ((j.get("status") or {}).get("lastCheckpoint") or {}).get("name")
    st = (ckpts.get(name or "") or {}).get("status") or {}
    if not st.get("sizeBytes"):
        return ""
    return f"{st['sizeBytes'] / 2**20:.0f} MiB, {float(st.get('durationSeconds') or 0):.1f} s"


def _table(jobs: list[dict[str, Any]], elapsed: float, ckpts: dict[str, dict[str, Any]] | None = None) -> Table:
    t = Table(title=f"ckq demo — t = {elapsed:5.0f} s", title_justify="left")
    for col in ("job", "runs on", "queue", "prio", "phase", "progress", "ckpts", "last ckpt", "preempted", "lost",
                "message"):
        t.add_column(col, no_wrap=col != "message")
    colours = {"Running": "green", "Checkpointing": "yellow", "Suspended": "yellow", "Restoring": "cyan",
               "Succeeded": "bold green", "Failed": "red", "Pending": "dim", "Admitted": "cyan"}
    for j in jobs:
        st = j.get("status") or {}
        phase = st.get("phase") or "Pending"
        run = float(st.get("runTimeSeconds") or 0)
        if phase == "Running" and st.get("runStartTime"):
            from queue_controller.wire import parse_time

            run += max(time.time() - (parse_time(st["runStartTime"]) or time.time()), 0)
        need = (j["metadata"].get("annotations") or {}).get(SIMULATED_RUNTIME_ANNOTATION, "")
        t.add_row(j["metadata"]["name"], _where(j), j["spec"]["queueName"], str(j["spec"].get("priority", "")),
                  f"[{colours.get(phase, 'white')}]{phase}[/]", f"{run:.0f}/{need}s" if need else f"{run:.0f}s",
                  str(st.get("checkpoints", 0)), _last_ckpt(j, ckpts or {}), str(st.get("preemptions", 0)),
                  f"{float(st.get('lostRunTimeSeconds') or 0):.0f}s", (st.get("message") or "")[:70])
    return t


def _log_match(kubectl: Any, job: str, attempt: str | None, pattern: str) -> str | None:
    """The first match of `pattern` in the log of the job's pod of `attempt` (None: the newest pod)."""
    import re

    pods = kubectl("get", "pods", "-n", "ml-team", "-l", f"ckq.io/job-name={job}", "-o", "json")["items"]
    if attempt is not None:
        pods = [p for p in pods if p["metadata"]["labels"].get("ckq.io/attempt") == attempt]
    pods.sort(key=lambda p: int(p["metadata"]["labels"].get("ckq.io/attempt", "0")))
    if not pods:
        return None
    try:
        log = kubectl("logs", "-n", "ml-team", pods[-1]["metadata"]["name"])
    except subprocess.CalledProcessError:
        return None
    match = re.search(pattern, log, re.M)
    return " ".join(match.groups()) if match else None


def _report_real(console: Console, kubectl: Any, nonce_before: str | None) -> None:
    final = _log_match(kubectl, "hash-chain", None, r"^final ([0-9a-f]{32}) ([0-9a-f]{64})$")
    if final is None or nonce_before is None:
        console.print("[red]hash-chain (real nodes): no final line or no nonce seen[/]; see `kubectl logs`.")
        return
    nonce_after, digest = final.split()
    same = nonce_after == nonce_before
    right = digest == _chain_digest(nonce_after)
    console.print(f"hash-chain ran on a real node and was checkpointed with CRIU: nonce drawn at start "
                  f"[bold]{nonce_before[:12]}…[/], held after the restore [bold]{nonce_after[:12]}…[/] "
                  f"({'the same process memory' if same else 'DIFFERENT: it started over'}); final digest "
                  f"{'equals' if right else 'DIFFERS from'} an uninterrupted run's.")


def run_cluster_demo(policy: str, keep: bool, timeout_s: float) -> None:
    console = Console(width=None if sys.stdout.isatty() else 150)
    bin_dir = dc.cached_bin_dir()
    if bin_dir is None:
        console.print("Building Kubernetes binaries from Go modules (once; cached in ~/.cache/ckq)...")
        bin_dir = dc.ensure_binaries()
    groups = [dc.NodeGroup(name="h100", count=4, gpus=8, product="NVIDIA-H100-80GB-HBM3", cpu="64", memory="512Gi")]
    from queue_controller.devcluster.realnode import preflight

    missing = preflight()
    real_nodes = 0 if missing else 2
    if missing:
        console.print("[yellow]Real nodes are not available on this machine[/] (" + "; ".join(missing) + "): "
                      "only the kwok part of the demo runs, and all its checkpoints are simulated.")
    console.print(f"Starting a local control plane [bold]{CLUSTER}[/] with 4 kwok nodes x 8 H100"
                  + (f" and {real_nodes} real nodes (kubelet + containerd + runc) ..." if real_nodes else " ..."))
    state, _ = dc.up(CLUSTER, groups, real_nodes=real_nodes, timeout=180, say=lambda line: console.print(f"  {line}"))
    env = {**os.environ, "KUBECONFIG": state.kubeconfig}
    kubectl_bin = str(Path(state.bin_dir) / "kubectl")

    def kubectl(*args: str, stdin: str | None = None) -> Any:
        import json

        out = subprocess.run([kubectl_bin, *args], input=stdin, capture_output=True, text=True, env=env, check=True)
        return json.loads(out.stdout) if "-o" in args and "json" in args else out.stdout

    controller = None
    log = Path(tempfile.gettempdir()) / "ckq-demo-controller.log"
    try:
        import yaml

        kubectl("apply", "-f", str(ROOT / "crds"))
        kubectl("wait", "--for", "condition=established", "crd", "--all", "--timeout=60s")
        objs = [{"apiVersion": GROUP_VERSION, "kind": "ResourceFlavor", "metadata": {"name": "h100"},
                 "spec": {"nodeLabels": {"ckq.io/flavor": "h100"}}},
                {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "ml-team"}},
                _queue("research", 16), _queue("production", 16)]
        queues = ["research", "production"]
        scenario = list(SCENARIO)
        if real_nodes:
            objs += [{"apiVersion": GROUP_VERSION, "kind": "ResourceFlavor", "metadata": {"name": "real"},
                      "spec": {"nodeLabels": {"ckq.io/node-kind": "real"}}}, _real_queue()]
            queues.append("lab")
            scenario = sorted(scenario + REAL_SCENARIO, key=lambda item: item[0])
        objs += [{"apiVersion": GROUP_VERSION, "kind": "LocalQueue", "metadata": {"name": q, "namespace": "ml-team"},
                  "spec": {"clusterQueue": q}} for q in queues]
        kubectl("delete", "cjob", "--all", "-n", "ml-team", "--ignore-not-found", "--wait=true")
        kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all(objs))
        console.print(f"Starting the controller (policy [cyan]{policy}[/]); log: {log}")
        controller = subprocess.Popen(
            [sys.executable, "-m", "queue_controller.cli", "controller", "--policy", policy, "--metrics-port", "0",
             "--liveness-port", "0", "--checkpoint-bandwidth-mib", "2048"],
            stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)
        start = time.time()
        pending = scenario
        nonce_before: str | None = None
        with Live(console=console, refresh_per_second=2) as live:
            while True:
                elapsed = time.time() - start
                while pending and pending[0][0] <= elapsed:
                    kubectl("apply", "-f", "-", stdin=yaml.safe_dump(pending.pop(0)[1]))
                if controller.poll() is not None:
                    raise RuntimeError(f"the controller exited; see {log}")
                jobs = _rows(kubectl)
                items = kubectl("get", "ckpt", "-n", "ml-team", "-o", "json")["items"]
                ckpts = {c["metadata"]["name"]: c for c in items}
                if real_nodes and nonce_before is None:
                    nonce_before = _log_match(kubectl, "hash-chain", "1", r"^nonce ([0-9a-f]{32})$")
                live.update(Group(_table(jobs, elapsed, ckpts)))
                done = all((j.get("status") or {}).get("phase") in ("Succeeded", "Failed") for j in jobs)
                if (not pending and jobs and done) or elapsed > timeout_s:
                    break
                time.sleep(1)
        jobs = _rows(kubectl)
        console.print()
        lost = sum(float((j.get("status") or {}).get("lostRunTimeSeconds") or 0) for j in jobs)
        for j in jobs:
            st = j.get("status") or {}
            need = (j["metadata"].get("annotations") or {}).get(SIMULATED_RUNTIME_ANNOTATION)
            needed = f"needed {need:>3}s (simulated)" if need else "real process        "
            console.print(f"  {j['metadata']['name']:16} {st.get('phase', '?'):10} {needed}, ran "
                          f"{float(st.get('runTimeSeconds') or 0):5.1f}s, preempted {st.get('preemptions', 0)}x, "
                          f"lost {float(st.get('lostRunTimeSeconds') or 0):.0f}s")
        if real_nodes:
            _report_real(console, kubectl, nonce_before)
        console.print(f"Run time lost to preemption: [bold]{lost:.0f}s[/]. " + (
            "Preempted jobs were checkpointed and resumed where they stopped; compare with "
            "[bold]hack/demo.sh --policy kueue[/], where preemption kills." if lost == 0 else
            "Preempted jobs were killed and started over; compare with [bold]hack/demo.sh --policy iass[/]."))
    finally:
        if controller is not None and controller.poll() is None:
            controller.terminate()
            controller.wait(timeout=30)
        if keep:
            console.print(f"Cluster kept: export KUBECONFIG={state.kubeconfig}; stop it with "
                          f"`ckq dev down --name {CLUSTER}`")
        else:
            dc.down(CLUSTER)
            console.print("Cluster stopped.")

"""Controller throughput on the real local control plane.

2,000 CheckpointableJobs into 6 queues on 100 kwok nodes: admissions per second, creation→Admitted
latency (p50/p99, measured by this client: create call returned → admission seen on a watch), API
requests the controller sent per admission, and the controller's peak RSS. Every job fits at once
(1 CPU each, 6,400 CPUs in all), so the figures measure the controller, not the queueing.

    python bench/controller_throughput.py [--jobs 2000] [--nodes 100] [--policy iass]

Prints a table and, as its last line, one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kubernetes import client, config, watch  # noqa: E402

from queue_controller import devcluster as dc  # noqa: E402
from tests.plugins.controller import Kube, free_port  # noqa: E402

G, V = "ckq.io", "v1alpha1"
QUEUES = 6
CLUSTER = "ckq-bench"


def queue(name: str) -> dict:
    return {"apiVersion": f"{G}/{V}", "kind": "ClusterQueue", "metadata": {"name": name}, "spec": {
        "cohort": "bench", "namespaceSelector": {},
        "resourceGroups": [{"coveredResources": ["cpu", "memory"], "flavors": [{"name": "cpu", "resources": [
            {"name": "cpu", "nominalQuota": "2000"}, {"name": "memory", "nominalQuota": "8Ti"}]}]}]}}


def job(i: int) -> dict:
    return {"apiVersion": f"{G}/{V}", "kind": "CheckpointableJob",
            "metadata": {"name": f"job-{i:05d}", "annotations": {"ckq.io/simulated-runtime-seconds": "3600"}},
            "spec": {"queueName": f"lq-{i % QUEUES}", "priority": i % 3, "checkpoint": {"mode": "Simulated"},
                     "podSets": [{"name": "main", "count": 1, "template": {"spec": {"containers": [{
                         "name": "c", "image": "x", "resources": {"requests": {"cpu": "1", "memory": "1Gi"}}}]}}}]}}


def metric(text: str, name: str) -> float:
    return sum(float(m.group(1)) for m in re.finditer(rf"^{name}(?:{{[^}}]*}})? ([0-9.e+]+)$", text, re.M))


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cluster_pids(name: str) -> dict[str, int]:
    """The bench cluster's component processes, found by their command lines (they name its state dir)."""
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if f"/{name}/" not in cmd:
            continue
        for comp in ("kube-apiserver", "etcd", "kube-scheduler", "kube-controller-manager", "kwok"):
            if cmd.split(" ", 1)[0].endswith("/" + comp):
                out[comp] = int(entry)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=2000)
    ap.add_argument("--nodes", type=int, default=100)
    ap.add_argument("--policy", default="iass")
    ap.add_argument("--keep", action="store_true", help="leave the cluster running")
    args = ap.parse_args()

    groups = [dc.NodeGroup(name="cpu", count=args.nodes, gpus=0, cpu="64", memory="256Gi")]
    t0 = time.time()
    state, _ = dc.up(CLUSTER, groups)
    up_s = time.time() - t0
    kube = Kube(state.kubeconfig)
    kube.apply_crds()
    ns = "bench"
    try:
        kube.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
    except client.ApiException as e:
        if e.status != 409:
            raise
    kube.create("resourceflavors", {"apiVersion": f"{G}/{V}", "kind": "ResourceFlavor", "metadata": {"name": "cpu"},
                                    "spec": {"nodeLabels": {"ckq.io/flavor": "cpu"}}})
    for q in range(QUEUES):
        kube.create("clusterqueues", queue(f"cq-{q}"))
        kube.create("localqueues", {"apiVersion": f"{G}/{V}", "kind": "LocalQueue",
                                    "metadata": {"name": f"lq-{q}", "namespace": ns},
                                    "spec": {"clusterQueue": f"cq-{q}"}}, ns)

    port = free_port()
    log = Path(tempfile.gettempdir()) / "ckq-bench-controller.log"
    ctl = subprocess.Popen([sys.executable, "-m", "queue_controller.cli", "controller", "--policy", args.policy,
                            "--metrics-port", str(port), "--liveness-port", "0"],
                           stdout=log.open("w"), stderr=subprocess.STDOUT, cwd=ROOT,
                           env={**os.environ, "KUBECONFIG": state.kubeconfig})
    while "ckq controller started" not in log.read_text(errors="replace"):
        if ctl.poll() is not None:
            raise SystemExit(f"controller exited:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)
    time.sleep(1.0)

    def scrape() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            return r.read().decode()

    req0 = metric(scrape(), "ckq_api_requests_total")
    pids = {"controller": ctl.pid, **cluster_pids(CLUSTER)}
    cpu0 = {k: cpu_seconds(p) for k, p in pids.items()}
    created: dict[str, float] = {}
    admitted: dict[str, float] = {}
    done = threading.Event()

    def watcher() -> None:
        api = client.CustomObjectsApi(config.new_client_from_config(config_file=state.kubeconfig))
        while not done.is_set():
            w = watch.Watch()
            try:
                for ev in w.stream(api.list_namespaced_custom_object, G, V, ns, "checkpointablejobs",
                                   timeout_seconds=5):
                    obj = ev["object"]
                    name = obj["metadata"]["name"]
                    if name not in admitted and (obj.get("status") or {}).get("admission"):
                        admitted[name] = time.time()
                        if len(admitted) >= args.jobs:
                            done.set()
                            w.stop()
                            return
            except client.ApiException:
                # e.g. 504 "Too large resource version" while the watch cache catches up: list again.
                time.sleep(0.2)

    th = threading.Thread(target=watcher, daemon=True)
    th.start()
    start = time.time()

    def make(i: int) -> None:
        body = job(i)
        kube.create("checkpointablejobs", body, ns)
        created[body["metadata"]["name"]] = time.time()

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(make, range(args.jobs)))
    create_s = time.time() - start
    done.wait(timeout=600)
    end = max(admitted.values()) if admitted else time.time()
    text = scrape()
    requests = metric(text, "ckq_api_requests_total") - req0
    with open(f"/proc/{ctl.pid}/status") as f:
        rss = next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024
    lat = sorted(admitted[k] - created[k] for k in admitted if k in created)
    cpu = {k: cpu_seconds(p) - cpu0[k] for k, p in pids.items()}
    ctl.terminate()
    ctl.wait(timeout=30)
    if not args.keep:
        dc.down(CLUSTER)

    n = len(admitted)
    rate = n / max(end - start, 1e-9)
    p50 = statistics.median(lat) if lat else float("nan")
    p99 = lat[min(len(lat) - 1, round(0.99 * (len(lat) - 1)))] if lat else float("nan")
    per = requests / max(n, 1)
    print(f"cluster: {args.nodes} kwok nodes (up in {up_s:.1f}s); {args.jobs} jobs into {QUEUES} queues, "
          f"created in {create_s:.1f}s by 16 client threads; policy {args.policy}")
    print(f"{'admitted':>10} {'adm/s':>8} {'p50 s':>8} {'p99 s':>8} {'req/adm':>8} {'RSS MiB':>8}")
    print(f"{n:>10} {rate:8.1f} {p50:8.2f} {p99:8.2f} {per:8.2f} {rss:8.0f}")
    wall = time.time() - start
    print(f"CPU seconds used over the {wall:.0f}s run (2 cores = {2 * wall:.0f} available): "
          + ", ".join(f"{k} {v:.0f}" for k, v in sorted(cpu.items(), key=lambda kv: -kv[1])))
    print(json.dumps({"jobs": args.jobs, "admitted": n, "admissions_per_s": round(rate, 1),
                      "p50_s": round(p50, 3), "p99_s": round(p99, 3), "api_requests_per_admission": round(per, 2),
                      "controller_peak_rss_mib": round(rss, 1),
                      "cpu_seconds": {k: round(v, 1) for k, v in cpu.items()}}))


if __name__ == "__main__":
    main()

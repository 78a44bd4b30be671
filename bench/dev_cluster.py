"""How fast the dev cluster starts real nodes, and how fast a pod starts on one.

- cold `up --real-nodes N`: the first up after the real-node caches (runtime, images) are removed,
  so it includes fetching containerd/runc/CNI and building the local images (the Kubernetes
  binaries stay cached: their cold build is minutes of Go, measured in docs/dev-cluster.md);
- warm `up --real-nodes N`: the same with every cache in place — what a developer waits for;
- pod create → Running on a real node, p50/p95 over `--pods` pods created one after another
  (each a `ckq.local/python:3` container; measured by this client from the create call returning
  to the Running phase seen on a watch), then all deleted;
- `down`: time to stop everything and clean the machine.

    python bench/dev_cluster.py [--real-nodes 2] [--pods 50] [--no-cold]

Prints a table and, as its last line, one JSON object. Goals (issue 9): warm up ≤ 30 s, p50 ≤ 2 s.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kubernetes import client, watch  # noqa: E402

from queue_controller import devcluster as dc  # noqa: E402
from queue_controller.devcluster import images, realnode  # noqa: E402
from queue_controller.devcluster.kube import new_api_client  # noqa: E402

CLUSTER = "ckq-bench-real"


def timed_up(root: Path, n: int) -> tuple[float, dc.ClusterState]:
    t0 = time.monotonic()
    state, _ = dc.up(CLUSTER, [], root=root, real_nodes=n, timeout=300)
    return time.monotonic() - t0, state


def timed_down(root: Path) -> float:
    t0 = time.monotonic()
    dc.down(CLUSTER, root=root)
    return time.monotonic() - t0


def pod_latencies(state: dc.ClusterState, count: int) -> list[float]:
    api = new_api_client(state.kubeconfig)
    core = client.CoreV1Api(api)
    ns = "bench"
    core.create_namespace({"metadata": {"name": ns}})
    while True:
        try:
            core.read_namespaced_service_account("default", ns)
            break
        except client.exceptions.ApiException:
            time.sleep(0.2)
    nodes = [n.name for n in state.real_nodes]
    out = []
    for i in range(count):
        name = f"p{i:03d}"
        body = {"metadata": {"name": name}, "spec": {
            "nodeName": nodes[i % len(nodes)], "restartPolicy": "Never", "terminationGracePeriodSeconds": 0,
            "containers": [{"name": "c", "image": dc.PYTHON_IMAGE, "imagePullPolicy": "IfNotPresent",
                            "command": ["sleep", "3600"]}]}}
        w = watch.Watch()
        t0 = time.monotonic()
        core.create_namespaced_pod(ns, body)
        for ev in w.stream(core.list_namespaced_pod, ns, field_selector=f"metadata.name={name}", timeout_seconds=60):
            if ev["object"].status.phase == "Running":
                out.append(time.monotonic() - t0)
                w.stop()
        if len(out) != i + 1:
            raise SystemExit(f"pod {name} did not reach Running within 60 s")
    core.delete_collection_namespaced_pod(ns, grace_period_seconds=0)
    api.close()
    return out


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--real-nodes", type=int, default=2)
    ap.add_argument("--pods", type=int, default=50)
    ap.add_argument("--no-cold", action="store_true", help="skip the cold run (keeps the caches)")
    args = ap.parse_args()
    result: dict[str, object] = {"bench": "dev_cluster", "real_nodes": args.real_nodes, "pods": args.pods}
    root = Path(tempfile.mkdtemp(prefix="ckq-bench-real-"))
    try:
        if not args.no_cold:
            shutil.rmtree(realnode.runtime_dir(), ignore_errors=True)
            shutil.rmtree(images.images_dir(), ignore_errors=True)
            t0 = time.monotonic()
            dc.ensure_runtime()
            dc.local_images()
            result["cold_provision_s"] = round(time.monotonic() - t0, 1)
            cold, _ = timed_up(root, args.real_nodes)
            result["cold_up_s"] = round(cold + float(result["cold_provision_s"]), 1)  # type: ignore[arg-type]
            result["cold_down_s"] = round(timed_down(root), 1)
        warm, state = timed_up(root, args.real_nodes)
        result["warm_up_s"] = round(warm, 1)
        lat = pod_latencies(state, args.pods)
        result["pod_running_p50_s"] = round(pct(lat, 0.5), 2)
        result["pod_running_p95_s"] = round(pct(lat, 0.95), 2)
        result["pod_running_max_s"] = round(max(lat), 2)
        result["pod_running_mean_s"] = round(statistics.mean(lat), 2)
        result["down_s"] = round(timed_down(root), 1)
    finally:
        dc.down(CLUSTER, root=root)
        shutil.rmtree(root, ignore_errors=True)
    print(f"{'figure':<28}{'value':>10}   goal")
    goals = {"warm_up_s": "<= 30 s", "pod_running_p50_s": "<= 2 s"}
    for key, value in result.items():
        if key != "bench":
            print(f"{key:<28}{value!s:>10}   {goals.get(key, '')}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()

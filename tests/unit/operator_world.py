"""A small world for the operator unit tier: a fake API server with one namespace, kwok-like nodes, a
flavor, a ClusterQueue and its LocalQueue, and a Controller driven cycle by cycle on a fake clock."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from queue_controller.checkpoint.base import CheckpointBackend
from queue_controller.checkpoint.simulated import SimulatedBackend
from queue_controller.engine import Decisions, Policy
from queue_controller.operator.cache import Cache
from queue_controller.operator.controller import Controller
from queue_controller.policies import load_policy
from tests.unit.fake_kube import FakeApiServer, FakeClock, FakeKube

GPU = "nvidia.com/gpu"
GIB = 2**30


def node_body(name: str, gpus: int = 8, ready: bool = True, kind: str | None = None) -> dict[str, Any]:
    """A node; `kind` "kwok" carries kwok's annotation, "real" our label and a containerd version (None:
    neither, as on a cluster that knows nothing of ckq: real)."""
    body: dict[str, Any] = {
        "metadata": {"name": name, "labels": {"ckq.io/flavor": "h100", "kubernetes.io/arch": "amd64",
                                              "nvidia.com/gpu.product": "NVIDIA-H100"}},
        "spec": {},
        "status": {"allocatable": {"cpu": "64", "memory": "512Gi", GPU: str(gpus), "pods": "110"},
                   "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}
    if kind == "kwok":
        body["metadata"]["annotations"] = {"kwok.x-k8s.io/node": "fake"}
        body["metadata"]["labels"]["ckq.io/node-kind"] = "kwok"
    elif kind == "real":
        body["metadata"]["labels"]["ckq.io/node-kind"] = "real"
        body["status"]["nodeInfo"] = {"containerRuntimeVersion": "containerd://1.6.20"}
    return body


# The ConfigMap of a cluster with real nodes (what `ckq dev up --real-nodes` writes).
CONFIG = {"runtimeImage": "ckq.local/runtime:0.1.0", "storeHostPath": "/var/lib/ckq/store"}
TRAIN_COMMAND = ["python", "train.py"]


def job_body(name: str, priority: int = 0, gpus: int = 8, pods: int = 1, memory: str = "4Gi", runtime_s: int = 100,
             mode: str = "Simulated", checkpoint: Mapping[str, Any] | None = None,
             container: Mapping[str, Any] | None = None, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "ckq.io/v1alpha1", "kind": "CheckpointableJob",
        "metadata": {"name": name, "annotations": {"ckq.io/simulated-runtime-seconds": str(runtime_s)}},
        "spec": {
            "queueName": "main", "priority": priority, "checkpoint": {"mode": mode, **(checkpoint or {})},
            "podSets": [{"name": "worker", "count": pods, "template": {"spec": {"containers": [{
                "name": "train", "image": "registry.example/train:1",
                "resources": {"requests": {"cpu": "4", "memory": memory, GPU: str(gpus)}}, **(container or {})}]}}}],
            **spec,
        },
    }


@dataclass
class World:
    clock: FakeClock
    server: FakeApiServer
    kube: FakeKube
    cache: Cache
    controller: Controller

    async def cycle(self, advance: float = 0.0) -> Decisions:
        """Let `advance` seconds pass, deliver the watch events, run one scheduling cycle, and let the
        Events it posts in the background land."""
        self.clock.advance(advance)
        self.server.deliver(self.cache)
        decisions = await self.controller.cycle()
        while others := [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]:
            await asyncio.gather(*others)
        self.server.deliver(self.cache)
        return decisions

    def submit(self, name: str, **kw: Any) -> None:
        self.server.create("checkpointablejobs", job_body(name, **kw), "team")

    def phase(self, job: str) -> str | None:
        return self.server.status(job).get("phase")

    def configure(self, data: Mapping[str, str] | None) -> None:
        """Create, replace or (None) delete the cluster's ConfigMap ckq-system/ckq-config."""
        if ("configmaps", "ckq-system", "ckq-config") in self.server.objects:
            self.server.delete("configmaps", "ckq-system", "ckq-config")
        if data is not None:
            self.server.create("configmaps", {"metadata": {"name": "ckq-config"}, "data": dict(data)}, "ckq-system")


def make_world(policy: str | Policy = "iass", nodes: int = 1, gpus: int = 8, quota_gpus: int = 8,
               backend: CheckpointBackend | None = None, kind: str | None = None, kwok_nodes: int = 0,
               config: Mapping[str, str] | None = None, **cq_spec: Any) -> World:
    """`nodes` nodes n0.. of `kind`, and `kwok_nodes` kwok nodes k0..; `config`: the cluster's ConfigMap."""
    clock = FakeClock()
    server = FakeApiServer(clock)
    server.create("namespaces", {"metadata": {"name": "team"}})
    for i in range(nodes):
        server.create("nodes", node_body(f"n{i}", gpus, kind=kind))
    for i in range(kwok_nodes):
        server.create("nodes", node_body(f"k{i}", gpus, kind="kwok"))
    if config is not None:
        server.create("configmaps", {"metadata": {"name": "ckq-config"}, "data": dict(config)}, "ckq-system")
    server.create("resourceflavors", {"metadata": {"name": "h100"}, "spec": {"nodeLabels": {"ckq.io/flavor": "h100"}}})
    server.create("clusterqueues", {"metadata": {"name": "cq"}, "spec": {
        "namespaceSelector": {},
        "resourceGroups": [{"coveredResources": ["cpu", "memory", GPU], "flavors": [{"name": "h100", "resources": [
            {"name": "cpu", "nominalQuota": "512"}, {"name": "memory", "nominalQuota": "4Ti"},
            {"name": GPU, "nominalQuota": str(quota_gpus)}]}]}],
        **cq_spec}})
    server.create("localqueues", {"metadata": {"name": "main"}, "spec": {"clusterQueue": "cq"}}, "team")
    kube = FakeKube(server)
    cache = Cache()
    pol = load_policy(policy) if isinstance(policy, str) else policy
    # 1 GiB/s and 1 s of overhead: a 4 GiB pod checkpoints in 5 s.
    be = backend if backend is not None else SimulatedBackend(bandwidth_bytes_per_s=GIB, fixed_overhead_s=1.0)
    controller = Controller(cache, kube, pol, {"Simulated": be}, clock=clock)
    return World(clock, server, kube, cache, controller)

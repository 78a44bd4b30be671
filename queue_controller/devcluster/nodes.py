"""Fake (kwok) nodes: node groups, their manifests, and simulated failures."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from queue_controller.devcluster.constants import (
    FLAVOR_LABEL,
    GPU_COUNT_LABEL,
    GPU_PRODUCT_LABEL,
    GPU_RESOURCE,
    KWOK_NODE_ANNOTATION,
    KWOK_NODE_ANNOTATION_VALUE,
    NODE_KIND_LABEL,
    NODE_READY_ANNOTATION,
)
from queue_controller.devcluster.errors import DevClusterError
from queue_controller.devcluster.kube import api_client

# Sanity bounds: a typo like --nodes 40000 should be refused, not take the machine down.
MAX_NODES = 500
MAX_GPUS_PER_NODE = 64
_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$")
_QUANTITY_RE = re.compile(r"^(\d+(\.\d+)?)(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")
_SUFFIX = {
    "": 1,
    "m": 1e-3,
    "k": 1e3,
    "M": 1e6,
    "G": 1e9,
    "T": 1e12,
    "P": 1e15,
    "E": 1e18,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
    "Ei": 2**60,
}
_ARCHES = ("amd64", "arm64")
_NODE_INFO_FILLED_BY_KWOK = (
    "bootID",
    "containerRuntimeVersion",
    "kernelVersion",
    "kubeProxyVersion",
    "kubeletVersion",
    "machineID",
    "osImage",
    "systemUUID",
)


def _quantity(value: str, what: str) -> float:
    match = _QUANTITY_RE.match(value.strip())
    if not match:
        raise ValueError(f"{what} '{value}' is not a Kubernetes quantity (e.g. 64, 500m, 512Gi)")
    amount = float(match.group(1)) * _SUFFIX[match.group(3) or ""]
    if amount <= 0:
        raise ValueError(f"{what} must be positive, got '{value}'")
    return amount


@dataclass(frozen=True)
class NodeGroup:
    """`count` identical fake nodes of one flavor."""

    name: str
    count: int = 4
    gpus: int = 8
    product: str = "NVIDIA-H100-80GB-HBM3"
    cpu: str = "64"
    memory: str = "512Gi"
    pods: int = 110
    arch: str = "amd64"
    labels: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not _NAME_RE.match(self.name):
            raise ValueError(
                f"node group name '{self.name}' must be lower-case letters, digits and '-' (at most 32), e.g. h100"
            )
        if not 1 <= self.count <= MAX_NODES:
            raise ValueError(f"node count {self.count} for group '{self.name}' must be 1..{MAX_NODES}")
        if not 0 <= self.gpus <= MAX_GPUS_PER_NODE:
            raise ValueError(f"GPUs per node {self.gpus} for group '{self.name}' must be 0..{MAX_GPUS_PER_NODE}")
        if not 1 <= self.pods <= 10000:
            raise ValueError(f"pods per node {self.pods} for group '{self.name}' must be 1..10000")
        if _quantity(self.cpu, "cpu") < 0.001:
            raise ValueError(f"cpu '{self.cpu}' is below one millicore")
        if _quantity(self.memory, "memory") < 2**20:
            raise ValueError(f"memory '{self.memory}' is below 1Mi (did you mean {self.memory}Gi?)")
        if self.arch not in _ARCHES:
            raise ValueError(f"arch '{self.arch}' must be one of {', '.join(_ARCHES)}")

    def node_names(self) -> list[str]:
        return [f"{self.name}-{i}" for i in range(self.count)]

    def describe(self) -> str:
        gpu = f"{self.gpus} x {GPU_RESOURCE} {self.product}" if self.gpus else "no GPUs"
        return f"{self.name}: {self.count} node(s), {gpu}, cpu {self.cpu}, memory {self.memory}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "count": self.count,
            "gpus": self.gpus,
            "product": self.product,
            "cpu": self.cpu,
            "memory": self.memory,
            "pods": self.pods,
            "arch": self.arch,
            "labels": dict(self.labels),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NodeGroup:
        return cls(**data)


_GROUP_KEYS = {"name", "count", "gpus", "product", "cpu", "memory", "pods", "arch"}


def parse_node_group(spec: str) -> NodeGroup:
    """Parse `name=h100,count=4,gpus=8,product=...,cpu=64,memory=512Gi[,label.KEY=VALUE...]`."""
    values: dict[str, Any] = {}
    labels: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        key, sep, value = part.partition("=")
        if not sep or not value:
            raise ValueError(f"'{part}' is not KEY=VALUE")
        if key.startswith("label."):
            labels[key.removeprefix("label.")] = value
        elif key in _GROUP_KEYS:
            values[key] = value
        else:
            raise ValueError(f"unknown key '{key}' (known: {', '.join(sorted(_GROUP_KEYS))}, label.KEY)")
    if "name" not in values:
        raise ValueError("a node group needs name=..., e.g. name=h100,count=4,gpus=8")
    for key in ("count", "gpus", "pods"):
        if key in values:
            try:
                values[key] = int(values[key])
            except ValueError:
                raise ValueError(f"{key} '{values[key]}' is not a whole number") from None
    return NodeGroup(labels=labels, **values)


def flavor_from_product(product: str, gpus: int) -> str:
    """A short flavor name for a GPU product label: NVIDIA-H100-80GB-HBM3 -> h100."""
    if gpus == 0:
        return "cpu"
    match = re.search(r"([A-Za-z]{1,3}\d{2,4})", product.removeprefix("NVIDIA-").removeprefix("Tesla-"))
    return match.group(1).lower() if match else "gpu"


def check_unique(groups: list[NodeGroup]) -> None:
    names = [g.name for g in groups]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"node group name(s) used twice: {', '.join(dupes)}")


def node_manifest(group: NodeGroup, index: int, group_index: int) -> dict[str, Any]:
    name = f"{group.name}-{index}"
    resources = {
        "cpu": group.cpu,
        "memory": group.memory,
        "pods": str(group.pods),
        "ephemeral-storage": "1Ti",
    }
    labels = {
        "type": "kwok",
        "kubernetes.io/arch": group.arch,
        "kubernetes.io/os": "linux",
        "kubernetes.io/hostname": name,
        "node.kubernetes.io/instance-type": group.name,
        FLAVOR_LABEL: group.name,
        NODE_KIND_LABEL: "kwok",
        **group.labels,
    }
    if group.gpus:
        resources[GPU_RESOURCE] = str(group.gpus)
        labels[GPU_PRODUCT_LABEL] = group.product
        labels[GPU_COUNT_LABEL] = str(group.gpus)
    # Distinct InternalIPs per node make hostIP-based tooling and logs readable.
    ip = f"10.{200 + group_index % 50}.{index // 250}.{index % 250 + 1}"
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": labels,
            "annotations": {
                KWOK_NODE_ANNOTATION: KWOK_NODE_ANNOTATION_VALUE,
                "node.alpha.kubernetes.io/ttl": "0",
            },
        },
        "spec": {},
        # Status is accepted on create only; kwok's node-initialize stage keeps these values.
        "status": {
            "capacity": resources,
            "allocatable": resources,
            "addresses": [{"type": "InternalIP", "address": ip}, {"type": "Hostname", "address": name}],
            # Empty fields are filled in by kwok's node-initialize stage.
            "nodeInfo": {
                "architecture": group.arch,
                "operatingSystem": "linux",
                **dict.fromkeys(_NODE_INFO_FILLED_BY_KWOK, ""),
            },
        },
    }


def create_nodes(core: client.CoreV1Api, groups: list[NodeGroup]) -> list[str]:
    """Create every group's nodes (existing ones are left alone); return all node names."""
    names = []
    for gi, group in enumerate(groups):
        for i in range(group.count):
            body = node_manifest(group, i, gi)
            names.append(body["metadata"]["name"])
            try:
                core.create_node(body)  # type: ignore[arg-type]  # dicts are accepted
            except ApiException as exc:
                if exc.status != 409:
                    raise DevClusterError(
                        f"creating node {names[-1]} failed: {exc.status} {exc.reason}: {exc.body}"
                    ) from None
    return names


def node_is_ready(node: client.V1Node) -> bool:
    for cond in (node.status and node.status.conditions) or []:
        if cond.type == "Ready":
            return bool(cond.status == "True")
    return False


def set_node_ready(kubeconfig: str, name: str, ready: bool, *, wait: float = 30.0) -> None:
    """Make a fake node NotReady (ready=False) or Ready again, and wait until its status shows it.

    Done through kwok (an annotation its stages obey), so kwok does not flip it back.
    """
    with api_client(kubeconfig) as api:
        core = client.CoreV1Api(api)
        value = None if ready else "false"
        try:
            core.patch_node(name, {"metadata": {"annotations": {NODE_READY_ANNOTATION: value}}})
        except ApiException as exc:
            raise DevClusterError(f"node {name}: {exc.status} {exc.reason}") from None
        deadline = time.monotonic() + wait
        while wait > 0:
            if node_is_ready(core.read_node(name)) == ready:
                return
            if time.monotonic() > deadline:
                raise DevClusterError(
                    f"node {name} did not become {'Ready' if ready else 'NotReady'} "
                    f"within {wait:.0f}s (is kwok running?)"
                )
            time.sleep(0.2)


def delete_node(kubeconfig: str, name: str) -> None:
    """Remove a node, as when a machine is gone. Its pods are then deleted by KCM's pod GC."""
    with api_client(kubeconfig) as api:
        try:
            client.CoreV1Api(api).delete_node(name)
        except ApiException as exc:
            if exc.status != 404:
                raise DevClusterError(f"deleting node {name}: {exc.status} {exc.reason}") from None

"""A real local Kubernetes control plane for development and tests, without Docker.

etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok run as plain processes,
built from Go modules by hack/build-kube.sh; kwok simulates GPU nodes and the pods on them.
See docs/dev-cluster.md.
"""

from __future__ import annotations

from queue_controller.devcluster.binaries import BIN_DIR_ENV, BINARIES, cached_bin_dir, ensure_binaries
from queue_controller.devcluster.cluster import ComponentStatus, down, load, status, up
from queue_controller.devcluster.constants import (
    DEFAULT_CLUSTER_NAME,
    EXIT_CODE_ANNOTATION,
    FLAVOR_LABEL,
    GPU_PRODUCT_LABEL,
    GPU_RESOURCE,
    NODE_READY_ANNOTATION,
    RUN_SECONDS_ANNOTATION,
)
from queue_controller.devcluster.errors import DevClusterError
from queue_controller.devcluster.handle import ClusterHandle
from queue_controller.devcluster.nodes import NodeGroup, delete_node, parse_node_group, set_node_ready
from queue_controller.devcluster.state import ClusterState, state_root

__all__ = [
    "BINARIES",
    "BIN_DIR_ENV",
    "DEFAULT_CLUSTER_NAME",
    "EXIT_CODE_ANNOTATION",
    "FLAVOR_LABEL",
    "GPU_PRODUCT_LABEL",
    "GPU_RESOURCE",
    "NODE_READY_ANNOTATION",
    "RUN_SECONDS_ANNOTATION",
    "ClusterHandle",
    "ClusterState",
    "ComponentStatus",
    "DevClusterError",
    "NodeGroup",
    "cached_bin_dir",
    "delete_node",
    "down",
    "ensure_binaries",
    "load",
    "parse_node_group",
    "set_node_ready",
    "state_root",
    "status",
    "up",
]

"""A real local Kubernetes control plane for development and tests, without Docker.

etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok run as plain processes,
built from Go modules by hack/build-kube.sh; kwok simulates GPU nodes and the pods on them. Real
worker nodes (kubelet + containerd + runc, `realnode`) run real containers from local images.
See docs/dev-cluster.md.
"""

from __future__ import annotations

from queue_controller.devcluster.binaries import (
    BIN_DIR_ENV,
    BINARIES,
    cached_bin_dir,
    cached_helm,
    ensure_binaries,
    ensure_helm,
)
from queue_controller.devcluster.cluster import ComponentStatus, down, import_image, load, status, up
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
from queue_controller.devcluster.images import PAUSE_IMAGE, PYTHON_IMAGE
from queue_controller.devcluster.nodes import NodeGroup, delete_node, parse_node_group, set_node_ready
from queue_controller.devcluster.preload import all_images, local_images
from queue_controller.devcluster.realnode import REAL_FLAVOR, ensure_runtime, seed_root
from queue_controller.devcluster.runtime_image import RUNTIME_IMAGE
from queue_controller.devcluster.state import ClusterState, state_root

PRELOADED_IMAGES = (PAUSE_IMAGE, PYTHON_IMAGE, RUNTIME_IMAGE)

__all__ = [
    "BINARIES",
    "BIN_DIR_ENV",
    "DEFAULT_CLUSTER_NAME",
    "EXIT_CODE_ANNOTATION",
    "FLAVOR_LABEL",
    "GPU_PRODUCT_LABEL",
    "GPU_RESOURCE",
    "NODE_READY_ANNOTATION",
    "PAUSE_IMAGE",
    "PRELOADED_IMAGES",
    "PYTHON_IMAGE",
    "REAL_FLAVOR",
    "RUN_SECONDS_ANNOTATION",
    "ClusterHandle",
    "ClusterState",
    "ComponentStatus",
    "DevClusterError",
    "NodeGroup",
    "all_images",
    "cached_bin_dir",
    "cached_helm",
    "delete_node",
    "down",
    "ensure_binaries",
    "ensure_helm",
    "ensure_runtime",
    "import_image",
    "load",
    "local_images",
    "parse_node_group",
    "seed_root",
    "set_node_ready",
    "state_root",
    "status",
    "up",
]

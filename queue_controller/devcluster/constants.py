"""Names shared by the dev cluster, its kwok stages and the code that drives them (one place)."""

from __future__ import annotations

from queue_controller.wire import KWOK_NODE_ANNOTATION, KWOK_NODE_ANNOTATION_VALUE, NODE_KIND_LABEL

# Re-exported; the rest below is this module's own.
__all__ = ["KWOK_NODE_ANNOTATION", "KWOK_NODE_ANNOTATION_VALUE", "NODE_KIND_LABEL"]

# Label on every fake node naming its node group; ResourceFlavors select nodes by it.
FLAVOR_LABEL = "ckq.io/flavor"
# GPU product label, the same key NVIDIA's GPU feature discovery sets on real nodes.
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
GPU_COUNT_LABEL = "nvidia.com/gpu.count"
GPU_RESOURCE = "nvidia.com/gpu"

# On a POD: seconds after the pod started running at which kwok marks it finished.
RUN_SECONDS_ANNOTATION = "kwok.ckq.io/run-seconds"
# On a POD, with RUN_SECONDS_ANNOTATION: exit code it finishes with ("0" = Succeeded, else Failed).
EXIT_CODE_ANNOTATION = "kwok.ckq.io/exit-code"
# On a NODE: "false" makes kwok report it NotReady until the annotation is removed.
NODE_READY_ANNOTATION = "kwok.ckq.io/ready"

# kwok manages exactly the nodes carrying KWOK_NODE_ANNOTATION=KWOK_NODE_ANNOTATION_VALUE (its documented
# convention). Those and NODE_KIND_LABEL ("real" | "kwok" on every node) live in the wire contract: the
# controller simulates checkpoints on kwok nodes.

DEFAULT_CLUSTER_NAME = "ckq-dev"

"""The ckq.io/v1alpha1 API: pydantic models of the five kinds, quantities, validation, CRD generation.

Import from here: `from queue_controller.api import CheckpointableJob, validate_object, to_milli`.
"""

from queue_controller.api.checkpoint import Artifact, Checkpoint, CheckpointSpec, CheckpointStatus
from queue_controller.api.common import (
    API_VERSION,
    GROUP,
    VERSION,
    Condition,
    KubeObject,
    LabelSelector,
    ObjectMeta,
    Taint,
    Toleration,
    find_condition,
    format_time,
    set_condition,
)
from queue_controller.api.flavor import ResourceFlavor, ResourceFlavorSpec
from queue_controller.api.job import (
    Admission,
    CheckpointableJob,
    CheckpointableJobSpec,
    CheckpointableJobStatus,
    CheckpointPolicy,
    LastCheckpoint,
    PodSet,
    PodSetAssignment,
)
from queue_controller.api.podtemplate import PodTemplateSpec
from queue_controller.api.quantity import (
    QuantityError,
    format_milli,
    format_quantity,
    parse_quantity,
    resources_to_milli,
    to_milli,
)
from queue_controller.api.queues import (
    ClusterQueue,
    ClusterQueueSpec,
    ClusterQueueStatus,
    FlavorQuotas,
    FlavorUsage,
    LocalQueue,
    LocalQueueSpec,
    LocalQueueStatus,
    ResourceGroup,
    ResourceQuota,
    ResourceUsage,
)
from queue_controller.api.validation import InvalidObject, validate_documents, validate_object
from queue_controller.duration import parse_duration

__all__ = [
    "API_VERSION",
    "GROUP",
    "VERSION",
    "Admission",
    "Artifact",
    "Checkpoint",
    "CheckpointPolicy",
    "CheckpointSpec",
    "CheckpointStatus",
    "CheckpointableJob",
    "CheckpointableJobSpec",
    "CheckpointableJobStatus",
    "ClusterQueue",
    "ClusterQueueSpec",
    "ClusterQueueStatus",
    "Condition",
    "FlavorQuotas",
    "FlavorUsage",
    "InvalidObject",
    "KubeObject",
    "LabelSelector",
    "LastCheckpoint",
    "LocalQueue",
    "LocalQueueSpec",
    "LocalQueueStatus",
    "ObjectMeta",
    "PodSet",
    "PodSetAssignment",
    "PodTemplateSpec",
    "QuantityError",
    "ResourceFlavor",
    "ResourceFlavorSpec",
    "ResourceGroup",
    "ResourceQuota",
    "ResourceUsage",
    "Taint",
    "Toleration",
    "find_condition",
    "format_milli",
    "format_quantity",
    "format_time",
    "parse_duration",
    "parse_quantity",
    "resources_to_milli",
    "set_condition",
    "to_milli",
    "validate_documents",
    "validate_object",
]

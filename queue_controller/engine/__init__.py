"""The scheduling engine: pure and deterministic. No I/O, no clock, no kopf or kubernetes imports.

`decide(snapshot, now, policy)` takes a picture of the cluster and returns typed decisions. The operator
and the simulator both call it. `scheduler.py` is the loop; each rule it applies is a module of its own
over the cycle's state in `workspace.py` (docs/concepts.md, "Where each rule lives", maps them).
"""

from queue_controller.duration import parse_duration
from queue_controller.engine.carry import Carry
from queue_controller.engine.decisions import (
    Action,
    Admit,
    Checkpoint,
    CheckpointReason,
    Decisions,
    PendingReason,
    Preempt,
    PreemptMode,
    PreemptReason,
    Resume,
    Waiting,
)
from queue_controller.engine.policy import (
    BackfillSettings,
    CheckpointSettings,
    OnCheckpointFailure,
    Policy,
    PreemptionMode,
    PreemptionSettings,
    young_interval,
)
from queue_controller.engine.scheduler import decide
from queue_controller.engine.snapshot import (
    GPU,
    ClusterQueue,
    Flavor,
    FlavorQuotas,
    Job,
    JobState,
    Node,
    PodSet,
    PodSetPlacement,
    QueueingStrategy,
    Quota,
    ReclaimWithinCohort,
    ResourceGroup,
    Snapshot,
    Taint,
    Toleration,
    WithinClusterQueue,
)

__all__ = [
    "GPU", "Action", "Admit", "BackfillSettings", "Carry", "Checkpoint", "CheckpointReason", "CheckpointSettings",
    "ClusterQueue", "Decisions", "Flavor", "FlavorQuotas", "Job", "JobState", "Node", "OnCheckpointFailure",
    "PendingReason", "PodSet", "PodSetPlacement", "Policy", "Preempt", "PreemptMode", "PreemptReason",
    "PreemptionMode", "PreemptionSettings", "QueueingStrategy", "Quota", "ReclaimWithinCohort",
    "ResourceGroup", "Resume", "Snapshot", "Taint", "Toleration", "Waiting", "WithinClusterQueue",
    "decide", "parse_duration", "young_interval",
]

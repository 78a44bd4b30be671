"""The engine's input: a frozen picture of the cluster at one instant.

All resource amounts are integers in milli-units (1 CPU = 1000, 1 GPU = 1000, 1 byte of memory = 1000) so
sums are exact. The adapters (operator cache, simulator) convert Kubernetes quantities into this form.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

Resources = Mapping[str, int]

GPU = "nvidia.com/gpu"


class QueueingStrategy(StrEnum):
    BEST_EFFORT_FIFO = "BestEffortFIFO"
    STRICT_FIFO = "StrictFIFO"


class WithinClusterQueue(StrEnum):
    NEVER = "Never"
    LOWER_PRIORITY = "LowerPriority"
    LOWER_OR_NEWER_EQUAL_PRIORITY = "LowerOrNewerEqualPriority"


class ReclaimWithinCohort(StrEnum):
    NEVER = "Never"
    LOWER_PRIORITY = "LowerPriority"
    ANY = "Any"


class JobState(StrEnum):
    PENDING = "Pending"  # waiting; may hold a checkpoint to resume from
    ADMITTED = "Admitted"  # holds quota and node capacity (starting, running or being vacated)


@dataclass(frozen=True, slots=True)
class Taint:
    key: str
    value: str = ""
    effect: str = "NoSchedule"


@dataclass(frozen=True, slots=True)
class Toleration:
    key: str = ""
    operator: str = "Equal"  # Equal | Exists
    value: str = ""
    effect: str = ""  # empty matches every effect

    def tolerates(self, taint: Taint) -> bool:
        if self.effect and self.effect != taint.effect:
            return False
        if self.operator == "Exists":
            return not self.key or self.key == taint.key
        return self.key == taint.key and self.value == taint.value


def tolerates_all(tolerations: tuple[Toleration, ...], taints: tuple[Taint, ...]) -> bool:
    """PreferNoSchedule taints never block placement, as in kube-scheduler."""
    return all(
        t.effect == "PreferNoSchedule" or any(tol.tolerates(t) for tol in tolerations) for t in taints
    )


@dataclass(frozen=True, slots=True)
class Node:
    name: str
    allocatable: Resources
    labels: Mapping[str, str] = field(default_factory=dict)
    taints: tuple[Taint, ...] = ()
    ready: bool = True
    unschedulable: bool = False
    # Requests of every pod on the node that does not belong to a job in this snapshot (system pods,
    # other controllers' pods). Our own jobs' pods are accounted from their placements.
    other_usage: Resources = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Flavor:
    name: str
    node_labels: Mapping[str, str] = field(default_factory=dict)
    node_taints: tuple[Taint, ...] = ()
    tolerations: tuple[Toleration, ...] = ()


@dataclass(frozen=True, slots=True)
class Quota:
    nominal: int
    borrowing_limit: int | None = None  # None: may borrow without limit (only with a cohort)
    lending_limit: int | None = None  # None: lends all of its unused nominal quota


@dataclass(frozen=True, slots=True)
class FlavorQuotas:
    name: str
    resources: Mapping[str, Quota]


@dataclass(frozen=True, slots=True)
class ResourceGroup:
    covered_resources: tuple[str, ...]
    flavors: tuple[FlavorQuotas, ...]


@dataclass(frozen=True, slots=True)
class ClusterQueue:
    name: str
    resource_groups: tuple[ResourceGroup, ...]
    cohort: str | None = None
    queueing_strategy: QueueingStrategy = QueueingStrategy.BEST_EFFORT_FIFO
    # None: take the policy profile's default.
    within_cluster_queue: WithinClusterQueue | None = None
    reclaim_within_cohort: ReclaimWithinCohort | None = None
    backfill_enabled: bool | None = None
    reservation_depth: int | None = None
    fair_weight: float = 1.0
    stopped: bool = False


@dataclass(frozen=True, slots=True)
class PodSet:
    name: str
    count: int
    requests: Resources  # per pod
    node_selector: Mapping[str, str] = field(default_factory=dict)
    tolerations: tuple[Toleration, ...] = ()


@dataclass(frozen=True, slots=True)
class PodSetPlacement:
    """Where one pod set runs: its flavor and one node name per pod (index order)."""

    name: str
    flavor: str
    nodes: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Job:
    key: str  # "namespace/name": unique and the final tie-breaker of every ordering
    cluster_queue: str
    priority: int
    queue_order: float  # seconds; creation time, kept across preemptions so a job keeps its place
    pod_sets: tuple[PodSet, ...]
    state: JobState = JobState.PENDING
    checkpointable: bool = False
    # Measured (or modelled) cost of one checkpoint and one restore, in seconds.
    checkpoint_cost_s: float = 0.0
    restore_cost_s: float = 0.0
    runtime_estimate_s: float | None = None
    # The adapter's learned prediction of the run time (queue_controller/predictions.py): used instead of
    # the estimate, under a policy with runtime predictions, until the job has run past it.
    runtime_prediction_s: float | None = None
    run_time_s: float = 0.0  # accumulated over finished runs (progress kept by checkpoints)
    started_at: float | None = None  # start of the current run
    last_checkpoint_at: float | None = None
    checkpoint_interval_s: float | None = None  # None: no periodic checkpoints; see auto_interval
    checkpoint_interval_auto: bool = False
    checkpoint: str | None = None  # newest Completed checkpoint: a pending job resumes from it
    restore_node_labels: Mapping[str, str] = field(default_factory=dict)
    # Admitted jobs only.
    placement: tuple[PodSetPlacement, ...] = ()
    backfilled: bool = False  # admitted ahead of a reservation: vacated when the reservation comes due
    vacating: bool = False  # being preempted/suspended: resources will be freed soon
    preempted_for: str | None = None  # the job it is vacated for: its room stays reserved for that job
    checkpointing: bool = False  # a checkpoint is in flight
    admitted_at: float | None = None

    @property
    def gpus(self) -> int:
        sets = self.pod_sets
        if len(sets) == 1:  # almost every job: no generator (asked for every running job each cycle)
            return sets[0].count * sets[0].requests.get(GPU, 0)
        return sum(ps.count * ps.requests.get(GPU, 0) for ps in sets)

    def total_requests(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for ps in self.pod_sets:
            for r, q in ps.requests.items():
                out[r] = out.get(r, 0) + q * ps.count
        return out


@dataclass(frozen=True, slots=True)
class Snapshot:
    nodes: tuple[Node, ...]
    flavors: tuple[Flavor, ...]
    cluster_queues: tuple[ClusterQueue, ...]
    jobs: tuple[Job, ...]
    # Mean time between failures of one node, for Young's checkpoint interval.
    node_mtbf_s: float | None = None

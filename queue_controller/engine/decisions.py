"""The engine's output: typed decisions for the actuators, and a status line for every waiting job."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import TypeVar

from queue_controller.engine.snapshot import PodSetPlacement


class PreemptMode(StrEnum):
    CHECKPOINT = "checkpoint"
    KILL = "kill"


class PreemptReason(StrEnum):
    IN_CLUSTER_QUEUE = "InClusterQueue"
    IN_COHORT_RECLAMATION = "InCohortReclamation"
    IN_COHORT_FAIR_SHARING = "InCohortFairSharing"  # restores fair shares within the cohort (fair sharing)
    RESERVATION_DUE = "ReservationDue"  # a backfilled job vacated for the job whose reservation it used


class CheckpointReason(StrEnum):
    PERIODIC = "Periodic"


class PendingReason(StrEnum):
    QUOTA = "InsufficientQuota"
    CAPACITY = "InsufficientCapacity"
    NO_MATCHING_NODES = "NoMatchingNodes"
    STRICT_FIFO = "BlockedByStrictFIFO"
    WAITING_FOR_PREEMPTION = "WaitingForPreemption"
    RESERVATION = "ReservedStart"  # blocked, but holds a reservation (backfill)
    BACKFILL_BLOCKED = "WouldDelayReservation"
    UNKNOWN_QUEUE = "ClusterQueueNotFound"
    QUEUE_STOPPED = "ClusterQueueStopped"
    UNSATISFIABLE = "NeverFits"
    # Inadmissible (fit.py, `inadmissible`): the queue can never admit the job as it is configured.
    RESOURCE_NOT_COVERED = "ResourceNotCovered"  # asks for a resource the ClusterQueue has no quota for
    NEVER_FITS_QUOTA = "NeverFitsQuota"  # asks more than the ClusterQueue can ever hold, even borrowing


@dataclass(frozen=True, slots=True)
class Admit:
    job: str
    cluster_queue: str
    placement: tuple[PodSetPlacement, ...]
    backfill: bool = False  # admitted ahead of a reservation (opportunistic)


@dataclass(frozen=True, slots=True)
class Resume:
    job: str
    cluster_queue: str
    checkpoint: str
    placement: tuple[PodSetPlacement, ...]
    backfill: bool = False


@dataclass(frozen=True, slots=True)
class Preempt:
    victim: str
    mode: PreemptMode
    beneficiary: str
    reason: PreemptReason
    # Estimated work lost, in GPU-seconds (CPU-seconds for jobs without GPUs): checkpoint + restore time
    # for a checkpoint, progress since the last checkpoint for a kill.
    cost: float = 0.0


@dataclass(frozen=True, slots=True)
class Checkpoint:
    job: str
    reason: CheckpointReason


# Not frozen, unlike the actions: a cycle makes one record per waiting job (10,000 and more), and a frozen
# dataclass's constructor costs several times a plain one's. Still hashable and compared by value; treat
# it as read-only.
@dataclass(slots=True, unsafe_hash=True)
class Waiting:
    """Why a job is not running, and where it stands."""

    job: str
    position: int  # 1-based, in its ClusterQueue's order
    reason: PendingReason
    message: str = ""
    reserved_start: float | None = None


Action = Admit | Resume | Preempt | Checkpoint
T = TypeVar("T")


@dataclass(slots=True)
class Decisions:
    actions: list[Action] = field(default_factory=list)
    waiting: dict[str, Waiting] = field(default_factory=dict)
    # Earliest time at which the engine wants to be asked again even if nothing changes
    # (a periodic checkpoint or a reservation coming due). None: only on change.
    next_wakeup: float | None = None

    def of_type(self, kind: type[T]) -> list[T]:
        return [a for a in self.actions if isinstance(a, kind)]

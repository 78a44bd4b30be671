"""The wire contract: the names and formats that other programs see and that must not drift.

Labels on the pods the controller creates (kubectl selectors, dashboards and the tests select by them),
annotations it writes on Checkpoints, the phases of jobs and checkpoints, the deterministic names of
pods and Checkpoints (a restarted controller recomputes them, so creating an object twice is a harmless
409), and the time format of `metav1.Time`. The phases themselves are defined once, by the API models
(`api/job.py`, `api/checkpoint.py`); this module names the groups of them the controller acts on.

Annotations that only matter on kwok nodes belong to the Simulated checkpoint backend
(`checkpoint/simulated.py`), not here: the controller never reads them.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from queue_controller.api.checkpoint import CheckpointPhase
from queue_controller.api.common import format_time as format_datetime
from queue_controller.api.job import JobPhase

# ---- labels on the pods the controller creates -------------------------------------------------------

JOB_LABEL = "ckq.io/job-name"  # also on the job's Checkpoints
POD_SET_LABEL = "ckq.io/pod-set"
POD_INDEX_LABEL = "ckq.io/pod-index"
ATTEMPT_LABEL = "ckq.io/attempt"
MANAGED_LABEL = "ckq.io/managed"  # "true": created by this controller for a CheckpointableJob

# ---- annotations -----------------------------------------------------------------------------------

# On a Checkpoint: the job's accumulated run time at the moment it was taken (what a restore keeps).
CHECKPOINT_RUNTIME_ANNOTATION = "ckq.io/run-time-seconds"

# ---- phases ----------------------------------------------------------------------------------------

# Phases in which a job holds quota and has (or is about to have) pods.
ACTIVE_PHASES: tuple[JobPhase, ...] = ("Admitted", "Running", "Checkpointing", "Restoring")
TERMINAL_PHASES: tuple[JobPhase, ...] = ("Succeeded", "Failed")
# Phases of a job that waits in its queue (a Suspended one resumes from its checkpoint).
WAITING_PHASES: tuple[JobPhase, ...] = ("Pending", "Suspended")
# Phases in which a job's pods are expected to exist.
STARTING_PHASES: tuple[JobPhase, ...] = ("Admitted", "Restoring")
# A Checkpoint in these phases is in flight: its backend is polled.
IN_FLIGHT_CHECKPOINT_PHASES: tuple[CheckpointPhase, ...] = ("Pending", "Running")
# Pod phases after which a pod takes no node capacity.
POD_DONE_PHASES = ("Succeeded", "Failed")

# ---- names -----------------------------------------------------------------------------------------


def pod_name(job: str, attempt: int, pod_set: str, index: int) -> str:
    """`<job>-<attempt>-<podset>-<index>`: each run (attempt) of a job has its own pod names."""
    return f"{job}-{attempt}-{pod_set}-{index}"


def checkpoint_name(job: str, attempt: int, reason: str, number: int) -> str:
    """`<job>-<attempt>-<reason>-<n>`, where n counts the job's checkpoints (completed and failed)."""
    return f"{job}-{attempt}-{reason.lower()}-{number}"


# ---- time ------------------------------------------------------------------------------------------


def parse_time(value: Any) -> float | None:
    """Epoch seconds from a `metav1.Time` (RFC 3339) or a number; None when unset."""
    if not value:
        return None
    if isinstance(value, int | float):
        return float(value)
    return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()


def to_datetime(epoch: float) -> datetime:
    """An aware UTC datetime, what the API models' `Time` fields hold."""
    return datetime.fromtimestamp(epoch, UTC)


def format_time(epoch: float) -> str:
    """A `metav1.Time` string (whole seconds, UTC, `Z`) for epoch seconds."""
    return format_datetime(to_datetime(epoch))

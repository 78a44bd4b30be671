"""Checkpoint: one checkpoint of one job, owned by the job and pruned by its `retain`."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import ConfigDict, Field

from queue_controller.api.common import (
    AGE_COLUMN,
    DNS_SUBDOMAIN_PATTERN,
    ApiModel,
    KubeObject,
    PrinterColumn,
    Time,
)

MAX_ARTIFACTS = 4096
MSG_SPEC_IMMUTABLE = "spec is immutable"

CheckpointReason = Literal["Preemption", "Periodic", "User", "Drain", "Failure"]
CheckpointPhase = Literal["Pending", "Running", "Completed", "Failed"]


class CheckpointSpec(ApiModel):
    """Which job to checkpoint and why. Immutable."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [{"rule": "self == oldSelf", "message": MSG_SPEC_IMMUTABLE}]
        }
    )

    job_name: Annotated[str, Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN_PATTERN)]
    """The CheckpointableJob (same namespace)."""
    reason: CheckpointReason
    """Preemption, Periodic, User (`ckq checkpoint`, suspend), Drain (node drain) or Failure."""
    leave_running: bool = False
    """Keep the job running after the dump (periodic checkpoints); otherwise its pods stop."""


class Artifact(ApiModel):
    """The checkpoint image of one container of one pod."""

    pod_set: Annotated[str, Field(min_length=1, max_length=63)]
    """Pod set name."""
    index: Annotated[int, Field(ge=0)]
    """Pod index within the pod set."""
    container: Annotated[str, Field(min_length=1, max_length=63)]
    """Container name."""
    node: Annotated[str | None, Field(max_length=253)] = None
    """Node the pod ran on."""
    uri: Annotated[str, Field(min_length=1, max_length=4096)]
    """Where the image is stored (e.g. `pvc://claim/path`, `file:///...`)."""
    sha256: Annotated[str | None, Field(pattern=r"^[0-9a-f]{64}$")] = None
    """Digest of the image archive."""
    size_bytes: Annotated[int | None, Field(ge=0)] = None
    """Size of the image."""
    encryption_key_id: Annotated[str | None, Field(pattern=r"^[0-9a-f]{16}$")] = None
    """The id (a non-secret fingerprint) of the key the image is encrypted with; unset: stored
    unencrypted. A restore needs the same key."""


class FrozenContainer(ApiModel):
    """One container stopped for the checkpoint's freeze barrier (by the agent of its node)."""

    pod_set: Annotated[str, Field(min_length=1, max_length=63)]
    """Pod set name."""
    index: Annotated[int, Field(ge=0)]
    """Pod index within the pod set."""
    container: Annotated[str, Field(min_length=1, max_length=63)]
    """Container name."""
    node: Annotated[str | None, Field(max_length=253)] = None
    """Node the pod runs on."""
    frozen_at: Time
    """When every process of the container was stopped."""


class RestoreConstraints(ApiModel):
    """What a node needs for the checkpoint to restore there."""

    node_labels: Annotated[dict[str, str], Field(max_length=32)] = Field(default_factory=dict)
    """Labels a target node must carry (GPU product, driver version, CPU architecture/features)."""


class CheckpointStatus(ApiModel):
    """Progress and result; written by the controller."""

    phase: CheckpointPhase | None = None
    """Pending, Running, Completed or Failed."""
    start_time: Time | None = None
    """When the dump started."""
    job_run_time_seconds: Annotated[float | None, Field(ge=0)] = None
    """The job's progress (run time, in seconds) this checkpoint keeps: the job resumes from it with this
    much done. Set by the controller when it begins the checkpoint, also for a Checkpoint a user created."""
    completion_time: Time | None = None
    """When it completed or failed."""
    duration_seconds: Annotated[float | None, Field(ge=0)] = None
    """How long the dump took (the job's pods were frozen for this long)."""
    size_bytes: Annotated[int | None, Field(ge=0)] = None
    """Total size of all artifacts."""
    artifacts: Annotated[list[Artifact], Field(max_length=MAX_ARTIFACTS)] = Field(default_factory=list)
    """One image per checkpointed container."""
    members: Annotated[int | None, Field(ge=0)] = None
    """How many containers the checkpoint covers: every container of every pod of the job's run (the
    gang). Written by the node agents with the first freeze."""
    frozen: Annotated[list[FrozenContainer], Field(max_length=MAX_ARTIFACTS)] = Field(default_factory=list)
    """The freeze barrier: containers stopped for this checkpoint. No container is dumped before all
    `members` are here; a dump that fails, or a barrier not reached in time, fails the checkpoint and
    every container is continued and its image discarded."""
    released: Annotated[list[Annotated[str, Field(max_length=253)]], Field(max_length=MAX_ARTIFACTS)] = Field(
        default_factory=list)
    """Nodes whose agents released what they froze once the checkpoint ended: continued (failed, or
    leaveRunning), or stopped (completed without leaveRunning), and on failure their images deleted."""
    restore_constraints: RestoreConstraints | None = None
    """Where it can be restored."""
    message: Annotated[str | None, Field(max_length=32768)] = None
    """Human-readable details, e.g. why it failed."""


class Checkpoint(KubeObject):
    """One checkpoint of one CheckpointableJob. Namespaced; garbage-collected with its job."""

    KIND: ClassVar[str] = "Checkpoint"
    PLURAL: ClassVar[str] = "checkpoints"
    SCOPE: ClassVar[Literal["Namespaced", "Cluster"]] = "Namespaced"
    SHORT_NAMES: ClassVar[tuple[str, ...]] = ("ckpt", "ckpts")
    PRINTER_COLUMNS: ClassVar[tuple[PrinterColumn, ...]] = (
        PrinterColumn(name="Job", type="string", json_path=".spec.jobName", description="The job"),
        PrinterColumn(name="Reason", type="string", json_path=".spec.reason", description="Why"),
        PrinterColumn(name="Phase", type="string", json_path=".status.phase", description="Phase"),
        PrinterColumn(name="Size", type="integer", json_path=".status.sizeBytes", description="Bytes"),
        PrinterColumn(name="Duration", type="number", json_path=".status.durationSeconds",
                      description="Dump seconds"),
        AGE_COLUMN,
        PrinterColumn(name="LeaveRunning", type="boolean", json_path=".spec.leaveRunning", priority=1),
    )

    kind: Literal["Checkpoint"] = "Checkpoint"
    spec: CheckpointSpec
    """Which job and why."""
    status: CheckpointStatus | None = None
    """Progress and result."""

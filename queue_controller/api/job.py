"""CheckpointableJob: a gang of pod sets that is queued, admitted, and preempted by checkpoint."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Literal

from pydantic import ConfigDict, Field, WithJsonSchema, field_serializer, model_validator

from queue_controller.api.common import (
    AGE_COLUMN,
    CONDITIONS_SCHEMA_EXTRA,
    DNS_LABEL_PATTERN,
    DNS_SUBDOMAIN_PATTERN,
    ApiModel,
    Condition,
    KubeObject,
    PrinterColumn,
    Time,
    rule_error,
)
from queue_controller.api.podtemplate import PodTemplateSpec
from queue_controller.api.quantity import add_milli
from queue_controller.duration import DURATION_BODY, DURATION_PATTERN, parse_duration

MAX_POD_SETS = 8
MAX_POD_SET_COUNT = 10000

# A duration (the one grammar, in queue_controller/duration.py), or "auto".
INTERVAL_PATTERN = "^(auto|" + DURATION_BODY + ")$"
SIGNAL_PATTERN = r"^(SIG[A-Z0-9]+|[1-9][0-9]?)$"

# The pattern check guards duration() so that a malformed value gets one error, not two.
_INTERVAL_RULE = (
    "self == 'auto' || !self.matches('" + DURATION_PATTERN.replace("\\", "\\\\") + "') "
    "|| duration(self) > duration('0s')"
)

MSG_PRIORITY_XOR_CLASS = "set at most one of priority and priorityClassName"
MSG_INTERVAL = 'interval must be "auto" or a positive duration such as "30m", "1h30m", "90s"'
MSG_INTERVAL_NEEDS_MODE = "interval needs a checkpoint mode other than None"
MSG_SIGNAL_NEEDS_MODE = "signal may be set only when mode is Signal"
MSG_POD_SET_NAMES_UNIQUE = "pod set names must be unique"

CheckpointMode = Literal["CRIU", "Signal", "Kubelet", "Simulated", "None"]
JobPhase = Literal[
    "Pending", "Admitted", "Running", "Checkpointing", "Suspended", "Restoring", "Succeeded", "Failed"
]

class PodSet(ApiModel):
    """`count` identical pods from one template. All pod sets of a job start together (a gang)."""

    name: Annotated[str, Field(min_length=1, max_length=63, pattern=DNS_LABEL_PATTERN)] = "main"
    """Name, unique within the job."""
    count: Annotated[int, Field(ge=1, le=MAX_POD_SET_COUNT)] = 1
    """Number of pods; at least 1."""
    template: Annotated[
        PodTemplateSpec,
        # The API server keeps the template as written; Python parses what accounting needs.
        WithJsonSchema({"type": "object", "x-kubernetes-preserve-unknown-fields": True}),
    ]
    """A core/v1 PodTemplateSpec. Requests are summed over containers (max with init containers,
    plus overhead) as Kubernetes does; limits stand in for missing requests."""

    @field_serializer("template")
    def _template_as_written(self, template: PodTemplateSpec) -> dict[str, Any]:
        # Only what the user wrote: the template is copied into pods, so no invented empty fields.
        return template.model_dump(mode="json", by_alias=True, exclude_unset=True)

    def pod_requests_milli(self) -> dict[str, int]:
        """Resources one pod requests, in integer milli-units per resource name."""
        return self.template.pod_requests_milli()

    def total_requests_milli(self) -> dict[str, int]:
        """Resources all `count` pods request together."""
        return {k: v * self.count for k, v in self.pod_requests_milli().items()}


class EncryptionKeyRef(ApiModel):
    """A key in a Secret of the job's namespace: checkpoint images are encrypted with it (AES-256-GCM)."""

    secret_name: Annotated[str, Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN_PATTERN)]
    """The Secret, in the job's own namespace (a pod can mount no other: images of one namespace can
    never be restored with another's key)."""
    key: Annotated[str, Field(min_length=1, max_length=253, pattern=r"^[-._a-zA-Z0-9]+$")] = "key"
    """The Secret's data key holding the 256-bit key: 32 raw bytes, 64 hex digits, or base64 of 32 bytes."""


class CheckpointPolicy(ApiModel):
    """How and how often the job is checkpointed."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {"rule": "self.mode != 'None' || !has(self.interval)", "message": MSG_INTERVAL_NEEDS_MODE,
                 "fieldPath": ".interval"},
                {"rule": "!has(self.signal) || self.mode == 'Signal'", "message": MSG_SIGNAL_NEEDS_MODE,
                 "fieldPath": ".signal"},
            ]
        }
    )

    mode: CheckpointMode = "CRIU"
    """`CRIU` (ckq-run dumps the processes), `Signal` (the application saves its own state on a
    signal), `Kubelet` (the kubelet checkpoint API), `Simulated` (kwok nodes), or `None` (not
    checkpointable: preemption kills and requeues it)."""
    interval: Annotated[
        str | None,
        Field(
            max_length=32,
            pattern=INTERVAL_PATTERN,
            json_schema_extra={
                "x-kubernetes-validations": [
                    {"rule": _INTERVAL_RULE, "message": MSG_INTERVAL}
                ]
            },
        ),
    ] = None
    """Periodic checkpoint interval: a duration ("30m", "1h30m") or "auto" (the controller picks
    one from checkpoint cost and failure rate). Unset: the policy profile decides (`iass`: "auto";
    the others take none)."""
    retain: Annotated[int, Field(ge=1, le=100)] = 3
    """How many completed checkpoints to keep; older ones are pruned."""
    timeout_seconds: Annotated[int, Field(ge=1, le=86400)] = 600
    """A checkpoint that takes longer fails (the job is then killed and requeued, if it must go)."""
    signal: Annotated[str | None, Field(max_length=16, pattern=SIGNAL_PATTERN)] = None
    """For mode `Signal`: the signal that asks the application to save its state (e.g. `SIGUSR1`)."""
    encryption_key: EncryptionKeyRef | None = None
    """Encrypt the job's checkpoint images at rest (mode `CRIU`): a checkpoint image is a copy of the
    process's memory — weights, data, tokens, credentials. Unset: the LocalQueue's
    `spec.checkpoint.encryptionKey`, else the namespace's default Secret `ckq-checkpoint-key` when it
    exists (docs/security.md); with none of them images are stored unencrypted."""

    @model_validator(mode="after")
    def _check(self) -> CheckpointPolicy:
        errors: list[tuple[str, str]] = []
        if self.interval is not None:
            if self.interval != "auto":
                try:
                    parse_duration(self.interval)
                except ValueError:  # zero: the pattern has already refused anything else
                    errors.append(("interval", MSG_INTERVAL))
            if self.mode == "None":
                errors.append(("interval", MSG_INTERVAL_NEEDS_MODE))
        if self.signal is not None and self.mode != "Signal":
            errors.append(("signal", MSG_SIGNAL_NEEDS_MODE))
        if errors:
            raise rule_error(errors)
        return self

    def interval_seconds(self) -> float | Literal["auto"] | None:
        """The interval in seconds, "auto", or None when there is no periodic checkpoint."""
        if self.interval is None or self.interval == "auto":
            return self.interval  # type: ignore[return-value]
        return parse_duration(self.interval)


class CheckpointableJobSpec(ApiModel):
    """What to run, where to queue it, and how to checkpoint it."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {"rule": "!(has(self.priority) && has(self.priorityClassName))",
                 "message": MSG_PRIORITY_XOR_CLASS, "fieldPath": ".priority"},
            ]
        }
    )

    queue_name: Annotated[str, Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN_PATTERN)]
    """The LocalQueue (in the job's namespace) to submit to."""
    priority_class_name: Annotated[
        str | None, Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN_PATTERN)
    ] = None
    """A `scheduling.k8s.io` PriorityClass; its value is the job's priority. Exclusive with `priority`."""
    priority: Annotated[int | None, Field(ge=-2147483648, le=1000000000)] = None
    """The job's priority (higher first). Exclusive with `priorityClassName`; neither means 0."""
    pod_sets: Annotated[list[PodSet], Field(min_length=1, max_length=MAX_POD_SETS)] = Field(
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]}
    )
    """The gang: all pods of all sets start together or not at all. Names are unique."""
    checkpoint: CheckpointPolicy = Field(default_factory=CheckpointPolicy)
    """Checkpoint policy."""
    runtime_estimate_seconds: Annotated[int | None, Field(ge=1)] = None
    """Expected run time; lets backfill reserve start times (jobs without one are not backfilled
    ahead of reservations, but may still fill gaps when they are checkpointable)."""
    max_restarts: Annotated[int, Field(ge=0, le=1000)] = 3
    """How many failures (pod or node) are retried, from the last checkpoint, before the job fails."""
    suspend: bool = False
    """User-requested suspend: `true` checkpoints the job and releases its resources; `false` resumes."""

    @model_validator(mode="after")
    def _check(self) -> CheckpointableJobSpec:
        errors: list[tuple[str, str]] = []
        if self.priority is not None and self.priority_class_name is not None:
            errors.append(("priority", MSG_PRIORITY_XOR_CLASS))
        seen: set[str] = set()
        for i, ps in enumerate(self.pod_sets):
            if ps.name in seen:
                errors.append((f"podSets[{i}].name", f"{MSG_POD_SET_NAMES_UNIQUE}: {ps.name!r} repeats"))
            seen.add(ps.name)
        if errors:
            raise rule_error(errors)
        return self

    def effective_priority(self, priority_classes: Mapping[str, int]) -> int:
        """`priority`, else the value of `priorityClassName` in `priority_classes`, else 0.

        Raises KeyError when the named PriorityClass does not exist (the job must wait, not run at 0).
        """
        if self.priority is not None:
            return self.priority
        if self.priority_class_name is not None:
            return priority_classes[self.priority_class_name]
        return 0

    def pod_requests_milli(self) -> dict[str, int]:
        """Total resources of the whole gang, in milli-units."""
        total: dict[str, int] = {}
        for ps in self.pod_sets:
            total = add_milli(total, ps.total_requests_milli())
        return total


class PodSetAssignment(ApiModel):
    """Where one pod set was admitted."""

    name: Annotated[str, Field(min_length=1, max_length=63)]
    """The pod set."""
    flavor: Annotated[str | None, Field(max_length=253)] = None
    """The ResourceFlavor its pods use (the flavor of its first resource group)."""
    flavors: Annotated[dict[str, str], Field(max_length=16)] = Field(default_factory=dict)
    """Flavor per resource, when the pod set spans several resource groups (Kueue's field)."""
    count: Annotated[int | None, Field(ge=0)] = None
    """Number of pods admitted."""
    nodes: Annotated[list[str], Field(max_length=MAX_POD_SET_COUNT)] = Field(default_factory=list)
    """Node of each pod, by pod index."""


class RequeueState(ApiModel):
    """Requeues after the job's pods could not all start: not running in time (Kueue's waitForPodsReady),
    or their checkpoint encryption key missing (the PodsReady condition says which)."""

    count: Annotated[int, Field(ge=0)] = 0
    """Requeues so far."""
    requeue_at: Time | None = None
    """Not admitted again before this time (exponential backoff)."""


class Admission(ApiModel):
    """The quota reservation of an admitted job."""

    cluster_queue: Annotated[str, Field(min_length=1, max_length=253)]
    """The ClusterQueue whose quota the job holds."""
    pod_set_assignments: Annotated[list[PodSetAssignment], Field(max_length=MAX_POD_SETS)] = Field(
        default_factory=list,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    """Flavor and nodes per pod set."""
    backfill: bool = False
    """Admitted ahead of a reservation (checkpoint-aware backfill): it is vacated by checkpoint when the
    reservation comes due, by any job ahead of it in queue order."""
    time: Time | None = None
    """When the quota was reserved."""


class CheckpointInterval(ApiModel):
    """The periodic checkpoint interval in force for the job, and why."""

    seconds: Annotated[float | None, Field(ge=0)] = None
    """Seconds between periodic checkpoints (unset: the job takes none)."""
    reason: Annotated[str, Field(max_length=1024)] = ""
    """Where it comes from: the job's spec, the policy's default, or `auto` (Daly's interval, with the
    checkpoint cost and the failure rate it used)."""


class LastCheckpoint(ApiModel):
    """The newest completed checkpoint."""

    name: Annotated[str, Field(min_length=1, max_length=253)]
    """Name of the Checkpoint object."""
    time: Time | None = None
    """When it completed."""
    size_bytes: Annotated[int | None, Field(ge=0)] = None
    """Its total size."""


class CheckpointableJobStatus(ApiModel):
    """Observed state; written by the controller."""

    phase: JobPhase | None = None
    """Pending, Admitted, Running, Checkpointing, Suspended, Restoring, Succeeded or Failed."""
    conditions: Annotated[list[Condition], Field(max_length=16)] = Field(
        default_factory=list, json_schema_extra=CONDITIONS_SCHEMA_EXTRA
    )
    """Conditions such as `Admitted`, `Running`, `Preempted`, `Finished`."""
    priority: int | None = None
    """The effective priority (from `spec.priority` or the PriorityClass), resolved by the controller."""
    admission: Admission | None = None
    """Set while the job holds quota."""
    last_checkpoint: LastCheckpoint | None = None
    """The newest completed checkpoint; a restart restores from it."""
    checkpoints: Annotated[int, Field(ge=0)] = 0
    """Completed checkpoints so far."""
    preemptions: Annotated[int, Field(ge=0)] = 0
    """Times the job was preempted."""
    restarts: Annotated[int, Field(ge=0)] = 0
    """Times the job was restarted after a failure."""
    run_time_seconds: Annotated[float, Field(ge=0)] = 0.0
    """Run time accumulated over all runs (work not lost to failures)."""
    pending_reason: Annotated[str | None, Field(max_length=64)] = None
    """Why it is not running, e.g. `InsufficientQuota`, `WaitingForPreemption`, `ReservedStart`. Written
    when the job starts waiting and when the reason changes (a change between contention reasons at most
    every 30 s); its position in the queue is not stored but served on demand (`ckq pending`)."""
    message: Annotated[str | None, Field(max_length=32768)] = None
    """Human-readable state, e.g. why it is pending."""
    attempt: Annotated[int, Field(ge=0)] = 0
    """Admissions so far; the pods of each run carry it in their names, so runs never collide."""
    run_start_time: Time | None = None
    """When the current run's pods were all running (unset while not running)."""
    queued_time: Time | None = None
    """When the job last entered the queue (creation, preemption, failure); time to admission counts from it."""
    completion_time: Time | None = None
    """When the job finished."""
    lost_run_time_seconds: Annotated[float, Field(ge=0)] = 0.0
    """Run time thrown away by kills and failures (progress after the newest checkpoint)."""
    checkpoint_failures: Annotated[int, Field(ge=0)] = 0
    """Checkpoints that failed or timed out."""
    checkpoint_interval: CheckpointInterval | None = None
    """The periodic checkpoint interval in force and why; written when a run starts and when a periodic
    checkpoint completes."""
    requeue_state: RequeueState | None = None
    """Set once the job was requeued because its pods were not all running within the cluster's
    `podsReadyTimeout`, or their encryption key was missing; back in the queue after `requeueAt`."""
    preempted_for: Annotated[str | None, Field(max_length=317)] = None
    """While being vacated by a preemption: the job (`namespace/name`) its room is reserved for."""


class CheckpointableJob(KubeObject):
    """A batch job that is queued by priority, admitted as a gang, and checkpointed instead of killed."""

    KIND: ClassVar[str] = "CheckpointableJob"
    PLURAL: ClassVar[str] = "checkpointablejobs"
    SCOPE: ClassVar[Literal["Namespaced", "Cluster"]] = "Namespaced"
    SHORT_NAMES: ClassVar[tuple[str, ...]] = ("cjob", "cjobs")
    MAX_NAME_LENGTH: ClassVar[tuple[int, str] | None] = (
        63, "it is the value of the label ckq.io/job-name on its pods and Checkpoints")
    PRINTER_COLUMNS: ClassVar[tuple[PrinterColumn, ...]] = (
        PrinterColumn(name="Queue", type="string", json_path=".spec.queueName", description="LocalQueue"),
        PrinterColumn(name="Phase", type="string", json_path=".status.phase", description="Phase"),
        PrinterColumn(name="Priority", type="integer", json_path=".status.priority",
                      description="Effective priority"),
        PrinterColumn(name="Reason", type="string", json_path=".status.pendingReason",
                      description="Why it waits (unset while it holds quota)"),
        PrinterColumn(name="Checkpoints", type="integer", json_path=".status.checkpoints",
                      description="Completed checkpoints"),
        AGE_COLUMN,
        PrinterColumn(name="RunTime", type="number", json_path=".status.runTimeSeconds",
                      description="Seconds run, over all runs", priority=1),
        PrinterColumn(name="LastCheckpoint", type="string", json_path=".status.lastCheckpoint.name",
                      description="Newest completed checkpoint", priority=1),
        PrinterColumn(name="ClusterQueue", type="string", json_path=".status.admission.clusterQueue",
                      description="Admitting ClusterQueue", priority=1),
        PrinterColumn(name="Preemptions", type="integer", json_path=".status.preemptions",
                      description="Times preempted", priority=1),
        PrinterColumn(name="Restarts", type="integer", json_path=".status.restarts",
                      description="Restarts after failures", priority=1),
        PrinterColumn(name="Mode", type="string", json_path=".spec.checkpoint.mode",
                      description="Checkpoint mode", priority=1),
        PrinterColumn(name="Message", type="string", json_path=".status.message", priority=1),
    )

    kind: Literal["CheckpointableJob"] = "CheckpointableJob"
    spec: CheckpointableJobSpec
    """The job."""
    status: CheckpointableJobStatus | None = None
    """Observed state."""

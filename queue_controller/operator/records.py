"""The cache's records: slim, typed pictures of the Kubernetes objects the controller watches (never
whole bodies with managedFields). Status stays as the API server sent it; the controller writes status
through the API models (`status.py`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from queue_controller.api.job import CheckpointableJobSpec, EncryptionKeyRef
from queue_controller.api.queues import ClusterQueueSpec
from queue_controller.wire import CHECKPOINT_RUNTIME_ANNOTATION


@dataclass(slots=True)
class JobRecord:
    namespace: str
    name: str
    uid: str
    created: float
    spec: CheckpointableJobSpec | None  # None: the spec does not parse (reported in status)
    spec_error: str
    status: dict[str, Any]
    annotations: dict[str, str]
    generation: int = 0
    # Pod templates exactly as the user wrote them (by pod set name): pods are built from these, never
    # from a re-serialised model that would add empty defaults the API server rejects.
    templates: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Per-pod requests of each pod set (milli-units), computed once per spec change, not per cycle.
    requests: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def phase(self) -> str:
        return str(self.status.get("phase") or "Pending")


@dataclass(slots=True)
class PodRecord:
    namespace: str
    name: str
    uid: str
    node: str | None
    phase: str
    requests: dict[str, int]
    job: str | None  # "namespace/name" of the owning CheckpointableJob, for managed pods
    pod_set: str = ""
    index: int = 0
    attempt: int = 0
    terminating: bool = False
    containers: tuple[str, ...] = ()
    start_time: float | None = None
    finish_time: float | None = None  # latest container finishedAt, once terminated
    exit_code: int | None = None  # the first non-zero exit code of its terminated containers
    exit_noted: int | None = None  # the code ckq-run's exit note in that container names (runtime/exits.py)
    injected: bool = False  # it runs under ckq-run (the runtime's init container was injected)
    restore_from: str | None = None  # the Checkpoint a restored pod restores from (wire.RESTORE_FROM_ANNOTATION)
    ckq_run_mode: str = ""  # how ckq-run checkpoints it, "Signal" or "CRIU" (wire.CKQ_RUN_MODE_ANNOTATION)

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def ckq_run_exit(self) -> int | None:
        """The exit code, when ckq-run chose it itself and said so (its note); None for a workload's own
        exit, whatever the number."""
        return self.exit_code if self.injected and self.exit_code is not None and (
            self.exit_noted == self.exit_code) else None


@dataclass(slots=True)
class NodeRecord:
    name: str
    allocatable: dict[str, int]
    labels: dict[str, str]
    taints: list[dict[str, Any]]
    ready: bool
    unschedulable: bool
    kind: str = "real"  # wire.node_kind: "kwok" (no process runs there) or "real"
    runtime: str = ""  # status.nodeInfo.containerRuntimeVersion, e.g. containerd://1.6.20


@dataclass(slots=True)
class CheckpointRecord:
    namespace: str
    name: str
    uid: str
    job: str  # job name in the same namespace
    reason: str
    leave_running: bool
    created: float
    status: dict[str, Any]
    annotations: dict[str, str]

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def job_key(self) -> str:
        return f"{self.namespace}/{self.job}"

    @property
    def phase(self) -> str:
        return str(self.status.get("phase") or "Pending")

    @property
    def kept_run_time(self) -> float:
        """The job's progress this checkpoint keeps: its status says (set when it began); before that, the
        annotation the controller puts on the Checkpoints it creates; else nothing yet."""
        value = self.status.get("jobRunTimeSeconds")
        if value is None:
            value = self.annotations.get(CHECKPOINT_RUNTIME_ANNOTATION) or 0
        return float(value)


@dataclass(slots=True)
class QueueRecord:
    name: str
    spec: ClusterQueueSpec | None
    spec_error: str
    fields_set: frozenset[str] = frozenset()
    status: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class LocalQueueRecord:
    namespace: str
    name: str
    cluster_queue: str
    status: dict[str, Any] = field(default_factory=dict)
    encryption_key: EncryptionKeyRef | None = None  # spec.checkpoint.encryptionKey: its jobs' default key

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(slots=True)
class FlavorRecord:
    name: str
    node_labels: dict[str, str]
    node_taints: list[dict[str, Any]]
    tolerations: list[dict[str, Any]]

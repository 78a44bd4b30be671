"""The checkpoint backend interface: checkpoint a job's pods into artifacts, and tell the pods of a new
run how to start — restoring from those artifacts when the run resumes a checkpoint.

Backends are stateless between calls: everything they need to continue after a controller restart is
in the Checkpoint object (its spec, `status.startTime`) and in the job (its checkpoint policy), and the
controller hands it to them on every call, with an API client to act with (annotate or exec into a
pod, create a helper object, write the Checkpoint's status), and with the Checkpoint's status as the
controller last saw it (what node agents reported). A checkpoint the controller gives up on — its job
stopped running, or it outlived the policy's `timeoutSeconds` — is cancelled through the backend, so it
can stop a dump and drop partial artifacts.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from queue_controller.api.checkpoint import CheckpointStatus
from queue_controller.api.job import CheckpointPolicy, EncryptionKeyRef
from queue_controller.wire import NAMESPACE_KEY_DATA, NAMESPACE_KEY_SECRET


class ApiClient(Protocol):
    """The Kubernetes API as the controller's client (`operator.kube.Kube`) offers it to backends."""

    async def request(self, method: str, path: str, body: Any = None, content_type: str = "application/json",
                      params: Mapping[str, str] | None = None) -> dict[str, Any]:
        """One call; errors are raised (`operator.kube.ApiError`), throttling and outages retried."""
        ...

    async def create(self, path: str, body: Mapping[str, Any]) -> dict[str, Any] | None:
        """POST; None when the object already exists."""
        ...

    async def merge_patch(self, path: str, patch: Mapping[str, Any]) -> dict[str, Any]: ...

    async def delete(self, path: str, grace_seconds: int | None = None) -> None:
        """DELETE; an object already gone is not an error."""
        ...


@dataclass(frozen=True, slots=True)
class EncryptionKey:
    """The key a job's checkpoint images are encrypted with: a data key of a Secret in the job's
    namespace, which its pods mount (the controller never reads it). `required`: the pods refuse to start
    without it (ckq-run exits EXIT_KEY); False for the namespace's default Secret, used when it exists."""

    secret: str
    key: str
    source: str  # which setting chose it, for messages
    required: bool = True

    def describe(self, namespace: str) -> str:
        return f"Secret {namespace}/{self.secret} (data key {self.key!r}, from {self.source})"


def encryption_key(job_key: EncryptionKeyRef | None, queue: str, queue_key: EncryptionKeyRef | None
                   ) -> EncryptionKey:
    """Which key encrypts a job's images: the job's own spec.checkpoint.encryptionKey, else its
    LocalQueue's spec.checkpoint.encryptionKey, else the namespace's default Secret (optional)."""
    if job_key is not None:
        return EncryptionKey(job_key.secret_name, job_key.key, "the job's spec.checkpoint.encryptionKey")
    if queue_key is not None:
        return EncryptionKey(queue_key.secret_name, queue_key.key,
                             f"LocalQueue {queue}'s spec.checkpoint.encryptionKey")
    return EncryptionKey(NAMESPACE_KEY_SECRET, NAMESPACE_KEY_DATA, "the namespace's default key Secret",
                         required=False)


@dataclass(frozen=True, slots=True)
class PodRef:
    """One pod of the job."""

    name: str
    pod_set: str
    index: int
    node: str
    containers: tuple[str, ...]
    memory_bytes: int  # requested memory: what a process image is assumed to hold
    gpus: int = 0


@dataclass(frozen=True, slots=True)
class CheckpointRequest:
    namespace: str
    job: str
    checkpoint: str  # Checkpoint object name
    reason: str
    leave_running: bool
    pods: tuple[PodRef, ...]
    started_at: float  # when the backend began (status.startTime), epoch seconds
    timeout_s: float
    policy: CheckpointPolicy = field(default_factory=CheckpointPolicy)  # the job's spec.checkpoint
    # The Checkpoint's status as the controller last saw it (watched): what node agents reported so far.
    observed: CheckpointStatus = field(default_factory=CheckpointStatus)


@dataclass(frozen=True, slots=True)
class ArtifactInfo:
    pod_set: str
    index: int
    container: str
    node: str
    uri: str
    sha256: str
    size_bytes: int
    encryption_key_id: str | None = None  # the key that encrypted the image; None: stored unencrypted


@dataclass(frozen=True, slots=True)
class CheckpointResult:
    ok: bool
    duration_s: float
    size_bytes: int = 0
    artifacts: tuple[ArtifactInfo, ...] = ()
    message: str = ""


@dataclass(frozen=True, slots=True)
class RestoreSource:
    """The checkpoint a new pod restores from, with that pod's artifacts (one per container)."""

    checkpoint: str
    artifacts: tuple[ArtifactInfo, ...] = ()


@dataclass(frozen=True, slots=True)
class LaunchRequest:
    """One pod about to be created for a run of the job."""

    namespace: str
    job: str
    pod: PodRef
    policy: CheckpointPolicy  # the job's spec.checkpoint
    run_time_s: float  # the job's progress so far: what a restored pod resumes at
    job_annotations: Mapping[str, str] = field(default_factory=dict)
    restore: RestoreSource | None = None  # None: the pod starts fresh
    encryption: EncryptionKey | None = None  # None: images unencrypted (the backend stores none)


@dataclass(frozen=True, slots=True)
class PodInfo:
    """What a new pod gets from its backend: annotations, environment for its containers, and the pod
    spec it runs (`rewrite`, from the template's as the controller placed it; None: unchanged)."""

    annotations: Mapping[str, str] = field(default_factory=dict)
    env: Mapping[str, str] = field(default_factory=dict)
    rewrite: Callable[[Mapping[str, Any]], dict[str, Any]] | None = None


class LaunchRefused(Exception):
    """The backend cannot run this pod (its template, the node it was placed on, the cluster's settings).
    `reason` is a CamelCase condition reason; the message says why, for the user."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class RestoreImpossible(Exception):
    """The checkpoint to restore lacks what this pod needs (an artifact): it cannot be restored from."""


class CheckpointBackend(Protocol):
    name: str
    # True when a completed checkpoint with leaveRunning false has stopped the job's processes: its
    # pods may then be deleted without a grace period. False: they still run and get their grace.
    stops_workload: bool
    # True when the dump reads the pods' own processes (ckq-run, driven by the node agents): a pod that
    # died before any agent froze or dumped its containers can then never be covered, and the checkpoint
    # is failed at once rather than at its timeout. False: the checkpoint does not touch the pods.
    dumps_pods: bool

    def estimate(self, pods: Sequence[PodRef], *, policy: CheckpointPolicy) -> tuple[float, float]:
        """Expected (checkpoint, restore) seconds, used by the engine until a real one is measured."""
        ...

    async def begin(self, request: CheckpointRequest, *, api: ApiClient) -> None:
        """Start checkpointing. Idempotent: may be called again for the same request after a restart."""
        ...

    async def progress(self, request: CheckpointRequest, now: float, *, api: ApiClient) -> CheckpointResult | None:
        """The result once finished (ok or not), None while still running."""
        ...

    async def cancel(self, request: CheckpointRequest, *, api: ApiClient) -> None:
        """Give up on a checkpoint in flight: its job stopped, or it ran past the policy's timeout.
        Best effort and idempotent; it may come after a restart for a checkpoint never begun."""
        ...

    def pod_info(self, request: LaunchRequest) -> PodInfo:
        """How a new pod of the job starts: from `request.restore` when it resumes a checkpoint. Raises
        LaunchRefused when it cannot run the pod, RestoreImpossible when the checkpoint lacks its images
        (`rewrite` may raise LaunchRefused too)."""
        ...

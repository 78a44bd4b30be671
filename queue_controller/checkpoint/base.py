"""The checkpoint backend interface: checkpoint a job's pods into artifacts, and tell new pods how to
restore from them. Backends are stateless between calls: everything they need to continue after a
controller restart is in the Checkpoint object (its spec, status.startTime and artifacts)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True, slots=True)
class PodRef:
    """One pod of the job being checkpointed."""

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


@dataclass(frozen=True, slots=True)
class ArtifactInfo:
    pod_set: str
    index: int
    container: str
    node: str
    uri: str
    sha256: str
    size_bytes: int


@dataclass(frozen=True, slots=True)
class CheckpointResult:
    ok: bool
    duration_s: float
    size_bytes: int = 0
    artifacts: tuple[ArtifactInfo, ...] = ()
    message: str = ""


@dataclass(frozen=True, slots=True)
class RestoreInfo:
    """What a restored pod gets: annotations and environment for its containers."""

    annotations: Mapping[str, str] = field(default_factory=dict)
    env: Mapping[str, str] = field(default_factory=dict)


class CheckpointBackend(Protocol):
    name: str

    def estimate(self, pods: Sequence[PodRef]) -> tuple[float, float]:
        """Expected (checkpoint, restore) seconds, used by the engine until a real one is measured."""

    async def begin(self, request: CheckpointRequest) -> None:
        """Start checkpointing. Idempotent: may be called again for the same request after a restart."""

    async def progress(self, request: CheckpointRequest, now: float) -> CheckpointResult | None:
        """The result once finished (ok or not), None while still running."""

    async def cancel(self, request: CheckpointRequest) -> None:
        """Give up on a checkpoint in flight (the workload keeps running)."""

    def restore_info(self, namespace: str, job: str, checkpoint: str, pod_set: str, index: int) -> RestoreInfo:
        """How a new pod restores from `checkpoint` instead of starting fresh."""

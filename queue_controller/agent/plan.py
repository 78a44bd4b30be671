"""The node agent's decisions, as pure functions over API objects: which Checkpoints and pods it acts
on, and how it changes a Checkpoint's status (always through the api/checkpoint.py models).

Several agents (one per node) write the same Checkpoint, so every status change here is a merge that
can be applied again to a fresher copy after a 409: appending an artifact that is already there, or
setting Running on a Checkpoint that is already Running, changes nothing.

`next_step` is the gang barrier (see agent.py): from the Checkpoint's status alone, what this node's
agent does next for it, so a restarted agent (or one that lost a race) computes the same answer.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from queue_controller import wire
from queue_controller.api.checkpoint import (
    Artifact,
    Checkpoint,
    CheckpointStatus,
    FrozenContainer,
    RestoreConstraints,
)
from queue_controller.runtime.manifest import Manifest

ACTIVE: tuple[str | None, ...] = (None, *wire.IN_FLIGHT_CHECKPOINT_PHASES)  # no status yet counts as Pending
MAX_CONSTRAINT_LABELS = 32
MAX_MESSAGE = 32768

# Node labels a restore target must share with the node a checkpoint was taken on.
ARCH_LABEL = "kubernetes.io/arch"
CPU_LABELS = (  # node-feature-discovery, when installed
    "feature.node.kubernetes.io/cpu-model.vendor_id",
    "feature.node.kubernetes.io/cpu-model.family",
    "feature.node.kubernetes.io/cpu-model.id",
)
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"  # NVIDIA GPU feature discovery
GPU_DRIVER_PREFIX = "nvidia.com/cuda.driver"  # cuda.driver.{major,minor,rev}, cuda.driver-version.*
GPU_RESOURCE_PREFIX = "nvidia.com/"


@dataclass(frozen=True)
class PodInfo:
    """What the agent needs of one pod the controller created."""

    namespace: str
    name: str
    node: str | None
    job: str
    pod_set: str
    index: int
    attempt: int
    phase: str | None
    deleting: bool
    containers: tuple[str, ...]
    gpu: bool  # some container asks for an nvidia.com/ resource
    uid: str = ""
    restore_from: str | None = None  # the Checkpoint a restored pod resumes (wire.RESTORE_FROM_ANNOTATION)

    @classmethod
    def from_dict(cls, pod: Mapping[str, Any]) -> PodInfo | None:
        """From a pod as JSON (camelCase); None when it lacks the controller's labels."""
        meta = pod.get("metadata") or {}
        labels = meta.get("labels") or {}
        if labels.get(wire.MANAGED_LABEL) != "true":
            return None
        try:
            job = labels[wire.JOB_LABEL]
            pod_set = labels[wire.POD_SET_LABEL]
            index = int(labels[wire.POD_INDEX_LABEL])
            attempt = int(labels[wire.ATTEMPT_LABEL])
        except (KeyError, TypeError, ValueError):
            return None
        spec = pod.get("spec") or {}
        containers = tuple(str(c.get("name")) for c in spec.get("containers") or () if c.get("name"))
        gpu = False
        for c in spec.get("containers") or ():
            res = c.get("resources") or {}
            for part in ("limits", "requests"):
                if any(str(k).startswith(GPU_RESOURCE_PREFIX) for k in res.get(part) or {}):
                    gpu = True
        return cls(namespace=str(meta.get("namespace") or ""), name=str(meta.get("name") or ""),
                   node=spec.get("nodeName"), job=job, pod_set=pod_set, index=index, attempt=attempt,
                   phase=(pod.get("status") or {}).get("phase"), deleting=bool(meta.get("deletionTimestamp")),
                   containers=containers, gpu=gpu, uid=str(meta.get("uid") or ""),
                   restore_from=(meta.get("annotations") or {}).get(wire.RESTORE_FROM_ANNOTATION) or None)

    @property
    def running(self) -> bool:
        return self.phase == "Running" and not self.deleting


def acts_on(ckpt: Checkpoint) -> bool:
    """Pending or Running (no status yet counts as Pending): Completed and Failed are final."""
    return (ckpt.status.phase if ckpt.status else None) in ACTIVE


def current_attempt(job_pods: Iterable[PodInfo]) -> int | None:
    """The job's current attempt: the highest ckq.io/attempt among its pods (all nodes)."""
    attempts = [p.attempt for p in job_pods]
    return max(attempts) if attempts else None


def local_pods(ckpt: Checkpoint, pods: Iterable[PodInfo], attempt: int | None = None) -> list[PodInfo]:
    """The Checkpoint's job's pods among `pods` (this node's), of `attempt` when given, by slot."""
    ns, job = ckpt.metadata.namespace, ckpt.spec.job_name
    out = [p for p in pods if p.namespace == ns and p.job == job and (attempt is None or p.attempt == attempt)]
    return sorted(out, key=lambda p: (p.pod_set, p.index))


def recorded(status: CheckpointStatus | None) -> set[tuple[str, int, str]]:
    """(podSet, index, container) of the artifacts already in the status."""
    return {(a.pod_set, a.index, a.container) for a in (status.artifacts if status else [])}


def node_constraints(node_labels: Mapping[str, str], gpu: bool) -> dict[str, str]:
    """The labels of this node that a restore target must carry: CPU architecture (and model, where
    node-feature-discovery labels it); GPU product and driver only when the job's pods use GPUs."""
    keys = [ARCH_LABEL, *CPU_LABELS]
    if gpu:
        keys.append(GPU_PRODUCT_LABEL)
        keys.extend(sorted(k for k in node_labels if k.startswith(GPU_DRIVER_PREFIX)))
    return {k: str(node_labels[k]) for k in keys if k in node_labels}


# ---- status changes (each returns whether it changed anything) ------------------------------------


def _status(ckpt: Checkpoint) -> CheckpointStatus:
    if ckpt.status is None:
        ckpt.status = CheckpointStatus()
    return ckpt.status


def merge_constraints(ckpt: Checkpoint, labels: Mapping[str, str]) -> tuple[bool, list[str]]:
    """Add this node's labels to restoreConstraints without replacing another node's: (changed,
    conflicting keys, whose recorded value is kept)."""
    status = _status(ckpt)
    rc = status.restore_constraints or RestoreConstraints()
    merged = dict(rc.node_labels)
    conflicts = []
    for k, v in labels.items():
        if k not in merged:
            if len(merged) < MAX_CONSTRAINT_LABELS:
                merged[k] = v
        elif merged[k] != v:
            conflicts.append(k)
    if merged == rc.node_labels and status.restore_constraints is not None:
        return False, conflicts
    status.restore_constraints = RestoreConstraints(node_labels=merged)
    return True, conflicts


def mark_running(ckpt: Checkpoint, now: datetime) -> bool:
    """Pending -> Running, with startTime if unset; Running, Completed and Failed stay as they are."""
    status = _status(ckpt)
    changed = False
    if status.phase in (None, "Pending"):
        status.phase = "Running"
        changed = True
    if status.start_time is None and status.phase == "Running":
        status.start_time = now
        changed = True
    return changed


def artifact_for(pod: PodInfo, container: str, node: str, uri: str, manifest: Manifest) -> Artifact:
    key_id = (manifest.encryption or {}).get("keyId")  # what a restore must decrypt it with
    return Artifact(pod_set=pod.pod_set, index=pod.index, container=container, node=node, uri=uri,
                    sha256=manifest.sha256, size_bytes=int(manifest.sizeBytes), encryption_key_id=key_id or None)


def add_artifact(ckpt: Checkpoint, artifact: Artifact, duration_seconds: float | None) -> bool:
    """Append one container's artifact unless its (podSet, index, container) is there already.
    sizeBytes becomes the sum of the artifacts' sizes; durationSeconds the longest dump so far (the
    containers are dumped in parallel, so that is how long the job was frozen)."""
    status = _status(ckpt)
    if (artifact.pod_set, artifact.index, artifact.container) in recorded(status):
        return False
    status.artifacts = [*status.artifacts, artifact]
    status.size_bytes = sum(a.size_bytes or 0 for a in status.artifacts)
    if duration_seconds is not None:
        status.duration_seconds = max(status.duration_seconds or 0.0, round(duration_seconds, 3))
    return True


def mark_failed(ckpt: Checkpoint, message: str, now: datetime) -> bool:
    """-> Failed with a message, unless the Checkpoint already ended (Completed or Failed).

    Never `completionTime`: the controller stamps it when it has applied the failure to the job (that
    is how a restarted controller knows whether it still has to), so an agent leaves it unset."""
    del now  # kept in the signature: callers pass the clock they read once
    status = _status(ckpt)
    if status.phase in ("Completed", "Failed"):
        return False
    status.phase = "Failed"
    status.message = message[:MAX_MESSAGE]
    return True


# ---- the gang barrier -------------------------------------------------------------------------------

Member = tuple[str, int, str]  # (podSet, index, container): one container of one pod of the job


def members(job_pods: Iterable[PodInfo], attempt: int | None) -> set[Member]:
    """Every container of every pod of the job's run `attempt` (all nodes): what the checkpoint covers."""
    return {(p.pod_set, p.index, c) for p in job_pods if p.attempt == attempt for c in p.containers}


def frozen(status: CheckpointStatus | None) -> set[Member]:
    return {(f.pod_set, f.index, f.container) for f in (status.frozen if status else [])}


def _describe(ms: Iterable[Member]) -> str:
    out = sorted(ms)
    text = ", ".join(f"{ps}-{i}/{c}" for ps, i, c in out[:10])
    return text + (f" and {len(out) - 10} more" if len(out) > 10 else "")


@dataclass
class Step:
    """What one agent does next for one Checkpoint (empty: wait for the other agents)."""

    freeze: list[Member] = field(default_factory=list)  # stop these local containers, record them
    dump: list[Member] = field(default_factory=list)  # the barrier is reached: dump these
    fail: str | None = None  # fail the checkpoint with this message
    release: str | None = None  # "thaw" or "stop" the local containers frozen for it
    discard: bool = False  # and delete this node's images of it

    def __bool__(self) -> bool:
        return bool(self.freeze or self.dump or self.fail or self.release)


def next_step(ckpt: Checkpoint, node: str, local: set[Member], gang: set[Member], now: datetime,
              barrier_timeout: float) -> Step:
    """The barrier, one node's view of it. `local`: this node's members that can take part (running
    under ckq-run, or already asked by a predecessor); `gang`: every member of the job's run.

    In flight: freeze what is local and not frozen yet; once every member of the gang is frozen, dump
    what is local and not recorded; a barrier not reached within `barrier_timeout` of the first
    freeze fails the checkpoint. Ended: release what this node froze, once (`released`): a completed
    checkpoint stops its containers (or, leaveRunning, continues them), a failed one continues them
    and discards this node's images."""
    st = ckpt.status
    if not acts_on(ckpt):
        assert st is not None
        mine = [f for f in st.frozen if f.node == node]
        if node in st.released or not (mine or (st.phase == "Failed" and any(a.node == node for a in st.artifacts))):
            return Step()
        stop = st.phase == "Completed" and not ckpt.spec.leave_running
        return Step(release="stop" if stop else "thaw", discard=st.phase == "Failed")
    done = frozen(st)
    todo = sorted(local - done)
    if todo:
        return Step(freeze=todo)
    if gang and gang <= done:
        return Step(dump=sorted(local - recorded(st)))
    if st is not None and st.frozen:
        first = min(f.frozen_at for f in st.frozen)
        waited = (now - first).total_seconds()
        if waited > barrier_timeout:
            missing = gang - done
            return Step(fail=(f"freeze barrier not reached within {barrier_timeout:g}s: {len(done & gang)} of "
                              f"{len(gang)} containers frozen; not frozen: {_describe(missing)} (not running "
                              "under ckq-run, or their node's agent is not acting)"))
    return Step()


def to_release(status: Mapping[str, Any], node: str) -> bool:
    """An ended Checkpoint (its status as JSON) that this node froze containers for (or, failed, holds
    images of) and has not released yet: cheap, for the informer's filter; next_step decides."""
    if node in (status.get("released") or ()):
        return False
    return any(f.get("node") == node for f in status.get("frozen") or ()) or (
        status.get("phase") == "Failed" and any(a.get("node") == node for a in status.get("artifacts") or ()))


def add_frozen(ckpt: Checkpoint, entries: Iterable[FrozenContainer], gang_size: int) -> bool:
    """Record containers as frozen (each once; the first record of a container wins) and the gang's size."""
    status = _status(ckpt)
    have = frozen(status)
    new = [f for f in entries if (f.pod_set, f.index, f.container) not in have]
    changed = bool(new) or status.members != gang_size
    status.frozen = [*status.frozen, *new]
    status.members = max(status.members or 0, gang_size)
    return changed


def mark_released(ckpt: Checkpoint, node: str, discarded: bool) -> bool:
    """This node released what it froze; on a failure its artifacts (whose images it deleted) go too."""
    status = _status(ckpt)
    changed = node not in status.released
    if changed:
        status.released = [*status.released, node]
    if discarded and any(a.node == node for a in status.artifacts):
        status.artifacts = [a for a in status.artifacts if a.node != node]
        status.size_bytes = sum(a.size_bytes or 0 for a in status.artifacts)
        changed = True
    return changed

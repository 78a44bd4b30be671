"""The checkpoint backend of each job, and how the controller describes a job to it.

A job's `spec.checkpoint.mode` names its backend; a mode with no backend registered (everything but
Simulated, for now) falls back to the Simulated one, so such jobs still queue, preempt and resume (on
kwok nodes that is all there is to do). Backends get plain descriptions (`checkpoint.base`), never the
controller's records: the pods with their real names and nodes, the job's checkpoint policy, the
artifacts a restored pod restores from, and the controller's API client to act with.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from queue_controller.api.checkpoint import Artifact
from queue_controller.checkpoint.base import (
    ApiClient,
    ArtifactInfo,
    CheckpointBackend,
    CheckpointRequest,
    LaunchRequest,
    PodInfo,
    PodRef,
    RestoreSource,
)
from queue_controller.engine import GPU
from queue_controller.operator.records import CheckpointRecord, JobRecord
from queue_controller.wire import parse_time, pod_name


def artifacts(ckpt: CheckpointRecord) -> tuple[ArtifactInfo, ...]:
    """The artifacts a Checkpoint's status lists."""
    out = []
    for raw in ckpt.status.get("artifacts") or ():
        a = Artifact.model_validate(raw)
        out.append(ArtifactInfo(a.pod_set, a.index, a.container, a.node or "", a.uri, a.sha256 or "",
                                a.size_bytes or 0))
    return tuple(out)


class JobBackends:
    def __init__(self, backends: Mapping[str, CheckpointBackend], api: ApiClient) -> None:
        self.by_mode = dict(backends)
        self.api = api

    def for_job(self, job: JobRecord) -> CheckpointBackend:
        mode = job.spec.checkpoint.mode if job.spec is not None else "Simulated"
        return self.by_mode.get(mode) or self.by_mode["Simulated"]

    def _pod(self, job: JobRecord, pod_set: str, index: int, node: str) -> PodRef:
        assert job.spec is not None
        ps = next((p for p in job.spec.pod_sets if p.name == pod_set), None)
        containers = tuple(c.name for c in ps.template.spec.containers) if ps is not None else ()
        req = job.requests.get(pod_set) or {}
        return PodRef(pod_name(job.name, int(job.status.get("attempt") or 0), pod_set, index), pod_set, index,
                      node, containers, req.get("memory", 0) // 1000, req.get(GPU, 0) // 1000)

    def _placed(self, job: JobRecord) -> list[tuple[dict[str, Any], int, str]]:
        """(assignment, index, node) of every pod of the job's admission whose pod set exists."""
        assert job.spec is not None
        sets = {ps.name for ps in job.spec.pod_sets}
        return [(a, i, node) for a in (job.status.get("admission") or {}).get("podSetAssignments") or ()
                if a["name"] in sets for i, node in enumerate(a.get("nodes") or ())]

    def pod_refs(self, job: JobRecord) -> list[PodRef]:
        """The pods of the job's current run, as its admission placed them."""
        return [self._pod(job, a["name"], i, node) for a, i, node in self._placed(job)]

    def estimate(self, job: JobRecord) -> tuple[float, float]:
        """(checkpoint, restore) seconds the job's backend expects, until one is measured."""
        if job.spec is None:
            return 0.0, 0.0
        refs = self.pod_refs(job)
        if not refs:  # not placed yet: one pod per pod set stands for its size
            refs = [PodRef("", ps.name, 0, "", (), (job.requests.get(ps.name) or {}).get("memory", 0) // 1000)
                    for ps in job.spec.pod_sets]
        return self.for_job(job).estimate(refs, policy=job.spec.checkpoint)

    def request(self, ckpt: CheckpointRecord, job: JobRecord, now: float) -> CheckpointRequest:
        """What the backend is asked to do for `ckpt` (the same request after a controller restart)."""
        assert job.spec is not None
        start = parse_time(ckpt.status.get("startTime")) or now
        policy = job.spec.checkpoint
        return CheckpointRequest(job.namespace, job.name, ckpt.name, ckpt.reason, ckpt.leave_running,
                                 tuple(self.pod_refs(job)), start, float(policy.timeout_seconds), policy)

    def pod_info(self, job: JobRecord, pod_set: str, index: int, node: str, restore: RestoreSource | None
                 ) -> PodInfo:
        """What the job's backend adds to a new pod of its current run."""
        assert job.spec is not None
        if restore is not None:  # this pod's own images
            restore = RestoreSource(restore.checkpoint, tuple(a for a in restore.artifacts
                                                              if (a.pod_set, a.index) == (pod_set, index)))
        return self.for_job(job).pod_info(LaunchRequest(
            job.namespace, job.name, self._pod(job, pod_set, index, node), job.spec.checkpoint,
            float(job.status.get("runTimeSeconds") or 0.0), job.annotations, restore))

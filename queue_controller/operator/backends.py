"""The checkpoint backend of each job, and how the controller describes a job to it.

A job's `spec.checkpoint.mode` names its backend; a mode with no backend registered (everything but
Simulated, for now) falls back to the Simulated one, so such jobs still queue, preempt and resume (on
kwok nodes that is all there is to do). The backends get plain descriptions (`checkpoint.base`), never
the controller's records.
"""

from __future__ import annotations

from collections.abc import Mapping

from queue_controller.checkpoint.base import CheckpointBackend, CheckpointRequest, PodRef
from queue_controller.engine import GPU
from queue_controller.operator.records import CheckpointRecord, JobRecord
from queue_controller.wire import parse_time, pod_name


class JobBackends:
    def __init__(self, backends: Mapping[str, CheckpointBackend]) -> None:
        self.by_mode = dict(backends)

    def for_job(self, job: JobRecord) -> CheckpointBackend:
        mode = job.spec.checkpoint.mode if job.spec is not None else "Simulated"
        return self.by_mode.get(mode) or self.by_mode["Simulated"]

    def pod_refs(self, job: JobRecord) -> list[PodRef]:
        """The pods of the job's current run, as its admission placed them."""
        assert job.spec is not None
        sets = {ps.name: ps for ps in job.spec.pod_sets}
        attempt = int(job.status.get("attempt") or 0)
        refs = []
        for a in (job.status.get("admission") or {}).get("podSetAssignments") or ():
            ps = sets.get(a["name"])
            if ps is None:
                continue
            req = job.requests.get(ps.name) or {}
            containers = tuple(c.name for c in ps.template.spec.containers)
            for i, node in enumerate(a.get("nodes") or ()):
                refs.append(PodRef(pod_name(job.name, attempt, ps.name, i), ps.name, i, node, containers,
                                   req.get("memory", 0) // 1000, req.get(GPU, 0) // 1000))
        return refs

    def estimate(self, job: JobRecord) -> tuple[float, float]:
        """(checkpoint, restore) seconds the job's backend expects, until one is measured."""
        if job.spec is None:
            return 0.0, 0.0
        refs = self.pod_refs(job)
        if not refs:  # not placed yet: one pod per pod set stands for its size
            refs = [PodRef("", ps.name, 0, "", (), (job.requests.get(ps.name) or {}).get("memory", 0) // 1000)
                    for ps in job.spec.pod_sets]
        return self.for_job(job).estimate(refs)

    def request(self, ckpt: CheckpointRecord, job: JobRecord, now: float) -> CheckpointRequest:
        """What the backend is asked to do for `ckpt` (the same request after a controller restart)."""
        assert job.spec is not None
        start = parse_time(ckpt.status.get("startTime")) or now
        return CheckpointRequest(job.namespace, job.name, ckpt.name, ckpt.reason, ckpt.leave_running,
                                 tuple(self.pod_refs(job)), start, float(job.spec.checkpoint.timeout_seconds))

"""The Simulated backend, for kwok nodes that run no processes.

It models a checkpoint's size from the pods' requested memory and its duration with the shared cost
model (`checkpoint.cost`: a fixed overhead plus the largest pod's memory over a write bandwidth), and
records one artifact per container with a deterministic digest. Being a pure function of the
Checkpoint's start time, it continues correctly across controller restarts.

It also owns the simulated world's annotations. A job declares the run time it needs
(`ckq.io/simulated-runtime-seconds`); each pod of a run is told how much of it is left
(`kwok.ckq.io/run-seconds`, which kwok's pod stage turns into the pod finishing), so a restored job
finishes sooner than a restarted one. Both are seconds and may be fractional: they are honoured to the
millisecond ("0.2" is 200 ms; whole seconds are written as before, "42"). Restored pods name their
checkpoint (`ckq.io/restore-from`).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence

from queue_controller.api.job import CheckpointPolicy
from queue_controller.checkpoint.base import (
    ApiClient,
    ArtifactInfo,
    CheckpointRequest,
    CheckpointResult,
    LaunchRequest,
    PodInfo,
    PodRef,
)
from queue_controller.checkpoint.cost import GIB, CheckpointCostModel
from queue_controller.wire import RESTORE_FROM_ANNOTATION

# Artifacts of simulated checkpoints: nothing is stored, so they restore only where nothing runs.
SIM_URI_PREFIX = "sim://"
# A completed simulated checkpoint's message: it says plainly that nothing was dumped.
SIMULATED_MESSAGE = "simulated: no process was dumped"
# On a restored pod: the Checkpoint it restores from.
RESTORE_ANNOTATION = RESTORE_FROM_ANNOTATION  # the wire contract's name
# On a CheckpointableJob: the run time it needs, for kwok nodes that run nothing.
SIMULATED_RUNTIME_ANNOTATION = "ckq.io/simulated-runtime-seconds"
# On a pod: kwok's pod stage finishes it this many seconds after it started (queue_controller.devcluster).
RUN_SECONDS_ANNOTATION = "kwok.ckq.io/run-seconds"


# The finest run time a pod is given: kwok's stage delay is honoured to the millisecond.
RUN_TIME_RESOLUTION_S = 0.001


def remaining_run_time(job_annotations: Mapping[str, str], run_time_s: float) -> float | None:
    """Seconds of simulated work a job has left, or None when it declares none.

    A job that has run most of its time still gets at least 1 s (a resumed run does some work), or its
    whole declared time when that is shorter: a 200 ms job runs 200 ms, not a rounded-up second.
    """
    needed = job_annotations.get(SIMULATED_RUNTIME_ANNOTATION)
    if needed is None:
        return None
    try:
        total = float(needed)
    except ValueError:
        return None
    if not math.isfinite(total):
        return None
    return max(total - run_time_s, min(total, 1.0), RUN_TIME_RESOLUTION_S)


def format_run_seconds(seconds: float) -> str:
    """The pod annotation's value: seconds to the millisecond, whole seconds without a fraction ("42", "0.2")."""
    ms = max(round(seconds * 1000), 1)
    whole, frac = divmod(ms, 1000)
    return str(whole) if frac == 0 else f"{whole}.{frac:03d}".rstrip("0")


class SimulatedBackend:
    name = "Simulated"
    stops_workload = False  # nothing is dumped: on a real node (mode Simulated) the processes still run
    dumps_pods = False

    def __init__(self, bandwidth_bytes_per_s: float = 2 * GIB, fixed_overhead_s: float = 1.0,
                 fail_jobs: frozenset[str] = frozenset()) -> None:
        # A restore reads what the checkpoint wrote, at the same speed.
        self.cost = CheckpointCostModel(fixed_overhead_s, bandwidth_bytes_per_s, fixed_overhead_s,
                                        bandwidth_bytes_per_s)
        # Jobs ("namespace/name") whose checkpoints fail: lets tests and demos exercise failure paths.
        self.fail_jobs = fail_jobs

    def _duration(self, pods: Sequence[PodRef]) -> float:
        # Pods dump in parallel, each to its own node's storage: the largest one sets the pace.
        return self.cost.checkpoint_largest_s(p.memory_bytes for p in pods)

    def estimate(self, pods: Sequence[PodRef], *, policy: CheckpointPolicy | None = None) -> tuple[float, float]:
        images = [p.memory_bytes for p in pods]
        return self.cost.checkpoint_largest_s(images), self.cost.restore_largest_s(images)

    async def begin(self, request: CheckpointRequest, *, api: ApiClient | None = None) -> None:
        return None  # nothing to start: progress() is a function of the start time

    async def progress(self, request: CheckpointRequest, now: float, *,
                       api: ApiClient | None = None) -> CheckpointResult | None:
        duration = self._duration(request.pods)
        if f"{request.namespace}/{request.job}" in self.fail_jobs:
            if now - request.started_at >= min(duration, request.timeout_s):
                return CheckpointResult(False, now - request.started_at, message="simulated dump failure")
            return None
        if duration > request.timeout_s and now - request.started_at >= request.timeout_s:
            return CheckpointResult(False, request.timeout_s,
                                    message=f"timed out after {request.timeout_s:.0f}s (needs {duration:.0f}s)")
        if now - request.started_at < duration:
            return None
        artifacts = []
        for pod in request.pods:
            share = pod.memory_bytes // max(len(pod.containers), 1)
            for container in pod.containers:
                uri = f"{SIM_URI_PREFIX}{request.namespace}/{request.checkpoint}/{pod.pod_set}-{pod.index}/{container}"
                digest = hashlib.sha256(uri.encode()).hexdigest()
                artifacts.append(ArtifactInfo(pod.pod_set, pod.index, container, pod.node, uri, digest, share))
        size = sum(a.size_bytes for a in artifacts)
        return CheckpointResult(True, duration, size, tuple(artifacts), message=SIMULATED_MESSAGE)

    async def cancel(self, request: CheckpointRequest, *, api: ApiClient | None = None) -> None:
        return None  # nothing runs: progress() stops being asked

    def restore_info(self, namespace: str, job: str, checkpoint: str, pod_set: str, index: int) -> PodInfo:
        """What a pod restored from `checkpoint` gets: the checkpoint's name and where its image is."""
        return PodInfo({RESTORE_ANNOTATION: checkpoint},
                       {"CKQ_RESTORE_ID": checkpoint, "CKQ_RESTORE_URI": f"{SIM_URI_PREFIX}{namespace}/{checkpoint}/"
                        f"{pod_set}-{index}"})

    def pod_info(self, request: LaunchRequest) -> PodInfo:
        annotations: dict[str, str] = {}
        env: dict[str, str] = {}
        if request.restore is not None:
            info = self.restore_info(request.namespace, request.job, request.restore.checkpoint,
                                     request.pod.pod_set, request.pod.index)
            annotations.update(info.annotations)
            env.update(info.env)
        remaining = remaining_run_time(request.job_annotations, request.run_time_s)
        if remaining is not None:
            annotations[RUN_SECONDS_ANNOTATION] = format_run_seconds(remaining)
        return PodInfo(annotations, env)

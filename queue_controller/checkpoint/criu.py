"""The CRIU backend: whole pods checkpointed by `ckq-run` in each container, driven by the node agents.

The controller and the agents meet only in Kubernetes objects. The controller creates the Checkpoint
(labelled with the job and the attempt whose pods it covers) and marks it Running with its start time;
that is all `begin` has to do. An agent on each node that runs pods of the job dumps their containers
through ckq-run's control socket (`wire.container_store_dir(...)/ckq-run.sock`), moves the images into
the store and adds one artifact per container to the Checkpoint's status (uri `wire.artifact_uri`,
sha256, sizeBytes), with the node's restore constraints; or it marks the Checkpoint Failed, with a
message. `progress` reads that status: Failed is a failure with the agent's message; artifacts for
every container of every pod of the run make it complete (the controller then writes Completed and
the totals); anything else is still running. `cancel` marks the Checkpoint Failed, which agents skip.

New pods run under ckq-run (`checkpoint.injection`): the runtime image and the store root come from
the cluster's ConfigMap; a restored pod's containers start `ckq-run --restore <id>` with the id of that
container's artifact — which must lie in the pod's own store directory (`_own_image`): a job never
restores another namespace's or another job's image. Images are encrypted with the job's key
(`checkpoint.base.encryption_key`: its own, its LocalQueue's, or its namespace's default Secret).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

from queue_controller.api import Checkpoint
from queue_controller.api.common import GROUP, VERSION
from queue_controller.api.job import CheckpointPolicy
from queue_controller.checkpoint.base import (
    ApiClient,
    ArtifactInfo,
    CheckpointRequest,
    CheckpointResult,
    LaunchRefused,
    LaunchRequest,
    PodInfo,
    PodRef,
    RestoreImpossible,
)
from queue_controller.checkpoint.cost import CheckpointCostModel
from queue_controller.checkpoint.injection import InjectionError, SignalMode, inject
from queue_controller.wire import RESTORE_FROM_ANNOTATION, artifact_uri, checkpoint_id_of, container_store_dir

MIB = 2**20
# A ckq-run checkpoint id (runtime/store.py new_id(); store.filesystem.CHECKPOINT_ID): one path part,
# never `.`, `..` or hidden.
_CHECKPOINT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")

# Until a job has a measured checkpoint (the engine then uses that), a guess from bench/criu_datapath.py
# (docs/checkpointing.md, "Dump speed": 1 GiB dumped in 2.3-4 s, restored in 2.1-3.2 s on a shared
# 2-core VM) plus what the control plane adds: the agent noticing the Checkpoint, moving the images; on
# restore, a pod starting and its init container copying the 70 MB runtime.
COST = CheckpointCostModel(latency_s=3.0, bandwidth_bytes_per_s=300 * MIB, restore_latency_s=6.0,
                           restore_bandwidth_bytes_per_s=350 * MIB)


def checkpoint_status_path(namespace: str, name: str) -> str:
    return f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{Checkpoint.PLURAL}/{name}/status"


class CriuBackend:
    name = "CRIU"
    stops_workload = True  # ckq-run stops the workload after a dump without leaveRunning (exit 75)
    dumps_pods = True  # the agents dump the containers' processes through ckq-run
    done_message = "CRIU: {n} container(s) dumped by ckq-run"

    def __init__(self, runtime_image: str, store_root: str, cost: CheckpointCostModel = COST, *,
                 node_local: bool = False) -> None:
        self.runtime_image = runtime_image
        self.store_root = store_root
        self.node_local = node_local  # storeMode node-local: mounts per node, restores await staging
        self.cost = cost

    def estimate(self, pods: Sequence[PodRef], *, policy: CheckpointPolicy | None = None) -> tuple[float, float]:
        images = [p.memory_bytes for p in pods]
        return self.cost.checkpoint_largest_s(images), self.cost.restore_largest_s(images)

    async def begin(self, request: CheckpointRequest, *, api: ApiClient | None = None) -> None:
        return None  # the Checkpoint object is the request: the node agents act on it

    async def progress(self, request: CheckpointRequest, now: float, *,
                       api: ApiClient | None = None) -> CheckpointResult | None:
        st = request.observed
        elapsed = max(now - request.started_at, 0.0)
        if st.phase == "Failed":
            return CheckpointResult(False, st.duration_seconds or elapsed,
                                    message=st.message or "failed by a node agent (no message)")
        have = {(a.pod_set, a.index, a.container): a for a in st.artifacts}
        need = [(p, c) for p in request.pods for c in p.containers]
        if not need or any((p.pod_set, p.index, c) not in have for p, c in need):
            return None  # agents are still at work
        artifacts = []
        for pod, container in need:
            a = have[(pod.pod_set, pod.index, container)]
            artifacts.append(ArtifactInfo(a.pod_set, a.index, a.container, a.node or pod.node, a.uri, a.sha256 or "",
                                          a.size_bytes or 0, a.encryption_key_id))
        size = sum(a.size_bytes for a in artifacts)
        # The agents' own measure of the dump when they give one; else from the start to now (polled).
        duration = st.duration_seconds if st.duration_seconds is not None else elapsed
        return CheckpointResult(True, duration, size, tuple(artifacts),
                                message=self.done_message.format(n=len(artifacts)))

    async def cancel(self, request: CheckpointRequest, *, api: ApiClient | None = None) -> None:
        """Mark the Checkpoint Failed: agents skip Failed ones (and release what they froze)."""
        if api is None:
            return
        await api.merge_patch(checkpoint_status_path(request.namespace, request.checkpoint),
                              {"status": {"phase": "Failed", "message": "cancelled by the controller"}})

    def pod_info(self, request: LaunchRequest) -> PodInfo:
        restore: dict[str, str] | None = None
        if request.restore is not None:
            mine = {a.container: a for a in request.restore.artifacts
                    if (a.pod_set, a.index) == (request.pod.pod_set, request.pod.index)}
            missing = [c for c in request.pod.containers if c not in mine]
            if missing:
                raise RestoreImpossible(
                    f"checkpoint {request.restore.checkpoint} has no image of container(s) {', '.join(missing)} "
                    f"of pod {request.pod.pod_set}-{request.pod.index}")
            restore = {c: self._own_image(request, a) for c, a in mine.items()}
            return PodInfo(annotations={RESTORE_FROM_ANNOTATION: request.restore.checkpoint},
                           rewrite=partial(self._rewrite, request, restore))
        return PodInfo(rewrite=partial(self._rewrite, request, restore))

    def _own_image(self, request: LaunchRequest, artifact: ArtifactInfo) -> str:
        """The ckq-run id of `artifact`, which must be an image of this very container of this job in this
        namespace: its uri exactly `wire.artifact_uri` of the pod's own store directory. Namespace
        isolation does not rest on the mount alone (the pod sees only its own directory): a Checkpoint
        whose artifacts name another namespace's or job's images — hand-written, or copied from another
        namespace — is refused here, before any pod is created."""
        try:
            own = container_store_dir(self.store_root, request.namespace, request.job, artifact.pod_set,
                                      artifact.index, artifact.container)
        except ValueError as e:
            raise RestoreImpossible(f"artifact of container {artifact.container!r}: {e}") from None
        ckpt_id = checkpoint_id_of(artifact.uri)
        if not _CHECKPOINT_ID.fullmatch(ckpt_id) or ".." in ckpt_id or artifact.uri != artifact_uri(own, ckpt_id):
            raise RestoreImpossible(
                f"the image of container {artifact.container} ({artifact.uri}) is not in this job's own store "
                f"directory {own}: a job restores only images its own namespace and job took")
        return ckpt_id

    def _signal_mode(self, request: LaunchRequest) -> SignalMode | None:
        """How ckq-run asks the app to save itself; None: CRIU dumps it (this backend)."""
        return None

    def _rewrite(self, request: LaunchRequest, restore: Mapping[str, str] | None,
                 spec: Mapping[str, Any]) -> dict[str, Any]:
        key = request.encryption
        try:
            return inject(spec, image=self.runtime_image, store_root=self.store_root, namespace=request.namespace,
                          job=request.job, pod_set=request.pod.pod_set, index=request.pod.index, restore=restore,
                          node_local=self.node_local,
                          encryption_key=(key.secret, key.key) if key is not None else None,
                          key_required=key.required if key is not None else True,
                          signal_mode=self._signal_mode(request))
        except InjectionError as e:
            raise LaunchRefused("PodTemplateNotCheckpointable", str(e)) from None

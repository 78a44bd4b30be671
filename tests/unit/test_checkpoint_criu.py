"""The CRIU backend: what it reads from the node agents' writes to a Checkpoint's status, how it cancels,
and the pods it launches (fresh and restored)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import pytest

from queue_controller.api.checkpoint import CheckpointStatus
from queue_controller.api.job import CheckpointPolicy
from queue_controller.checkpoint.base import (
    ArtifactInfo,
    CheckpointRequest,
    LaunchRefused,
    LaunchRequest,
    PodRef,
    RestoreImpossible,
    RestoreSource,
)
from queue_controller.checkpoint.criu import CriuBackend
from queue_controller.wire import artifact_uri, container_store_dir

pytestmark = pytest.mark.unit
CKQ_RUN = ["/ckq-runtime/bin/ckq-run", "--dir", "/ckq/checkpoints"]  # how a wrapped command starts
EXIT_NOTE = ["--exit-note", "/dev/termination-log"]  # ckq-run's last options (runtime/exits.py)

T = 1_790_000_000.0
STORE = "/srv/ckq"
PODS = (PodRef("j-1-w-0", "w", 0, "real-0", ("train", "log"), 2**30),
        PodRef("j-1-w-1", "w", 1, "real-1", ("train", "log"), 2**30))


def artifact(index: int, container: str, size: int, node: str = "real-0") -> dict[str, Any]:
    d = container_store_dir(STORE, "team", "j", "w", index, container)
    return {"podSet": "w", "index": index, "container": container, "node": node,
            "uri": artifact_uri(d, f"ck-{index}-{container}"), "sha256": "ab" * 32, "sizeBytes": size}


def request(status: Mapping[str, Any]) -> CheckpointRequest:
    return CheckpointRequest("team", "j", "j-1-preemption-1", "Preemption", False, PODS, T, 600.0,
                             CheckpointPolicy(), CheckpointStatus.model_validate(status))


def progress(status: Mapping[str, Any], now: float = T + 7) -> Any:
    return asyncio.run(CriuBackend("ckq.local/runtime:0.1.0", STORE).progress(request(status), now))


def test_running_until_every_container_of_every_pod_has_its_artifact() -> None:
    assert progress({"phase": "Running", "startTime": "2026-09-21T00:00:00Z"}) is None
    some = [artifact(0, "train", 100), artifact(0, "log", 1), artifact(1, "train", 100)]
    assert progress({"phase": "Running", "artifacts": some}) is None  # pod 1's "log" is missing
    # An artifact of a pod that is not in this run does not stand in for one that is.
    assert progress({"phase": "Running", "artifacts": [*some, artifact(2, "log", 1)]}) is None


def test_complete_with_the_sum_of_sizes_and_the_time_since_it_began() -> None:
    arts = [artifact(1, "log", 2, "real-1"), artifact(0, "train", 100), artifact(0, "log", 1),
            artifact(1, "train", 300, "real-1")]
    result = progress({"phase": "Running", "artifacts": arts})
    assert result.ok and result.size_bytes == 403 and result.duration_s == 7.0
    assert [(a.index, a.container, a.node) for a in result.artifacts] == [
        (0, "train", "real-0"), (0, "log", "real-0"), (1, "train", "real-1"), (1, "log", "real-1")]
    assert result.artifacts[0].uri == "file:///srv/ckq/team/j/w-0/train/checkpoints/ck-0-train"
    assert result.message == "CRIU: 4 container(s) dumped by ckq-run"
    # When the agents measured the dump themselves, that is its duration.
    assert progress({"phase": "Running", "artifacts": arts, "durationSeconds": 2.5}).duration_s == 2.5


def test_failed_by_an_agent_is_a_failure_with_its_message() -> None:
    result = progress({"phase": "Failed", "message": "real-1: ckq-run: CRIU dump failed (see dump.log)",
                       "artifacts": [artifact(0, "train", 100)]})
    assert not result.ok and result.message == "real-1: ckq-run: CRIU dump failed (see dump.log)"
    assert result.duration_s == 7.0
    assert progress({"phase": "Failed"}).message == "failed by a node agent (no message)"


def test_cancel_marks_the_checkpoint_failed_for_the_agents() -> None:
    class Api:
        def __init__(self) -> None:
            self.patches: list[tuple[str, Any]] = []

        async def merge_patch(self, path: str, patch: Mapping[str, Any]) -> dict[str, Any]:
            self.patches.append((path, patch))
            return {}

    api = Api()
    asyncio.run(CriuBackend("img", STORE).cancel(request({"phase": "Running"}), api=api))  # type: ignore[arg-type]
    assert api.patches == [("/apis/ckq.io/v1alpha1/namespaces/team/checkpoints/j-1-preemption-1/status",
                            {"status": {"phase": "Failed", "message": "cancelled by the controller"}})]


def launch(restore: RestoreSource | None = None) -> LaunchRequest:
    return LaunchRequest("team", "j", PODS[1], CheckpointPolicy(), 30.0, {}, restore)


SPEC = {"containers": [{"name": "train", "image": "python:3", "command": ["python", "t.py"]},
                       {"name": "log", "image": "busybox", "command": ["sh"], "args": ["-c", "tail -f /x"]}]}


def test_new_pods_run_under_ckq_run_with_the_configured_image_and_store() -> None:
    info = CriuBackend("ckq.local/runtime:9", STORE).pod_info(launch())
    assert info.annotations == {} and info.env == {} and info.rewrite is not None
    spec = info.rewrite(SPEC)
    assert spec["initContainers"][0]["image"] == "ckq.local/runtime:9"
    assert spec["volumes"][1]["hostPath"]["path"] == "/srv/ckq/team/j/w-1/train"
    assert spec["containers"][1]["command"] == [*CKQ_RUN, *EXIT_NOTE, "--",
                                                "sh", "-c", "tail -f /x"]
    with pytest.raises(LaunchRefused) as refused:
        info.rewrite({"containers": [{"name": "train", "image": "python:3"}]})
    assert refused.value.reason == "PodTemplateNotCheckpointable"
    assert "container 'train' has no explicit command" in refused.value.message


def test_a_restored_pod_resumes_each_container_from_its_artifact_and_refuses_without_one() -> None:
    d = container_store_dir(STORE, "team", "j", "w", 1, "train")
    arts = (ArtifactInfo("w", 1, "train", "real-1", artifact_uri(d, "20260921-0007"), "", 5),
            ArtifactInfo("w", 1, "log", "real-1", artifact_uri(d.replace("train", "log"), "20260921-0008"), "", 1),
            ArtifactInfo("w", 0, "train", "real-0", artifact_uri(d, "other-pod"), "", 5))
    info = CriuBackend("img", STORE).pod_info(launch(RestoreSource("j-1-preemption-1", arts)))
    assert info.rewrite is not None
    train, log = info.rewrite(SPEC)["containers"]
    assert train["command"][3:5] == ["--restore", "20260921-0007"] and log["command"][3:5] == ["--restore",
                                                                                                "20260921-0008"]
    with pytest.raises(RestoreImpossible, match=r"checkpoint j-1-preemption-1 has no image of container\(s\) log "
                                                r"of pod w-1"):
        CriuBackend("img", STORE).pod_info(launch(RestoreSource("j-1-preemption-1", arts[:1])))


def test_estimate_grows_with_the_largest_pod() -> None:
    backend = CriuBackend("img", STORE)
    small = backend.estimate([PODS[0]])
    big = backend.estimate([PODS[0], PodRef("p", "w", 2, "n", ("c",), 8 * 2**30)])
    assert small[0] < big[0] and small[1] < big[1] and small[0] > 3.0
    assert backend.stops_workload and backend.name == "CRIU"

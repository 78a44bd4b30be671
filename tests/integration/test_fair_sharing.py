"""Fair sharing through the controller on the real control plane (kwok nodes): two teams whose
ClusterQueues have weights 1 and 3, in one cohort with a third queue that lends them a pool of 32 GPUs,
both asking for more than the pool holds. Under the `fair` profile they converge to 8 and 24 GPUs, the
1:3 of their weights, and a team that borrowed the whole pool first gives back its excess by checkpoint
(the engine's rules: docs/concepts.md, "Fair sharing")."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from tests.plugins.controller import Kube, cjob, job_status

pytestmark = pytest.mark.integration

JOBS_PER_TEAM = 10  # of 4 GPUs: 40 GPUs asked per team, for a pool of 32


def running_gpus(kube: Kube, namespace: str) -> dict[str, int]:
    """GPUs of the jobs Running, per team (job names start with the team's letter; 4 GPUs each)."""
    out = {"a": 0, "b": 0}
    for j in kube.list("checkpointablejobs", namespace):
        if (j.get("status") or {}).get("phase") == "Running":
            out[j["metadata"]["name"][0]] += 4
    return out


def weighted_share(kube: Kube, cq: str) -> int | None:
    fs = (kube.get("clusterqueues", cq).get("status") or {}).get("fairSharing")
    return None if fs is None else int(fs["weightedShare"])


def test_weights_1_and_3_converge_to_1_to_3_of_a_contended_pool(kube: Kube, namespace: str, queues: Any,
                                                                   run_controller: Any) -> None:
    cohort = f"fair-{uuid.uuid4().hex[:6]}"
    queues(gpus=32, cohort=cohort, lq="pool")  # owns the 4 h100 nodes' 32 GPUs and lends them all
    team_a = queues(gpus=0, cohort=cohort, lq="team-a", fairSharing={"weight": "1"},
                    preemption={"withinClusterQueue": "LowerPriority", "reclaimWithinCohort": "Any"})
    team_b = queues(gpus=0, cohort=cohort, lq="team-b", fairSharing={"weight": "3"},
                    preemption={"withinClusterQueue": "LowerPriority", "reclaimWithinCohort": "Any"})
    # Small pods' memory: a simulated checkpoint takes its modelled time (memory over bandwidth).
    for i in range(JOBS_PER_TEAM):
        kube.create("checkpointablejobs", cjob(f"b-{i}", team_b, gpus=4, runtime_s=3600, memory="1Gi"), namespace)
    run_controller("fair")
    # Alone, team-b borrows the whole pool.
    kube.wait("team-b running on all 32 GPUs", lambda: running_gpus(kube, namespace)["b"] == 32, timeout=120)
    for i in range(JOBS_PER_TEAM):
        kube.create("checkpointablejobs", cjob(f"a-{i}", team_a, gpus=4, runtime_s=3600, memory="1Gi"), namespace)
    # team-a preempts team-b until the shares are equal: a 8/32/1 = b 24/32/3 = 0.25.
    split = kube.wait("a 1:3 split of the pool (8 and 24 GPUs)",
                      lambda: (s := running_gpus(kube, namespace)) == {"a": 8, "b": 24} and s, timeout=240)
    assert split == {"a": 8, "b": 24}
    # Kueue's status.fairSharing.weightedShare: both at 250 per mille.
    shares = kube.wait("weighted shares in ClusterQueue status",
                       lambda: (s := (weighted_share(kube, f"{namespace}-team-a"),
                                      weighted_share(kube, f"{namespace}-team-b"))) == (250, 250) and s,
                       timeout=60)
    assert shares == (250, 250)
    # The two team-b jobs that made room went by checkpoint, for fair sharing, and wait to resume.
    preempted = [j["metadata"]["name"] for j in kube.list("checkpointablejobs", namespace)
                 if any(c.get("type") == "Preempted" and c.get("reason") == "InCohortFairSharing"
                        for c in (j.get("status") or {}).get("conditions") or [])]
    assert len(preempted) == 2 and all(n.startswith("b-") for n in preempted), preempted
    for name in preempted:
        status = job_status(kube, namespace, name)
        assert status.get("phase") == "Suspended" and status.get("lastCheckpoint"), status

"""Status patches are built from the API models: a misspelt field or a wrong value fails here, a None
deletes a field, and conditions move their transition time only when their status changes."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from queue_controller.api.job import Admission, PodSetAssignment
from queue_controller.operator.status import (
    CheckpointStatusPatch,
    JobStatusPatch,
    conditions_after,
    job_conditions,
    merge_patch,
)
from tests.unit.fake_kube import T0, wire_time

pytestmark = pytest.mark.unit


def test_a_misspelt_field_or_a_wrong_value_fails_where_it_is_written() -> None:
    fields: dict[str, Any] = {"run_start_tme": None}
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        JobStatusPatch(**fields)
    with pytest.raises(ValidationError, match="phase"):
        JobStatusPatch.model_validate({"phase": "Suspnded"})
    with pytest.raises(ValidationError, match="restarts"):
        JobStatusPatch(restarts=-1)
    with pytest.raises(ValidationError):
        CheckpointStatusPatch.model_validate({"phase": "Done"})


def test_only_the_fields_set_are_sent_and_none_deletes() -> None:
    at = datetime.fromtimestamp(T0, UTC)
    patch = JobStatusPatch(phase="Admitted", run_start_time=None, attempt=2, admission=Admission(
        cluster_queue="cq", pod_set_assignments=[PodSetAssignment(name="w", flavor="h100", nodes=["n0"], count=1)],
        backfill=False, time=at))
    assert merge_patch(patch) == {
        "phase": "Admitted", "runStartTime": None, "attempt": 2,
        "admission": {"clusterQueue": "cq", "podSetAssignments": [{"name": "w", "flavor": "h100", "nodes": ["n0"],
                                                                   "count": 1}],
                      "backfill": False, "time": wire_time(T0)},
    }
    assert merge_patch(JobStatusPatch(admission=None, preempted_for=None)) == {"admission": None,
                                                                                "preemptedFor": None}
    both = JobStatusPatch.merge(JobStatusPatch(phase="Pending", restarts=1), JobStatusPatch(restarts=2))
    assert merge_patch(both) == {"phase": "Pending", "restarts": 2}


def test_conditions_move_their_transition_time_only_when_their_status_changes() -> None:
    first = conditions_after([], {"Running": ("True", "PodsRunning", "all pods running")}, T0)
    stored = [c.model_dump(mode="json", by_alias=True, exclude_none=True) for c in first]
    assert stored == [{"type": "Running", "status": "True", "reason": "PodsRunning", "message": "all pods running",
                       "lastTransitionTime": wire_time(T0)}]
    same = job_conditions({"conditions": stored}, {"Running": ("True", "Restored", "x" * 5000)}, T0 + 60)
    assert same[0].last_transition_time == first[0].last_transition_time and same[0].reason == "Restored"
    assert len(same[0].message) == 1000
    flipped = job_conditions({"conditions": stored}, {"Running": ("False", "Preempted", ""),
                                                      "Suspended": ("True", "Preempted", "")}, T0 + 60)
    assert [c.type for c in flipped] == ["Running", "Suspended"]
    assert all(c.last_transition_time == datetime.fromtimestamp(T0 + 60, UTC) for c in flipped)
    with pytest.raises(ValidationError):  # a reason must be a CamelCase word, as metav1.Condition wants
        conditions_after([], {"Running": ("True", "pods running", "")}, T0)


def test_weighted_share_in_cluster_queue_status_is_kueues() -> None:
    # Two teams of weights 1 and 3 borrowing 8 and 24 of the 32 GPUs a third queue lends: 250 each.
    from queue_controller.api.queues import ClusterQueueStatus
    from queue_controller.engine import GPU, Snapshot
    from queue_controller.operator.waiting import _Tally, _weighted_shares
    from tests.unit.engine_factory import queue
    from tests.unit.fair_world import pool_queues

    qs = (*pool_queues(), queue("solo", gpus=8))
    tallies = {"team-a": _Tally(usage={("h100", GPU): 8000}), "team-b": _Tally(usage={("h100", GPU): 24000}),
               "zero": _Tally()}
    shares = _weighted_shares(Snapshot((), (), qs, ()), tallies)
    assert shares == {"team-a": 250, "team-b": 250, "pool": 0}  # no cohort, no share: "solo" gets none
    status = ClusterQueueStatus.model_validate({"fairSharing": {"weightedShare": shares["team-a"]}})
    assert status.model_dump(by_alias=True, exclude_unset=True) == {"fairSharing": {"weightedShare": 250}}

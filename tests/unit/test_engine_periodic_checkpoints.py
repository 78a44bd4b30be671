"""Periodic checkpoints (periodic_checkpoints.py): fixed intervals and Young's interval.

Small scenarios whose right answer can be worked out by hand."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from queue_controller.engine import Checkpoint, CheckpointReason, decide, parse_duration, young_interval
from queue_controller.engine.periodic_checkpoints import periodic_checkpoints
from queue_controller.engine.workspace import Workspace
from tests.unit.engine_factory import IASS, KUEUE, job, node, queue, running, snapshot

pytestmark = pytest.mark.unit


def test_young_interval() -> None:
    assert young_interval(30, 604_800) == pytest.approx(math.sqrt(2 * 30 * 604_800))
    assert parse_duration("1h30m") == 5400
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration("soon")


def test_snapshot_mtbf_overrides_the_policys_for_youngs_interval() -> None:
    r = running(job("r", checkpoint_interval_auto=True, checkpoint_cost_s=30), ["n0"], started_at=0)
    snap = replace(snapshot([node("n0")], [queue()], [r]), node_mtbf_s=3600.0)
    assert decide(snap, 0, IASS).next_wakeup == pytest.approx(max(young_interval(30, 3600.0), 300.0))


def test_periodic_checkpoint_comes_due_on_a_fixed_interval() -> None:
    r = running(job("r", checkpoint_interval_s=600.0), ["n0"], started_at=0)
    snap = snapshot([node("n0")], [queue()], [r])
    assert decide(snap, 599, IASS).of_type(Checkpoint) == []
    assert decide(snap, 599, IASS).next_wakeup == 600
    assert [c.job for c in decide(snap, 600, IASS).of_type(Checkpoint)] == ["ns/r"]
    after = replace(r, last_checkpoint_at=600.0)
    assert decide(snapshot([node("n0")], [queue()], [after]), 900, IASS).of_type(Checkpoint) == []


def test_auto_interval_uses_youngs_formula() -> None:
    r = running(job("r", checkpoint_interval_auto=True, checkpoint_cost_s=30), ["n0"], started_at=0)
    due = young_interval(30, IASS.checkpoints.node_mtbf_seconds)
    snap = snapshot([node("n0")], [queue()], [r])
    assert decide(snap, 0, IASS).next_wakeup == pytest.approx(due)


def test_no_periodic_checkpoints_without_the_policy_or_for_busy_jobs() -> None:
    r = running(job("r", checkpoint_interval_s=60.0), ["n0"], started_at=0)
    assert decide(snapshot([node("n0")], [queue()], [r]), 1000, KUEUE).of_type(Checkpoint) == []
    busy = replace(r, checkpointing=True)
    assert decide(snapshot([node("n0")], [queue()], [busy]), 1000, IASS).of_type(Checkpoint) == []


# ---- the module alone -------------------------------------------------------------------------------

def test_periodic_checkpoints_alone() -> None:
    due = running(job("due", checkpoint_interval_s=600.0), ["n0"], started_at=0)
    later = running(job("later", checkpoint_interval_s=600.0), ["n0"], started_at=500)
    ws = Workspace(snapshot([node("n0", gpus=16)], [queue()], [due, later]), 700, IASS)
    periodic_checkpoints(ws)
    assert ws.out.actions == [Checkpoint("ns/due", CheckpointReason.PERIODIC)]
    assert ws.out.next_wakeup == 1100

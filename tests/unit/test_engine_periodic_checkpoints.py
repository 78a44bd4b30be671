"""Periodic checkpoints (periodic_checkpoints.py): fixed intervals and Daly's interval.

Small scenarios whose right answer can be worked out by hand."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from queue_controller.engine import Checkpoint, CheckpointReason, decide, parse_duration, young_interval
from queue_controller.engine.periodic_checkpoints import periodic_checkpoints
from queue_controller.engine.policy import daly_interval
from queue_controller.engine.workspace import Workspace
from tests.unit.engine_factory import IASS, KUEUE, job, node, queue, running, snapshot

pytestmark = pytest.mark.unit


def test_young_and_daly_intervals() -> None:
    assert young_interval(30, 604_800) == pytest.approx(math.sqrt(2 * 30 * 604_800))
    # Daly's eq. 37 by hand: C = 600 s, M = 3600 s, x = C / 2M = 1/12.
    x = 600 / 7200
    assert daly_interval(600, 3600) == pytest.approx(math.sqrt(2 * 600 * 3600) * (1 + math.sqrt(x) / 3 + x / 9) - 600)
    # Small C against M: Daly's tends to Young's minus C; C >= 2M: checkpoint every M.
    assert daly_interval(1, 10**9) == pytest.approx(young_interval(1, 10**9) - 1, rel=1e-3)
    assert daly_interval(8000, 3600) == 3600
    assert parse_duration("1h30m") == 5400
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration("soon")


def test_snapshot_mtbf_overrides_the_policys_for_the_auto_interval() -> None:
    r = running(job("r", checkpoint_interval_auto=True, checkpoint_cost_s=30), ["n0"], started_at=0)
    snap = replace(snapshot([node("n0")], [queue()], [r]), node_mtbf_s=3600.0)
    assert decide(snap, 0, IASS).next_wakeup == pytest.approx(max(daly_interval(30, 3600.0), 300.0))


def test_a_gang_fails_when_any_node_does_so_its_auto_interval_is_shorter() -> None:
    r = running(job("r", pods=4, checkpoint_interval_auto=True, checkpoint_cost_s=300), ["n0", "n1", "n2", "n3"],
                started_at=0)
    snap = replace(snapshot([node(f"n{i}") for i in range(4)], [queue()], [r]), node_mtbf_s=40 * 3600.0)
    assert decide(snap, 0, IASS).next_wakeup == pytest.approx(daly_interval(300, 10 * 3600.0))
    interval, why = IASS.interval_choice(None, True, 300, 40 * 3600.0, nodes=4)
    assert interval == pytest.approx(daly_interval(300, 10 * 3600.0))
    assert why == ("auto: Daly's interval for a 300.0s checkpoint and a 10.0h mean time between failures "
                   "(measured node MTBF 40.0h over 4 node(s))")


def test_periodic_checkpoint_comes_due_on_a_fixed_interval() -> None:
    r = running(job("r", checkpoint_interval_s=600.0), ["n0"], started_at=0)
    snap = snapshot([node("n0")], [queue()], [r])
    assert decide(snap, 599, IASS).of_type(Checkpoint) == []
    assert decide(snap, 599, IASS).next_wakeup == 600
    assert [c.job for c in decide(snap, 600, IASS).of_type(Checkpoint)] == ["ns/r"]
    after = replace(r, last_checkpoint_at=600.0)
    assert decide(snapshot([node("n0")], [queue()], [after]), 900, IASS).of_type(Checkpoint) == []


def test_auto_interval_uses_dalys_formula_with_the_policys_mtbf_as_the_prior() -> None:
    r = running(job("r", checkpoint_interval_auto=True, checkpoint_cost_s=30), ["n0"], started_at=0)
    due = daly_interval(30, IASS.checkpoints.node_mtbf_seconds)
    snap = snapshot([node("n0")], [queue()], [r])
    assert decide(snap, 0, IASS).next_wakeup == pytest.approx(due)
    assert IASS.interval_choice(None, True, 30)[1].endswith("(assumed node MTBF 168.0h over 1 node(s))")


def test_a_jobs_own_interval_is_honoured_under_every_policy() -> None:
    """Issue 12: an explicit spec.checkpoint.interval was silently ignored under a policy without
    periodic checkpoints."""
    r = running(job("r", checkpoint_interval_s=60.0), ["n0"], started_at=0)
    assert [c.job for c in decide(snapshot([node("n0")], [queue()], [r]), 1000, KUEUE).of_type(Checkpoint)] == ["ns/r"]
    assert KUEUE.interval_choice(60.0, False, 5.0) == (60.0, "spec.checkpoint.interval")
    plain = running(job("p"), ["n0"], started_at=0)  # no interval of its own: the policy says none
    assert decide(snapshot([node("n0")], [queue()], [plain]), 1000, KUEUE).of_type(Checkpoint) == []
    assert KUEUE.interval_choice(None, False, 5.0)[0] is None
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

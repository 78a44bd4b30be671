"""The cycle workspace (workspace.py): what-if lift/restore, and a queue's fields over the policy's."""

from __future__ import annotations

from copy import deepcopy

import pytest

from queue_controller.engine import GPU, QueueingStrategy, WithinClusterQueue
from queue_controller.engine.workspace import Workspace
from tests.unit.engine_factory import KUEUE, M, job, node, queue, running, snapshot

pytestmark = pytest.mark.unit


def test_lift_and_restore_are_exact_inverses() -> None:
    qs = [queue("a", gpus=8, cohort="c"), queue("b", gpus=8, cohort="c")]
    jobs = [running(job("a1", cq="a"), ["n0"]), running(job("a2", cq="a", gpus=4), ["n1"])]
    ws = Workspace(snapshot([node("n0"), node("n1")], qs, jobs), 0.0, KUEUE)
    free, usage = deepcopy(ws.cap.free), deepcopy(ws.ledger.usage)
    assert ws.ledger.borrowing("a")
    run = ws.running["ns/a1"]
    ws.lift(run)
    assert ws.cap.free["n0"][GPU] == 8 * M and ws.ledger.usage["a"][("h100", GPU)] == 4 * M
    assert not ws.ledger.borrowing("a")
    ws.restore(run)
    assert ws.cap.free == free and ws.ledger.usage == usage


def test_a_queues_own_fields_refine_the_policy() -> None:
    plain = queue("plain")
    own = queue("own", queueing_strategy=QueueingStrategy.STRICT_FIFO, backfill_enabled=True, reservation_depth=3,
                within_cluster_queue=WithinClusterQueue.NEVER)
    ws = Workspace(snapshot([node("n0")], [plain, own], []), 0.0, KUEUE)
    assert (ws.strict(plain), ws.strict(own)) == (False, True)
    assert (ws.backfill_enabled(plain), ws.backfill_enabled(own)) == (False, True)
    assert (ws.reservation_depth(plain), ws.reservation_depth(own)) == (1, 3)
    assert ws.within(plain) is WithinClusterQueue.LOWER_PRIORITY and ws.within(own) is WithinClusterQueue.NEVER


def test_running_jobs_are_grouped_by_who_may_preempt_them() -> None:
    qs = [queue("a", cohort="c"), queue("b", cohort="c"), queue("solo")]
    jobs = [running(job("a1", cq="a"), ["n0"]), running(job("s1", cq="solo"), ["n1"]),
            running(job("gone", cq="b"), ["n2"], vacating=True, preempted_for="ns/p")]
    ws = Workspace(snapshot([node("n0"), node("n1"), node("n2")], qs, jobs), 0.0, KUEUE)
    assert {g: [r.job.key for r in runs] for g, runs in ws.by_group.items()} == {
        "cohort/c": ["ns/a1"], "queue/solo": ["ns/s1"]}
    assert [r.job.key for r in ws.vacating] == ["ns/gone"] and ws.owners == {"ns/p"}

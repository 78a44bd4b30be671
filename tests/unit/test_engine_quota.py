"""Quota and cohorts (quota.py): nominal quota, borrowing and lending limits.

Small scenarios whose right answer can be worked out by hand."""

from __future__ import annotations

import pytest

from queue_controller.engine import decide
from tests.unit.engine_factory import FIFO, KUEUE, admitted, job, node, queue, snapshot

pytestmark = pytest.mark.unit


def test_nominal_quota_caps_a_queue_without_cohort() -> None:
    snap = snapshot([node("n0"), node("n1")], [queue(gpus=8)], [job("a", t=0), job("b", t=1)])
    assert admitted(decide(snap, 0, FIFO)) == ["ns/a"]


def test_cohort_lets_a_queue_borrow_unused_quota() -> None:
    qs = [queue("a", gpus=8, cohort="c"), queue("b", gpus=8, cohort="c")]
    snap = snapshot([node("n0"), node("n1")], qs, [job("a1", cq="a", t=0), job("a2", cq="a", t=1)])
    assert admitted(decide(snap, 0, KUEUE)) == ["ns/a1", "ns/a2"]


def test_borrowing_limit_caps_borrowing() -> None:
    qs = [queue("a", gpus=8, cohort="c", borrowing=4), queue("b", gpus=8, cohort="c")]
    snap = snapshot([node("n0"), node("n1")], qs,
                    [job("a1", cq="a", t=0), job("a2", cq="a", gpus=8, t=1), job("a3", cq="a", gpus=4, t=2)])
    assert admitted(decide(snap, 0, KUEUE)) == ["ns/a1", "ns/a3"]


def test_lending_limit_keeps_part_of_the_quota() -> None:
    # b lends only 4 of its 8 GPUs, so a can use at most 8 + 4.
    qs = [queue("a", gpus=8, cohort="c"), queue("b", gpus=8, cohort="c", lending=4)]
    snap = snapshot([node("n0"), node("n1")], qs,
                    [job("a1", cq="a", t=0), job("a2", cq="a", gpus=8, t=1), job("a3", cq="a", gpus=4, t=2)])
    assert admitted(decide(snap, 0, KUEUE)) == ["ns/a1", "ns/a3"]

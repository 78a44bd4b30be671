"""Inadmissible jobs (fit.py, `inadmissible`): a job its ClusterQueue can never admit, whatever runs.

Two cases, as Kueue's flavor assigner: a pod asks for a resource the queue has no quota for at all
(`ResourceNotCovered`: it would otherwise never be charged for it), and a gang larger than the queue can
ever hold (`NeverFitsQuota`). Both hold nothing (no preemption, no reservation), do not block a StrictFIFO
queue, and are looked at again every cycle.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from queue_controller.engine import (
    GPU,
    ClusterQueue,
    FlavorQuotas,
    PendingReason,
    PodSet,
    Preempt,
    Quota,
    ResourceGroup,
    decide,
)
from tests.unit.engine_factory import (
    EASY,
    FIFO,
    GIB,
    IASS,
    KUEUE,
    M,
    admitted,
    job,
    node,
    queue,
    running,
    snapshot,
)

pytestmark = pytest.mark.unit

ALL = [FIFO, KUEUE, EASY, IASS]


def cpu_memory_only(name: str = "cq") -> ClusterQueue:
    """A ClusterQueue that covers cpu and memory, and not GPUs."""
    fq = FlavorQuotas("h100", {"cpu": Quota(1000 * M), "memory": Quota(10_000 * GIB)})
    return ClusterQueue(name, (ResourceGroup(("cpu", "memory"), (fq,)),))


# ---- a resource the queue does not cover ------------------------------------------------------------


@pytest.mark.parametrize("policy", ALL, ids=lambda p: p.name)
def test_a_resource_the_queue_does_not_cover_is_not_free(policy) -> None:
    # Issue 12: a queue covering only cpu and memory admitted four 8-GPU jobs, their GPUs never charged.
    nodes = [node(f"n{i}") for i in range(4)]
    jobs = [job(f"j{i}", gpus=8, t=i) for i in range(4)]
    d = decide(snapshot(nodes, [cpu_memory_only()], jobs), 0, policy)
    assert admitted(d) == []
    assert not d.of_type(Preempt)
    for i in range(4):
        w = d.waiting[f"ns/j{i}"]
        assert w.reason is PendingReason.RESOURCE_NOT_COVERED
        assert GPU in w.message and "'cq'" in w.message
        assert w.reserved_start is None


def test_the_covered_resources_of_such_a_queue_are_still_admitted() -> None:
    d = decide(snapshot([node("n0")], [cpu_memory_only()], [job("cpu-only", gpus=0)]), 0, KUEUE)
    assert admitted(d) == ["ns/cpu-only"]


def test_a_job_asking_for_an_uncovered_resource_does_not_block_strict_fifo() -> None:
    jobs = [job("gpu", gpus=8, t=0), job("cpu", gpus=0, t=1)]
    d = decide(snapshot([node("n0")], [cpu_memory_only()], jobs), 0, FIFO)
    assert admitted(d) == ["ns/cpu"]
    assert d.waiting["ns/gpu"].reason is PendingReason.RESOURCE_NOT_COVERED


# ---- a gang larger than the queue can ever hold -----------------------------------------------------


@pytest.mark.parametrize("policy", ALL, ids=lambda p: p.name)
def test_a_gang_larger_than_the_nominal_quota_never_fits(policy) -> None:
    nodes = [node(f"n{i}") for i in range(4)]
    d = decide(snapshot(nodes, [queue(gpus=16)], [job("big", gpus=8, pods=3)]), 0, policy)
    assert admitted(d) == []
    w = d.waiting["ns/big"]
    assert w.reason is PendingReason.NEVER_FITS_QUOTA
    assert w.reserved_start is None
    # The numbers: asks 24 GPUs, the queue can hold at most 16 of them in flavor h100.
    assert "24" in w.message and "16" in w.message and GPU in w.message and "h100" in w.message


def test_borrowing_counts_up_to_its_limit_and_the_cohort() -> None:
    nodes = [node(f"n{i}") for i in range(8)]
    lender = queue("lender", gpus=64, cohort="c")
    # Nominal 8 and at most 8 borrowed: 16 at most.
    limited = queue("cq", gpus=8, cohort="c", borrowing=8)
    d = decide(snapshot(nodes, [limited, lender], [job("too-big", gpus=8, pods=3), job("fits", gpus=8, pods=2, t=1)]),
               0, KUEUE)
    assert d.waiting["ns/too-big"].reason is PendingReason.NEVER_FITS_QUOTA
    assert admitted(d) == ["ns/fits"]
    # Without a borrowing limit the cohort bounds it: 8 own + 64 lent = 72 at most.
    open_ = queue("cq", gpus=8, cohort="c")
    d = decide(snapshot(nodes, [open_, lender], [job("gang", gpus=8, pods=8), job("huge", gpus=8, pods=10, t=1)]),
               0, KUEUE)
    assert admitted(d) == ["ns/gang"]
    w = d.waiting["ns/huge"]
    assert w.reason is PendingReason.NEVER_FITS_QUOTA and "72" in w.message and "80" in w.message


def test_a_flavor_with_room_for_it_keeps_the_job_admissible() -> None:
    nodes = [node("h0"), node("h1"), node("a0", flavor="a100"), node("a1", flavor="a100"), node("a2", flavor="a100")]
    two = queue(gpus=16, flavors=("h100", "a100"))
    small_h = replace(two, resource_groups=(replace(two.resource_groups[0], flavors=(
        replace(two.resource_groups[0].flavors[0], resources={
            **two.resource_groups[0].flavors[0].resources, GPU: Quota(8 * M)}),
        replace(two.resource_groups[0].flavors[1], resources={
            **two.resource_groups[0].flavors[1].resources, GPU: Quota(24 * M)}),
    )),))
    d = decide(snapshot(nodes, [small_h], [job("gang", gpus=8, pods=3)]), 0, KUEUE)
    assert admitted(d) == ["ns/gang"]  # too big for h100's 8, it fits a100's 24


def test_a_job_that_never_fits_quota_holds_no_reservation() -> None:
    # Before: the gang got a reserved start at t=0 (capacity is there), and the small job, which fits now,
    # waited behind that phantom reservation.
    nodes = [node(f"n{i}") for i in range(4)]
    jobs = [running(job("r", gpus=8, runtime_estimate_s=1000.0), ["n0"]),
            job("big", gpus=8, pods=3, t=1, runtime_estimate_s=100.0),
            job("small", gpus=8, t=2, runtime_estimate_s=5000.0, checkpointable=False)]
    for policy in (EASY, IASS):
        d = decide(snapshot(nodes, [queue(gpus=16)], jobs), 0, policy)
        assert d.waiting["ns/big"].reason is PendingReason.NEVER_FITS_QUOTA
        assert d.waiting["ns/big"].reserved_start is None
        assert admitted(d) == ["ns/small"]


def test_a_job_that_never_fits_quota_preempts_nothing() -> None:
    nodes = [node(f"n{i}") for i in range(4)]
    jobs = [running(job("low", gpus=8, priority=0), ["n0"]), job("big", gpus=8, pods=3, priority=10, t=1)]
    d = decide(snapshot(nodes, [queue(gpus=16)], jobs), 100, KUEUE)
    assert not d.of_type(Preempt)
    assert d.waiting["ns/big"].reason is PendingReason.NEVER_FITS_QUOTA


def test_a_job_that_never_fits_quota_does_not_block_strict_fifo() -> None:
    nodes = [node(f"n{i}") for i in range(4)]
    jobs = [job("big", gpus=8, pods=3, t=0), job("next", gpus=8, t=1)]
    d = decide(snapshot(nodes, [queue(gpus=16)], jobs), 0, FIFO)
    assert admitted(d) == ["ns/next"]


def test_a_quota_increase_makes_it_admissible_the_next_cycle() -> None:
    nodes = [node(f"n{i}") for i in range(4)]
    jobs = [job("big", gpus=8, pods=3)]
    before = decide(snapshot(nodes, [queue(gpus=16)], jobs), 0, KUEUE)
    assert before.waiting["ns/big"].reason is PendingReason.NEVER_FITS_QUOTA
    after = decide(snapshot(nodes, [queue(gpus=32)], jobs), 10, KUEUE)
    assert admitted(after) == ["ns/big"]


def test_a_gang_that_only_lacks_room_now_is_still_insufficient_quota() -> None:
    nodes = [node(f"n{i}") for i in range(4)]
    jobs = [running(job("r", gpus=8), ["n0"]), job("gang", gpus=8, pods=2, t=1)]
    d = decide(snapshot(nodes, [queue(gpus=16)], jobs), 0, FIFO)
    assert d.waiting["ns/gang"].reason is PendingReason.QUOTA


def test_every_pod_set_is_checked() -> None:
    nodes = [node(f"n{i}") for i in range(4)]
    two_sets = replace(job("two", gpus=8), pod_sets=(
        PodSet("driver", 1, {"cpu": M}), PodSet("workers", 3, {"cpu": M, GPU: 8 * M})))
    d = decide(snapshot(nodes, [queue(gpus=16)], [two_sets]), 0, KUEUE)
    w = d.waiting["ns/two"]
    assert w.reason is PendingReason.NEVER_FITS_QUOTA and "'workers'" in w.message

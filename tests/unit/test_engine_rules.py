"""One named example per engine rule: small scenarios whose right answer can be worked out by hand."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from queue_controller.engine import (
    GPU,
    Admit,
    Checkpoint,
    PendingReason,
    Policy,
    Preempt,
    PreemptMode,
    PreemptReason,
    QueueingStrategy,
    ReclaimWithinCohort,
    Resume,
    Taint,
    Toleration,
    WithinClusterQueue,
    decide,
    parse_duration,
    young_interval,
)
from queue_controller.policies import load_policy
from tests.unit.engine_factory import admitted, flavor, job, node, queue, running, snapshot

pytestmark = pytest.mark.unit

IASS = load_policy("iass")
KUEUE = load_policy("kueue")
EASY = load_policy("easy")
FIFO = load_policy("fifo")


# ---- ordering -------------------------------------------------------------------------------------

def test_higher_priority_is_admitted_first_when_only_one_fits() -> None:
    snap = snapshot([node("n0")], [queue(gpus=8)],
                    [job("low", priority=1, t=0), job("high", priority=5, t=10)])
    d = decide(snap, 100, KUEUE)
    assert admitted(d) == ["ns/high"]
    assert d.waiting["ns/low"].reason is PendingReason.QUOTA
    assert d.waiting["ns/low"].position == 1


def test_equal_priority_goes_by_queue_order_timestamp() -> None:
    snap = snapshot([node("n0")], [queue(gpus=8)], [job("b", t=20), job("a", t=10)])
    assert admitted(decide(snap, 100, KUEUE)) == ["ns/a"]


def test_preempted_job_keeps_its_original_place() -> None:
    # "old" was preempted earlier and is pending again with its original timestamp (t=1): it goes
    # before "new" (t=50) although it re-entered the queue later.
    old = job("old", t=1, checkpoint="old-ckpt-1", run_time_s=500)
    snap = snapshot([node("n0")], [queue(gpus=8)], [job("new", t=50), old])
    d = decide(snap, 100, IASS)
    assert [a.job for a in d.of_type(Resume)] == ["ns/old"]
    assert d.of_type(Resume)[0].checkpoint == "old-ckpt-1"


def test_strict_fifo_head_blocks_smaller_jobs() -> None:
    n = node("n0")
    snap = snapshot([n], [queue(gpus=8, queueing_strategy=QueueingStrategy.STRICT_FIFO)],
                    [running(job("r", gpus=4), ["n0"]), job("big", gpus=8, t=1), job("small", gpus=2, t=2)])
    d = decide(snap, 100, KUEUE.model_copy(update={"preemption": FIFO.preemption}))
    assert admitted(d) == []
    assert d.waiting["ns/small"].reason is PendingReason.STRICT_FIFO


def test_best_effort_fifo_lets_smaller_jobs_pass() -> None:
    snap = snapshot([node("n0")], [queue(gpus=8)],
                    [running(job("r", gpus=4), ["n0"]), job("big", gpus=8, t=1), job("small", gpus=2, t=2)])
    d = decide(snap, 100, KUEUE.model_copy(update={"preemption": FIFO.preemption}))
    assert admitted(d) == ["ns/small"]


def test_fifo_policy_blocks_every_queue_head() -> None:
    snap = snapshot([node("n0")], [queue(gpus=8)],
                    [running(job("r", gpus=4), ["n0"]), job("big", gpus=8, t=1), job("small", gpus=2, t=2)])
    assert admitted(decide(snap, 100, FIFO)) == []


# ---- gang placement -------------------------------------------------------------------------------

def test_gang_is_all_or_nothing() -> None:
    nodes = [node("n0"), node("n1"), node("n2")]
    snap = snapshot(nodes, [queue(gpus=64)],
                    [running(job("r", gpus=8), ["n2"]), job("gang", gpus=8, pods=3, t=1)])
    d = decide(snap, 100, FIFO)
    assert admitted(d) == []
    assert d.waiting["ns/gang"].reason is PendingReason.CAPACITY


def test_gang_places_every_pod_on_a_node_with_room() -> None:
    nodes = [node("n0"), node("n1")]
    snap = snapshot(nodes, [queue(gpus=64)], [job("gang", gpus=4, pods=4)])
    (a,) = decide(snap, 0, FIFO).of_type(Admit)
    assert sorted(a.placement[0].nodes) == ["n0", "n0", "n1", "n1"]


def test_best_fit_keeps_whole_nodes_free() -> None:
    nodes = [node("n0"), node("n1")]
    snap = snapshot(nodes, [queue(gpus=64)], [running(job("r", gpus=6), ["n1"]), job("small", gpus=2, t=1)])
    (a,) = decide(snap, 0, FIFO).of_type(Admit)
    assert a.placement[0].nodes == ("n1",)  # the fuller node, so n0 stays whole for an 8-GPU job


def test_pods_of_other_controllers_take_capacity() -> None:
    n = node("n0", other={GPU: 4000})
    snap = snapshot([n], [queue(gpus=64)], [job("j", gpus=8)])
    d = decide(snap, 0, FIFO)
    assert admitted(d) == []
    assert d.waiting["ns/j"].reason is PendingReason.CAPACITY


def test_flavor_taints_need_tolerations_and_flavor_tolerations_count() -> None:
    taint = Taint("nvidia.com/gpu", "present", "NoSchedule")
    n = node("n0", taints=(taint,))
    plain = snapshot([n], [queue()], [job("j")], flavors=[flavor("h100")])
    assert admitted(decide(plain, 0, FIFO)) == []
    tolerating = snapshot([n], [queue()], [job("j")],
                          flavors=[flavor("h100", tolerations=(Toleration("nvidia.com/gpu", "Exists"),))])
    assert admitted(decide(tolerating, 0, FIFO)) == ["ns/j"]


def test_flavors_are_tried_in_order() -> None:
    nodes = [node("a0", flavor="a100"), node("h0", flavor="h100")]
    snap = snapshot(nodes, [queue(gpus=8, flavors=("h100", "a100"))],
                    [running(job("r"), ["h0"]), job("j", t=1)])
    (a,) = decide(snap, 0, FIFO).of_type(Admit)
    assert a.placement[0].flavor == "a100"  # h100 quota is used up, a100 is next


def test_not_ready_nodes_take_no_pods() -> None:
    snap = snapshot([node("n0", ready=False)], [queue()], [job("j")])
    d = decide(snap, 0, FIFO)
    assert d.waiting["ns/j"].reason is PendingReason.NO_MATCHING_NODES


def test_a_pod_bigger_than_any_node_never_fits() -> None:
    snap = snapshot([node("n0")], [queue(gpus=64)], [job("j", gpus=16)])
    assert decide(snap, 0, FIFO).waiting["ns/j"].reason is PendingReason.UNSATISFIABLE


def test_unknown_cluster_queue_is_reported() -> None:
    snap = snapshot([node("n0")], [queue()], [job("j", cq="missing")])
    w = decide(snap, 0, FIFO).waiting["ns/j"]
    assert w.reason is PendingReason.UNKNOWN_QUEUE and "missing" in w.message


def test_resume_honours_restore_constraints() -> None:
    nodes = [node("n0", labels={"nvidia.com/gpu.product": "A100"}),
             node("n1", labels={"nvidia.com/gpu.product": "H100"})]
    j = job("j", checkpoint="j-1", restore_node_labels={"nvidia.com/gpu.product": "H100"})
    (r,) = decide(snapshot(nodes, [queue()], [j]), 0, IASS).of_type(Resume)
    assert r.placement[0].nodes == ("n1",)


# ---- quota and cohorts ----------------------------------------------------------------------------

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


def test_reclaim_within_cohort_takes_back_lent_quota() -> None:
    qs = [queue("a", gpus=8, cohort="c"), queue("b", gpus=8, cohort="c")]
    borrower = running(job("a2", cq="a", t=1, priority=100), ["n1"])
    snap = snapshot([node("n0"), node("n1")], qs,
                    [running(job("a1", cq="a", t=0), ["n0"]), borrower, job("b1", cq="b", t=5, priority=0)])
    d = decide(snap, 100, KUEUE)
    (p,) = d.of_type(Preempt)
    assert p.reason is PreemptReason.IN_COHORT_RECLAMATION and p.beneficiary == "ns/b1"
    assert p.victim in ("ns/a1", "ns/a2")
    assert d.waiting["ns/b1"].reason is PendingReason.WAITING_FOR_PREEMPTION


def test_reclaim_lower_priority_spares_higher_priority_borrowers() -> None:
    qs = [queue("a", gpus=8, cohort="c"), queue("b", gpus=8, cohort="c")]
    policy = KUEUE.model_copy(update={"preemption": KUEUE.preemption.model_copy(
        update={"reclaim_within_cohort": ReclaimWithinCohort.LOWER_PRIORITY})})
    snap = snapshot([node("n0"), node("n1")], qs,
                    [running(job("a1", cq="a", priority=9), ["n0"]), running(job("a2", cq="a", priority=9), ["n1"]),
                     job("b1", cq="b", t=5, priority=0)])
    assert decide(snap, 100, policy).of_type(Preempt) == []


def test_jobs_within_nominal_quota_go_before_borrowers() -> None:
    # The borrower was reclaimed and is pending again, ahead in queue order; the reclaiming job must
    # still go first, or the two would preempt each other forever.
    qs = [queue("a", gpus=8, cohort="c"), queue("b", gpus=8, cohort="c")]
    borrower = job("borrower", cq="a", gpus=8, pods=2, t=0, checkpoint="borrower-1")
    owner = job("owner", cq="b", gpus=8, t=5)
    d = decide(snapshot([node("n0"), node("n1")], qs, [borrower, owner]), 100, IASS)
    assert admitted(d) == ["ns/owner"]
    assert d.waiting["ns/borrower"].reason is PendingReason.QUOTA
    assert d.of_type(Preempt) == []


# ---- preemption -----------------------------------------------------------------------------------

def test_never_preempts_equal_priority_under_lower_priority() -> None:
    snap = snapshot([node("n0")], [queue(gpus=8)], [running(job("r", t=0), ["n0"]), job("p", t=5)])
    assert decide(snap, 100, KUEUE).of_type(Preempt) == []


def test_lower_or_newer_equal_priority_preempts_the_newer_job() -> None:
    cq = queue(gpus=8, within_cluster_queue=WithinClusterQueue.LOWER_OR_NEWER_EQUAL_PRIORITY)
    snap = snapshot([node("n0")], [cq], [running(job("newer", t=9), ["n0"]), job("older", t=5)])
    (p,) = decide(snap, 100, KUEUE).of_type(Preempt)
    assert p.victim == "ns/newer"


def test_checkpoint_first_preemption_under_iass_and_kill_under_kueue() -> None:
    snap = snapshot([node("n0")], [queue(gpus=8)], [running(job("low"), ["n0"]), job("high", priority=10, t=1)])
    (p,) = decide(snap, 100, IASS).of_type(Preempt)
    assert p.mode is PreemptMode.CHECKPOINT
    assert p.cost == pytest.approx((30 + 20) * 8)
    (k,) = decide(snap, 100, KUEUE).of_type(Preempt)
    assert k.mode is PreemptMode.KILL
    assert k.cost == pytest.approx(100 * 8)  # 100 s of progress on 8 GPUs lost


def test_non_checkpointable_victim_is_killed_even_under_iass() -> None:
    snap = snapshot([node("n0")], [queue(gpus=8)],
                    [running(job("low", checkpointable=False), ["n0"]), job("high", priority=10, t=1)])
    (p,) = decide(snap, 100, IASS).of_type(Preempt)
    assert p.mode is PreemptMode.KILL


def test_victims_are_chosen_to_minimise_lost_work() -> None:
    # Two candidate victims; either frees enough. The one that just checkpointed loses least to a kill.
    long_progress = running(job("a", gpus=8), ["n0"], started_at=0)
    fresh_ckpt = running(job("b", gpus=8), ["n1"], started_at=0, last_checkpoint_at=990, checkpoint="b-1")
    snap = snapshot([node("n0"), node("n1")], [queue(gpus=16)],
                    [long_progress, fresh_ckpt, job("high", priority=10, t=5)])
    (p,) = decide(snap, 1000, KUEUE).of_type(Preempt)
    assert p.victim == "ns/b"
    # Under iass a 50 s checkpoint beats killing 1000 s of progress: the non-checkpointable job is spared.
    snap2 = snapshot([node("n0"), node("n1")], [queue(gpus=16)],
                     [running(job("nock", checkpointable=False), ["n0"], started_at=0),
                      running(job("ck"), ["n1"], started_at=0), job("high", priority=10, t=5)])
    (p2,) = decide(snap2, 1000, IASS).of_type(Preempt)
    assert p2.victim == "ns/ck" and p2.mode is PreemptMode.CHECKPOINT


def test_only_as_many_victims_as_needed() -> None:
    # Greedy by cost lifts a (cheap, but its node keeps c) and then b; the reverse walk drops a again.
    a = running(job("a", gpus=4, t=1), ["n1"], started_at=99)  # kill cost 1 s x 4 GPUs
    c = running(job("c", gpus=4, t=1, priority=50), ["n1"], started_at=0)  # not a candidate
    b = running(job("b", gpus=8, t=1), ["n0"], started_at=95)  # kill cost 5 s x 8 GPUs
    snap = snapshot([node("n0"), node("n1")], [queue(gpus=32)], [a, b, c, job("high", priority=10, t=5)])
    assert [p.victim for p in decide(snap, 100, KUEUE).of_type(Preempt)] == ["ns/b"]


def test_two_victims_when_one_is_not_enough() -> None:
    r0 = running(job("r0", gpus=4, t=1), ["n0"], started_at=95)
    r1 = running(job("r1", gpus=4, t=1), ["n0"], started_at=96)
    r2 = running(job("r2", gpus=8, t=1), ["n1"], started_at=90)  # costs more than r0 + r1
    snap = snapshot([node("n0"), node("n1")], [queue(gpus=16)], [r0, r1, r2, job("high", priority=10, t=5)])
    assert sorted(p.victim for p in decide(snap, 100, KUEUE).of_type(Preempt)) == ["ns/r0", "ns/r1"]


def test_room_made_by_preemption_is_held_for_the_preemptor() -> None:
    # high needs the whole node; low holds half of it. The free half must not go to "filler" while the
    # victim leaves, or high would never fit and would preempt again and again.
    snap = snapshot([node("n0")], [queue(gpus=64)],
                    [running(job("low", gpus=4), ["n0"]), job("high", gpus=8, priority=10, t=1),
                     job("filler", gpus=4, t=2)])
    d = decide(snap, 100, KUEUE)
    assert [p.victim for p in d.of_type(Preempt)] == ["ns/low"]
    assert admitted(d) == []
    # The same holds in the next cycles, while the victim is still vacating.
    vacating = snapshot([node("n0")], [queue(gpus=64)],
                        [running(job("low", gpus=4), ["n0"], vacating=True), job("high", gpus=8, priority=10, t=1),
                         job("filler", gpus=4, t=2)])
    d2 = decide(vacating, 110, KUEUE)
    assert admitted(d2) == [] and d2.of_type(Preempt) == []
    assert d2.waiting["ns/high"].reason is PendingReason.WAITING_FOR_PREEMPTION


def test_no_preemption_for_a_job_that_would_then_delay_a_reservation() -> None:
    # "first" (2 nodes) cannot make room (h outranks it), so it reserves both nodes for t=100.
    # "second" could preempt r and start on n0 now, but would run past t=100: it must not preempt.
    r = running(job("r", gpus=8, runtime_estimate_s=100, t=0), ["n0"], started_at=0)
    h = running(job("h", gpus=8, priority=10, runtime_estimate_s=100, t=0), ["n1"], started_at=0)
    first = job("first", gpus=8, pods=2, priority=5, t=1, runtime_estimate_s=100)
    second = job("second", gpus=8, priority=3, t=2, runtime_estimate_s=1000, checkpointable=False)
    d = decide(snapshot([node("n0"), node("n1")], [queue(gpus=64)], [r, h, first, second]), 10, EASY)
    assert d.waiting["ns/first"].reason is PendingReason.RESERVATION
    assert d.of_type(Preempt) == []
    assert d.waiting["ns/second"].reason is not PendingReason.WAITING_FOR_PREEMPTION


def test_a_job_blocked_by_its_queues_own_quota_still_gets_a_reservation() -> None:
    # Quota equal to capacity: the cluster is full and so is the quota; EASY still reserves.
    r = running(job("r", gpus=8, runtime_estimate_s=100), ["n0"], started_at=0)
    big = job("big", gpus=8, t=1, runtime_estimate_s=100)
    d = decide(snapshot([node("n0")], [queue(gpus=8)], [r, big]), 10, EASY)
    assert d.waiting["ns/big"].reason is PendingReason.RESERVATION
    assert d.waiting["ns/big"].reserved_start == pytest.approx(100)


def test_snapshot_mtbf_overrides_the_policys_for_youngs_interval() -> None:
    r = running(job("r", checkpoint_interval_auto=True, checkpoint_cost_s=30), ["n0"], started_at=0)
    snap = replace(snapshot([node("n0")], [queue()], [r]), node_mtbf_s=3600.0)
    assert decide(snap, 0, IASS).next_wakeup == pytest.approx(max(young_interval(30, 3600.0), 300.0))


def test_victims_being_vacated_stay_with_the_job_they_were_preempted_for() -> None:
    # Last cycle P1 preempted b (1 GPU on n0) and P2 preempted a (2 GPUs on n1); both still leave.
    b = running(job("b", 1), ["n0"], vacating=True, preempted_for="ns/P1")
    a = running(job("a", 2), ["n1"], vacating=True, preempted_for="ns/P2")
    f0 = running(job("f0", 7, priority=2000), ["n0"])
    f1 = running(job("f1", 6, priority=2000), ["n1"])
    c = running(job("c", 8), ["n2"])
    p1, p2 = job("P1", 1, priority=1000, t=10), job("P2", 2, priority=1000, t=20)
    d = decide(snapshot([node("n0"), node("n1"), node("n2")], [queue(gpus=24)], [b, a, f0, f1, c, p1, p2]),
               100, KUEUE)
    assert d.of_type(Preempt) == []  # nobody swaps victims and kills c for nothing
    assert d.waiting["ns/P1"].reason is d.waiting["ns/P2"].reason is PendingReason.WAITING_FOR_PREEMPTION


def test_a_preemption_elsewhere_does_not_cost_a_large_job_its_reservation() -> None:
    a = running(job("A", 8, priority=500, t=0, runtime_estimate_s=1000.0), ["n0"], started_at=0.0)
    b = running(job("B", 8, priority=500, t=1, runtime_estimate_s=2000.0), ["n1"], started_at=0.0)
    w = job("W", 8, pods=2, priority=100, t=5, runtime_estimate_s=3600.0)
    x = job("X", 8, priority=100, t=10, runtime_estimate_s=600.0)
    u = job("U", 1, priority=1000, t=50, runtime_estimate_s=100.0)
    d = decide(snapshot([node("n0"), node("n1")], [queue(gpus=16)], [a, b, w, x, u]), 100, EASY)
    assert [p.victim for p in d.of_type(Preempt)] == ["ns/A"]
    assert d.waiting["ns/W"].reason is PendingReason.RESERVATION  # still W's, not passed on to X
    assert d.waiting["ns/X"].reason is not PendingReason.RESERVATION


def test_vacating_jobs_are_not_preempted_twice() -> None:
    vac = running(job("low"), ["n0"], vacating=True)
    snap = snapshot([node("n0")], [queue(gpus=8)], [vac, job("high", priority=10, t=1)])
    d = decide(snap, 100, IASS)
    assert d.of_type(Preempt) == []
    assert d.waiting["ns/high"].reason is PendingReason.WAITING_FOR_PREEMPTION


def test_min_runtime_protects_young_jobs() -> None:
    policy = IASS.model_copy(update={"preemption": IASS.preemption.model_copy(update={"min_runtime_seconds": 600})})
    snap = snapshot([node("n0")], [queue(gpus=8)],
                    [running(job("young"), ["n0"], started_at=50), job("high", priority=10, t=1)])
    assert decide(snap, 100, policy).of_type(Preempt) == []


def test_fifo_never_preempts() -> None:
    snap = snapshot([node("n0")], [queue(gpus=8)], [running(job("low"), ["n0"]), job("high", priority=10, t=1)])
    assert decide(snap, 100, FIFO).of_type(Preempt) == []


# ---- backfill -------------------------------------------------------------------------------------

def _easy_scene(short_estimate: float, long_checkpointable: bool) -> tuple[list, list]:
    # One 8-GPU node. r runs on 6 GPUs until t=100. big (8 GPUs) is blocked: reserved for t=100.
    r = running(job("r", gpus=6, runtime_estimate_s=100), ["n0"], started_at=0)
    big = job("big", gpus=8, t=1, runtime_estimate_s=50)
    short = job("short", gpus=2, t=2, runtime_estimate_s=short_estimate, checkpointable=long_checkpointable)
    return [node("n0")], [r, big, short]


def test_easy_backfills_a_job_that_ends_before_the_reservation() -> None:
    nodes, jobs = _easy_scene(short_estimate=80, long_checkpointable=False)
    d = decide(snapshot(nodes, [queue(gpus=64)], jobs), 10, EASY)
    assert d.waiting["ns/big"].reason is PendingReason.RESERVATION
    assert d.waiting["ns/big"].reserved_start == pytest.approx(100)
    assert admitted(d) == ["ns/short"]
    assert not d.of_type(Admit)[0].backfill


def test_easy_refuses_a_job_that_would_delay_the_reservation() -> None:
    nodes, jobs = _easy_scene(short_estimate=500, long_checkpointable=False)
    d = decide(snapshot(nodes, [queue(gpus=64)], jobs), 10, EASY)
    assert admitted(d) == []
    assert d.waiting["ns/short"].reason is PendingReason.BACKFILL_BLOCKED


def test_iass_backfills_a_checkpointable_job_past_the_reservation() -> None:
    nodes, jobs = _easy_scene(short_estimate=500, long_checkpointable=True)
    d = decide(snapshot(nodes, [queue(gpus=64)], jobs), 10, IASS)
    (a,) = d.of_type(Admit)
    assert a.job == "ns/short" and a.backfill


def test_iass_does_not_backfill_past_a_reservation_without_a_checkpoint() -> None:
    nodes, jobs = _easy_scene(short_estimate=500, long_checkpointable=False)
    assert admitted(decide(snapshot(nodes, [queue(gpus=64)], jobs), 10, IASS)) == []


def test_backfill_may_use_capacity_the_reservation_does_not_need() -> None:
    # big needs 6 of the 8 GPUs at t=100, so 2 GPUs stay free for a job of any length.
    r = running(job("r", gpus=6, runtime_estimate_s=100), ["n0"], started_at=0)
    big = job("big", gpus=6, t=1, runtime_estimate_s=50)
    long = job("long", gpus=2, t=2, runtime_estimate_s=10_000, checkpointable=False)
    blocker = running(job("r2", gpus=2, runtime_estimate_s=100), ["n0"], started_at=0)
    d = decide(snapshot([node("n0"), node("n1", gpus=0)], [queue(gpus=64)], [r, blocker, big, long]), 10, EASY)
    assert d.waiting["ns/big"].reason is PendingReason.RESERVATION
    assert admitted(d) == []  # now nothing is free at all
    d2 = decide(snapshot([node("n0")], [queue(gpus=64)], [r, big, long]), 10, EASY)
    assert admitted(d2) == ["ns/long"]


def test_backfilled_job_is_vacated_by_checkpoint_when_the_reservation_comes_due() -> None:
    # The backfilled job has equal priority to the waiting one: only its backfill flag makes it a victim.
    bf = running(job("bf", gpus=4, t=2), ["n0"], started_at=10, backfilled=True)
    waiting = job("big", gpus=8, t=1)
    d = decide(snapshot([node("n0")], [queue(gpus=64)], [bf, waiting]), 100, IASS)
    (p,) = d.of_type(Preempt)
    assert (p.victim, p.reason, p.mode) == ("ns/bf", PreemptReason.RESERVATION_DUE, PreemptMode.CHECKPOINT)


# ---- periodic checkpoints -------------------------------------------------------------------------

def test_young_interval() -> None:
    assert young_interval(30, 604_800) == pytest.approx(math.sqrt(2 * 30 * 604_800))
    assert parse_duration("1h30m") == 5400
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration("soon")


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


def test_policy_profiles_validate() -> None:
    with pytest.raises(ValueError, match=r"reservationDepth|reservation_depth"):
        Policy.model_validate({"name": "x", "backfill": {"reservationDepth": 0}})

"""Preemption to restore fair shares (preemption/fair_share.py): Kueue's strategies, the reclaim rules,
weight 0, checkpoint-first victims.

Worked by hand on a contended pool of 32 GPUs that a third queue lends to two teams of weights 1 and 3
(tests/unit/fair_world.py): a team's share is the GPUs it uses over 32, divided by its weight."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from queue_controller.engine import (
    ClusterQueue,
    Job,
    Node,
    Preempt,
    PreemptMode,
    PreemptReason,
    ReclaimWithinCohort,
    WithinClusterQueue,
    decide,
)
from queue_controller.engine.policy import FairSharingStrategy
from queue_controller.engine.preemption.fair_share import passes
from queue_controller.policies import load_policy
from tests.unit.engine_factory import KUEUE, job, node, queue, running, snapshot
from tests.unit.fair_world import gpus_of, nodes, pool_queues, run_until_still, team_jobs

pytestmark = pytest.mark.unit

FAIR = load_policy("fair")
S2A = FairSharingStrategy.LESS_THAN_OR_EQUAL_TO_FINAL_SHARE
S2B = FairSharingStrategy.LESS_THAN_INITIAL_SHARE


def b_holds_the_pool(n: int = 8, priority: int = 0, checkpointable: bool = True) -> list:  # type: ignore[type-arg]
    """team-b runs n jobs of 4 GPUs, two per node, borrowed while team-a was idle."""
    return [running(j, [f"n{i // 2}"], started_at=0)
            for i, j in enumerate(team_jobs("b", n, priority=priority, checkpointable=checkpointable))]


def test_strategies() -> None:
    # S2-a: preemptor's share with its job <= target's share without the victim; S2-b: < target's now.
    assert passes(S2A, (False, 0.25), (False, 1 / 3), (False, 0.25))
    assert not passes(S2A, (False, 0.375), (False, 0.25), (False, 0.208))
    assert passes(S2B, (False, 0.25), (False, 0.26), (False, 0.0))
    assert not passes(S2B, (False, 0.25), (False, 0.25), (False, 0.0))
    assert not passes(S2A, (True, 0.01), (False, 9.0), (False, 9.0))  # an infinite share never passes


def test_preemption_restores_the_shares_and_checkpoints_the_victims() -> None:
    # team-b (weight 3) holds all 32 GPUs; team-a (weight 1) arrives with 8 jobs. By hand:
    #   a-0: a would be 4/32 = .125, b without a job 28/32/3 = .29: S2-a passes, one victim;
    #   a-1: a .25, b without another 24/32/3 = .25: .25 <= .25 passes, a second victim;
    #   a-2: a .375, b without a third 20/32/3 = .21: S2-a fails; S2-b: .375 < b now .25 fails.
    jobs = b_holds_the_pool() + team_jobs("a", 8, t=100)
    d = decide(snapshot(nodes(), pool_queues(), jobs), 1000, FAIR)
    preempts = d.of_type(Preempt)
    assert [p.beneficiary for p in preempts] == ["ns/a-0", "ns/a-1"]
    assert all(p.reason is PreemptReason.IN_COHORT_FAIR_SHARING for p in preempts)
    assert all(p.mode is PreemptMode.CHECKPOINT for p in preempts)  # checkpoint-first, as iass
    # Applied until nothing moves: 8 GPUs to 24, weights 1 to 3, and no further preemption.
    final, history = run_until_still(nodes(), pool_queues(), jobs, FAIR)
    assert (gpus_of(final.values(), "team-a"), gpus_of(final.values(), "team-b")) == (8, 24)
    assert sum(len(h.of_type(Preempt)) for h in history) == 2


def test_a_team_at_its_fair_share_does_not_preempt() -> None:
    # At 8:24 both shares are .25: a's next job would make a .375 (b without one .21, b now .25), b's next
    # would make b .29 (a without one .125, a now .25) — neither may preempt.
    a = [running(job(f"a-{i}", gpus=4, cq="team-a"), ["n3"], started_at=0) for i in range(2)]
    waiting = [job(f"{t}-new-{i}", gpus=4, cq=f"team-{t}", t=100 + i) for t in "ab" for i in range(4)]
    d = decide(snapshot(nodes(), pool_queues(), b_holds_the_pool(6) + a + waiting), 1000, FAIR)
    assert d.of_type(Preempt) == []


def test_reclaim_never_lets_fair_sharing_only_order_admission() -> None:
    qs = pool_queues(reclaim_within_cohort=ReclaimWithinCohort.NEVER)
    final, history = run_until_still(nodes(), qs, b_holds_the_pool() + team_jobs("a", 8, t=100), FAIR)
    assert all(h.of_type(Preempt) == [] for h in history)
    assert gpus_of(final.values(), "team-a") == 0


def test_reclaim_lower_priority_takes_only_lower_priority_victims() -> None:
    qs = pool_queues(reclaim_within_cohort=ReclaimWithinCohort.LOWER_PRIORITY)
    same = decide(snapshot(nodes(), qs, b_holds_the_pool() + team_jobs("a", 8, t=100)), 1000, FAIR)
    assert same.of_type(Preempt) == []  # equal priority: not a candidate
    higher = decide(snapshot(nodes(), qs, b_holds_the_pool() + team_jobs("a", 8, t=100, priority=1)), 1000, FAIR)
    assert len(higher.of_type(Preempt)) == 2


def test_reclaim_any_takes_victims_of_any_priority() -> None:
    qs = pool_queues(reclaim_within_cohort=ReclaimWithinCohort.ANY)
    d = decide(snapshot(nodes(), qs, b_holds_the_pool(priority=100) + team_jobs("a", 8, t=100)), 1000, FAIR)
    assert len(d.of_type(Preempt)) == 2


def test_a_team_within_its_nominal_quota_reclaims_it_whatever_the_shares() -> None:
    # team-a owns 8 GPUs, lent to team-b; taking them back needs no fairness argument (InCohortReclamation).
    qs = pool_queues(nominal=(8, 0))
    d = decide(snapshot(nodes(), qs, b_holds_the_pool() + team_jobs("a", 2, t=100)), 1000, FAIR)
    assert [p.reason for p in d.of_type(Preempt)] == [PreemptReason.IN_COHORT_RECLAMATION] * 2


def test_weight_zero_borrows_only_what_nobody_else_wants() -> None:
    qs = pool_queues(weights=(1.0, 0.0))
    # team-b (weight 0) holds the pool while team-a is idle; team-a takes it all back, job by job.
    final, _ = run_until_still(nodes(), qs, b_holds_the_pool() + team_jobs("a", 8, t=100), FAIR)
    assert (gpus_of(final.values(), "team-a"), gpus_of(final.values(), "team-b")) == (32, 0)
    # Both asking from the start: team-b gets nothing; with team-a asking for half, the other half.
    final, _ = run_until_still(nodes(), qs, team_jobs("b", 8) + team_jobs("a", 8, t=1), FAIR)
    assert (gpus_of(final.values(), "team-a"), gpus_of(final.values(), "team-b")) == (32, 0)
    final, _ = run_until_still(nodes(), qs, team_jobs("b", 8) + team_jobs("a", 4, t=1), FAIR)
    assert (gpus_of(final.values(), "team-a"), gpus_of(final.values(), "team-b")) == (16, 16)
    # And a zero-weight team never preempts a team with a finite share.
    a_holds = [running(j, [f"n{i // 2}"], started_at=0) for i, j in enumerate(team_jobs("a", 8))]
    d = decide(snapshot(nodes(), qs, a_holds + team_jobs("b", 2, t=100)), 1000, FAIR)
    assert d.of_type(Preempt) == []


def test_the_cheapest_victim_goes_first_within_the_target_queue() -> None:
    # team-b's jobs: one not checkpointable with long progress, the others checkpointable. Under the fair
    # profile (checkpoint-first) the victims are checkpointable ones; killing would lose 1000 s x 4 GPUs.
    b = b_holds_the_pool()
    b[0] = running(team_jobs("b", 1, checkpointable=False)[0], ["n0"], started_at=0)
    d = decide(snapshot(nodes(), pool_queues(), b + team_jobs("a", 1, t=100)), 1000, FAIR)
    (p,) = d.of_type(Preempt)
    assert p.victim != "ns/b-0" and p.mode is PreemptMode.CHECKPOINT


def test_only_one_strategy() -> None:
    s2b_only = FAIR.model_copy(update={"fair_sharing": FAIR.fair_sharing.model_copy(
        update={"preemption_strategies": (S2B,)})})
    # S2-b alone: a-0 (.125 < b now .333) and a-1 (.25 < .29) preempt; a-2: .375 < .25 no.
    final, _ = run_until_still(nodes(), pool_queues(), b_holds_the_pool() + team_jobs("a", 8, t=100), s2b_only)
    assert (gpus_of(final.values(), "team-a"), gpus_of(final.values(), "team-b")) == (8, 24)


def test_without_fair_sharing_a_borrower_reclaims_nothing() -> None:
    # kueue: reclaiming is only for one's own nominal quota; team-a has none.
    d = decide(snapshot(nodes(), pool_queues(), b_holds_the_pool() + team_jobs("a", 8, t=100)), 1000, KUEUE)
    assert d.of_type(Preempt) == []



# ---- no preemption loop, over random cohorts -------------------------------------------------------

# The fair profile and its variants, without backfill. With checkpoint-aware backfill (iass, or fair with
# its backfill on) this property still finds loops not yet understood (e.g. --hypothesis-seed=2 and 3 with
# an "iass" kind added: one 4-GPU node, a cohort of borrowing queues and a lender); the two found and fixed so
# far are the tests `test_a_backfilled_job_vacated_for_a_job_that_cannot_start_loops` and
# `test_a_job_backfilled_past_another_queues_reservation_loops`.
_NO_BACKFILL = {"backfill": KUEUE.backfill}
KINDS = {
    "fair": FAIR.model_copy(update=_NO_BACKFILL),
    "fair-kill": FAIR.model_copy(update={**_NO_BACKFILL, "preemption": KUEUE.preemption}),
    "fair-s2a": FAIR.model_copy(update={**_NO_BACKFILL, "fair_sharing": FAIR.fair_sharing.model_copy(
        update={"preemption_strategies": (S2A,)})}),
    "fair-s2b": FAIR.model_copy(update={**_NO_BACKFILL, "fair_sharing": FAIR.fair_sharing.model_copy(
        update={"preemption_strategies": (S2B,)})}),
}


@st.composite
def cohorts(draw: st.DrawFn) -> tuple[list[Node], list[ClusterQueue], list[Job]]:
    """2 to 4 ClusterQueues of one cohort (weights 0 to 3, small nominal quotas, a reclaim rule each),
    mostly a lender, 1 to 4 nodes, and more jobs than fit."""
    nodes_ = [node(f"n{i}", gpus=draw(st.sampled_from((4, 8)))) for i in range(draw(st.integers(1, 4)))]
    queues = []
    for q in range(draw(st.integers(2, 4))):
        queues.append(queue(
            f"q{q}", gpus=draw(st.sampled_from((0, 0, 0, 2, 4, 8))), cohort="c",
            fair_weight=draw(st.sampled_from((0.0, 1.0, 1.0, 2.0, 3.0))),
            reclaim_within_cohort=draw(st.sampled_from((None, *ReclaimWithinCohort))),
            within_cluster_queue=draw(st.sampled_from((None, *WithinClusterQueue)))))
    if draw(st.integers(0, 3)):
        queues.append(queue("lender", gpus=draw(st.integers(4, 32)), cohort="c"))
    jobs = []
    for i in range(draw(st.integers(2, 16))):
        pods = draw(st.integers(1, 2))
        jobs.append(job(
            f"j{i}", gpus=draw(st.sampled_from((1, 2, 4, 8))), pods=pods,
            cq=draw(st.sampled_from([q.name for q in queues if q.name != "lender"])),
            priority=draw(st.integers(0, 2)), t=float(draw(st.integers(0, 20))),
            checkpointable=draw(st.booleans()), runtime_estimate_s=draw(st.sampled_from((None, 5000.0)))))
    return nodes_, queues, jobs


# derandomize: CI runs the same 300 cohorts every time (a fresh clone has no example database); the soak
# for new cohorts is CKQ_HYPOTHESIS_SEARCH=1, which draws new ones.
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow],
          derandomize=not os.environ.get("CKQ_HYPOTHESIS_SEARCH"))
@given(cohorts(), st.sampled_from(sorted(KINDS)), st.sampled_from((True, True, True, False)))
def test_no_preemption_loop_over_random_cohorts(cohort, kind, staggered) -> None:  # type: ignore[no-untyped-def]
    """Applying the engine's decisions again and again to a static set of jobs (nothing finishes, victims
    leave at once and wait again) reaches a fixed point: two queues never preempt each other back and
    forth. `staggered`: q0's jobs come first and borrow what the other queues' jobs, arriving next, have
    to take back."""
    nodes_, queues, jobs = cohort
    policy = KINDS[kind]
    if staggered:
        first, _ = run_until_still(nodes_, queues, [j for j in jobs if j.cluster_queue == "q0"], policy)
        jobs = [*first.values(), *(j for j in jobs if j.cluster_queue != "q0")]
    _, history = run_until_still(nodes_, queues, jobs, policy)
    victims = [p for d in history for p in d.of_type(Preempt)]
    event("fair-share preemption" if any(p.reason is PreemptReason.IN_COHORT_FAIR_SHARING for p in victims)
          else "preemption" if victims else "no preemption")


def _staggered(nodes_: list[Node], queues: list[ClusterQueue], jobs: list[Job], kind: str) -> list[Preempt]:
    """As the property test's `staggered`: q0's jobs run first, the others arrive; every preemption made."""
    first, _ = run_until_still(nodes_, queues, [j for j in jobs if j.cluster_queue == "q0"], KINDS[kind])
    _, history = run_until_still(nodes_, queues, [*first.values(), *(j for j in jobs if j.cluster_queue != "q0")],
                                 KINDS[kind])
    return [p for d in history for p in d.of_type(Preempt)]


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("reclaim", [None, ReclaimWithinCohort.ANY])
def test_a_share_tie_is_a_tie_in_exact_arithmetic(kind: str, reclaim: ReclaimWithinCohort | None) -> None:
    # Found by the property test. One node of 8 GPUs, a cohort of 10 (lender 8, q2 2). q0 (weight 1) runs
    # j1, j2, j3 (1+1+2 GPUs, all borrowed: 4/10); j0 (q2, weight 3) wants all 8 GPUs, borrowing 6:
    # 6/10/3 = 0.2. S2-a takes j1 (0.2 <= 0.3) and j2 (0.2 <= 0.2); j3 would need S2-b, 0.2 < 0.2: no. In
    # floats 6/10/3 is 0.19999999999999998 < 0.2, so j3 went too, j0 had its room, and j1 (q0 at 0.1 with
    # it) won it back in the tournament, j2 and j3 followed, and j0 preempted the three again, forever.
    qs = [queue("q0", gpus=0, cohort="c", fair_weight=1.0, reclaim_within_cohort=reclaim),
          queue("q1", gpus=0, cohort="c", fair_weight=0.0, reclaim_within_cohort=reclaim),
          queue("q2", gpus=2, cohort="c", fair_weight=3.0, reclaim_within_cohort=reclaim),
          queue("q3", gpus=0, cohort="c", fair_weight=0.0, reclaim_within_cohort=reclaim),
          queue("lender", gpus=8, cohort="c")]
    jobs = [job("j0", gpus=8, cq="q2", checkpointable=False),
            *(job(f"j{i}", gpus=g, cq="q0", checkpointable=False) for i, g in ((1, 1), (2, 1), (3, 2)))]
    assert _staggered([node("n0", gpus=8)], qs, jobs, kind) == []  # q0 is not above q2's 0.2: it keeps its jobs


def test_a_victim_of_the_preemptors_own_queue_put_back_must_not_leave_a_preemption_unfair() -> None:
    # Found by the property test. A cohort of 6 GPUs: q0 (nominal 2) runs j0 (4: borrows 2); q1 (nominal 4;
    # both weight 0: borrowers compare by the borrowed part) runs j1 and j3 (1 each) and wants j2 (4): q1
    # would be at 6, borrowing 2 as q0 does: a tie, no preemption across. The search takes j3 first (its
    # own queue, newer: LowerOrNewerEqualPriority), then j0 by S2-b (q1 at 5 < q0 at 6); the minimal set
    # put j3 back and kept j0, preempted on a share it only tied. j0 came back first (the tie, by name)
    # and was preempted again, forever. Now a victim is put back only while the fair-share victims left
    # still pass their strategies: j3 goes with j0.
    qs = [queue("q0", gpus=2, cohort="c", fair_weight=0.0),
          queue("q1", gpus=4, cohort="c", fair_weight=0.0,
                within_cluster_queue=WithinClusterQueue.LOWER_OR_NEWER_EQUAL_PRIORITY)]
    jobs = [job("j0", gpus=4, cq="q0", checkpointable=False),
            *(job(f"j{i}", gpus=g, cq="q1", checkpointable=False) for i, g in ((1, 1), (2, 4), (3, 1)))]
    preempts = _staggered([node(f"n{i}", gpus=4) for i in range(4)], qs, jobs, "fair")
    # (The first preemption, of j0 alone while j3 is not yet running, is fair; j3, behind j2 in q1, is
    # admitted in the same cycle and makes it a tie again: a cost of ckq's BestEffortFIFO, which lets a
    # queue's later jobs start while its head waits for victims, where Kueue keeps the preemptor at the head.)
    assert [(p.victim, p.reason) for p in preempts] == [
        ("ns/j0", PreemptReason.IN_COHORT_FAIR_SHARING),
        ("ns/j3", PreemptReason.IN_CLUSTER_QUEUE), ("ns/j0", PreemptReason.IN_COHORT_FAIR_SHARING)]


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_a_victim_never_comes_back_ahead_of_its_preemptor(kind: str) -> None:
    # Found by the property test. One node of 8 GPUs, all lent by `lender`. q0 (weight 1) runs j0 (1) and
    # j1 (4): 5/8; j2 (q1, weight 3) wants all 8: 8/8/3 = 1/3. S2-a takes j0 (1/3 <= 4/8), S2-b then j1
    # (1/3 < 4/8). Kueue's proof that this cannot loop assumes a victim comes back at the share its queue
    # had when it was taken, but j0 comes back to an empty q0, at 1/8 < 1/3: it won the tournament, took
    # room j2 needed, j1 followed, and j2 preempted both again, forever (and j0 could even have preempted
    # j2 back: 1/8 < 1/3). No victim is taken that, back alone, would rank ahead of its preemptor: q1
    # may not take both, and one is not enough.
    qs = [queue("q0", gpus=0, cohort="c", fair_weight=1.0), queue("q1", gpus=0, cohort="c", fair_weight=3.0),
          queue("lender", gpus=8, cohort="c")]
    jobs = [job("j0", gpus=1, cq="q0", checkpointable=False), job("j1", gpus=4, cq="q0", checkpointable=False),
            job("j2", gpus=8, cq="q1", checkpointable=False)]
    assert _staggered([node("n0", gpus=8)], qs, jobs, kind) == []


def test_a_backfilled_job_vacated_for_a_job_that_cannot_start_loops() -> None:
    # Found by the property test above with backfill on; it was iass's, fair sharing or not. j1 (8 GPUs)
    # is blocked by quota (q0 borrows the cohort's 8), yet the nodes had room, and the capacity profile
    # gave it a reservation "now"; j6 (4) would delay it; j2 (1, checkpointable) backfilled past it, j6
    # vacated it (ReservationDue) once the reservation lapsed, could not start itself when j2's leaving
    # brought the reservation back, and j2 backfilled again. A reservation now waits for the quota too
    # (backfill.quota_start): j1, whose quota the estimate-less running jobs never free, gets none.
    nodes_ = [node("n0", gpus=4), node("n1", gpus=8)]
    qs = [queue("q0", gpus=0, cohort="c"), queue("q1", gpus=8, cohort="c")]
    spec = [("j0", 1, 0, False), ("j1", 8, 0, False), ("j2", 1, 1, True), ("j3", 1, 0, False),
            ("j4", 1, 0, False), ("j5", 1, 0, False), ("j6", 4, 0, False)]
    jobs = [job(k, gpus=g, cq="q0", t=t, checkpointable=c) for k, g, t, c in spec]
    final, history = run_until_still(nodes_, qs, jobs, load_policy("iass"))
    assert all(h.of_type(Preempt) == [] for h in history)
    assert {k for k, j in final.items() if j.placement} == {f"ns/j{i}" for i in (0, 3, 4, 5, 6)}


def test_a_job_backfilled_past_another_queues_reservation_loops() -> None:
    # Found by the property test with the fair profile's backfill on; it looped. q0 runs a-d (1 GPU each, 5,000 s);
    # "big" (q0, 8) reserves the node for when they end; "urgent" (q2, priority 2) would delay that and
    # waits; "gang" (q2, priority 1, checkpointable) backfills past it. big cannot vacate gang (gang is
    # ahead of it in queue order), so gang holds the room for ever and big's reservation lapses; urgent,
    # ahead of gang, vacated it (ReservationDue), found the reservation back, could not start, and gang
    # backfilled again. Now a job may backfill past a reservation only if its holder may vacate it
    # (backfill._may_vacate): gang waits.
    nodes_ = [node("n0", gpus=8)]
    qs = [queue(f"q{i}", gpus=g, cohort="c", fair_weight=0.0) for i, g in ((0, 4), (1, 0), (2, 4))]
    q0 = [job(k, gpus=1, cq="q0", checkpointable=False, runtime_estimate_s=5000.0) for k in "abcd"]
    first, _ = run_until_still(nodes_, qs, q0, FAIR)
    rest = [job("big", gpus=8, cq="q0", t=1, checkpointable=False),
            job("urgent", gpus=1, cq="q2", priority=2, checkpointable=False),
            job("gang", gpus=2, pods=2, cq="q2", priority=1, checkpointable=True)]
    final, history = run_until_still(nodes_, qs, [*first.values(), *rest], FAIR)
    assert all(h.of_type(Preempt) == [] for h in history)
    assert not final["ns/gang"].placement

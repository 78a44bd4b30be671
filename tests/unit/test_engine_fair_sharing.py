"""Fair sharing (fair_sharing.py, ordering.dominant_share): the share, and the admission order it gives.

Worked by hand on a contended pool of 32 GPUs that a third queue lends to two teams of weights 1 and 3
(tests/unit/fair_world.py)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from queue_controller.engine import GPU, ClusterQueue, Job, Policy, Preempt, Snapshot, decide
from queue_controller.engine.ordering import MAX_WEIGHTED_SHARE, NO_SHARE, Share, dominant_share, weighted_share
from queue_controller.engine.policy import FairSharingStrategy
from queue_controller.engine.quota import QuotaLedger
from queue_controller.policies import load_policy
from tests.unit.engine_factory import IASS, admitted, queue, snapshot
from tests.unit.fair_world import gpus_of, nodes, pool_queues, run_until_still, team_jobs

pytestmark = pytest.mark.unit

FAIR = load_policy("fair")
M = 1000


def share(queues: list[ClusterQueue], cq: str, gpus: int, flavor: str = "h100") -> Share:
    return dominant_share(QuotaLedger(queues), cq, {(flavor, GPU): gpus * M})


def test_share_is_usage_above_nominal_over_the_cohorts_lendable_quota_divided_by_weight() -> None:
    qs = pool_queues()
    assert share(qs, "team-a", 8) == (False, 8 / 32)  # weight 1
    assert share(qs, "team-b", 24) == (False, 24 / 32 / 3)  # weight 3: the same share for 3x the GPUs
    assert share(qs, "team-a", 0) == NO_SHARE
    # Only usage above nominal counts: a team with 8 of its own at 12 borrows 4 of the 32 lendable.
    own = pool_queues(nominal=(8, 0))
    assert share(own, "team-a", 8) == NO_SHARE
    assert share(own, "team-a", 12) == (False, 4 / 32)
    # No cohort, no share.
    assert dominant_share(QuotaLedger([queue("solo")]), "solo", {("h100", GPU): 64 * M}) == NO_SHARE


def test_share_sums_a_resource_over_flavors_and_takes_the_dominant_one() -> None:
    qs = [queue("a", gpus=0, cohort="c", flavors=("h100", "a100"), cpu=0),
          queue("pool", gpus=16, cohort="c", flavors=("h100", "a100"), cpu=100)]
    # 4 + 4 GPUs borrowed of 32 lendable over both flavors; 50 CPUs of 200: the CPUs dominate.
    usage = {("h100", GPU): 4 * M, ("a100", GPU): 4 * M, ("h100", "cpu"): 50 * M}
    assert dominant_share(QuotaLedger(qs), "a", usage) == (False, 50 / 200)


def test_weight_zero_is_an_infinite_share_only_while_borrowing() -> None:
    qs = pool_queues(weights=(0.0, 1.0), nominal=(4, 0))
    assert share(qs, "team-a", 4) == NO_SHARE
    infinite = share(qs, "team-a", 6)
    assert infinite == (True, 2 / 32)  # team-a's own 4 are lendable too: 32 in the cohort
    assert infinite > share(qs, "team-b", 28)  # above every finite share
    assert share(qs, "team-a", 5) < infinite  # two zero weights compare by the unweighted ratio


def test_shares_are_exact() -> None:
    # The fair-share strategies decide on ties (S2-a's <=, S2-b's <). 6 of 10 lendable GPUs at weight 3 is
    # exactly 2 of 10 at weight 1; in floats 6/10/3 is 0.19999999999999998, below 0.2, and a preemption
    # loop came of it (test_engine_preemption_fair_share.py::test_a_share_tie_is_a_tie_in_exact_arithmetic).
    qs = [queue("a", gpus=0, cohort="c", fair_weight=3.0), queue("b", gpus=0, cohort="c"),
          queue("lender", gpus=10, cohort="c")]
    assert share(qs, "a", 6) == share(qs, "b", 2)
    assert not share(qs, "a", 6) < share(qs, "b", 2)
    assert weighted_share(share(qs, "a", 6)) == 200


def test_weighted_share_as_kueue_writes_it() -> None:
    assert weighted_share((False, 8 / 32)) == 250
    assert weighted_share((False, 24 / 32 / 3)) == 250
    assert weighted_share((False, 1 / 3)) == 334  # per mille, rounded up
    assert weighted_share(NO_SHARE) == 0
    assert weighted_share((True, 0.5)) == MAX_WEIGHTED_SHARE == 2**63 - 1


def test_heads_take_turns_by_share_after_admission_weights_1_and_3_split_1_to_3() -> None:
    # Both teams ask for the whole pool; team-a's jobs are older, so it wins ties. By hand, the share each
    # head's queue would have with it admitted (a: n*4/32; b: n*4/32/3):
    #   b .042 < a .125; b .083 < a .125; a .125 = b .125, a older; b .125 < a .25; b .167; b .208;
    #   a .25 = b .25, a older; then b .25 < a .375 fills the 32 GPUs: a 8, b 24.
    jobs = team_jobs("a", 8, t=0) + team_jobs("b", 8, t=1)
    d = decide(_snap(jobs), 1000, FAIR)
    assert admitted(d) == ["ns/b-0", "ns/b-1", "ns/a-0", "ns/b-2", "ns/b-3", "ns/b-4", "ns/a-1", "ns/b-5"]
    assert not d.of_type(Preempt)  # the shares are fair already
    final, _ = run_until_still(nodes(), pool_queues(), jobs, FAIR)
    assert (gpus_of(final.values(), "team-a"), gpus_of(final.values(), "team-b")) == (8, 24)


def test_without_fair_sharing_queue_order_decides() -> None:
    # iass: priority, then time, then the borrowers' pass: team-a's older jobs take the pool first.
    jobs = team_jobs("a", 8, t=0) + team_jobs("b", 8, t=1)
    final, _ = run_until_still(nodes(), pool_queues(), jobs, IASS)
    assert (gpus_of(final.values(), "team-a"), gpus_of(final.values(), "team-b")) == (32, 0)


def test_a_job_within_nominal_quota_goes_before_any_borrower() -> None:
    # team-a owns 8 GPUs: its head takes its own quota first although team-b's share would be lower.
    qs = pool_queues(nominal=(8, 0))
    jobs = team_jobs("a", 1, t=5) + team_jobs("b", 1, t=0)
    d = decide(_snap(jobs, qs), 1000, FAIR)
    assert admitted(d) == ["ns/a-0", "ns/b-0"]


def test_the_fair_profile_and_its_settings() -> None:
    assert FAIR.fair_sharing.enabled and FAIR.preemption.mode.value == "Checkpoint"
    assert FAIR.fair_sharing.preemption_strategies == (FairSharingStrategy.LESS_THAN_OR_EQUAL_TO_FINAL_SHARE,
                                                       FairSharingStrategy.LESS_THAN_INITIAL_SHARE)
    assert Policy.model_validate({"name": "x", "fairSharing": True}).fair_sharing.enabled
    assert not Policy.model_validate({"name": "x"}).fair_sharing.enabled
    one = Policy.model_validate({"name": "x", "fairSharing": {"preemptionStrategies": ["LessThanInitialShare"]}})
    assert one.fair_sharing.preemption_strategies == (FairSharingStrategy.LESS_THAN_INITIAL_SHARE,)
    with pytest.raises(ValidationError, match="preemptionStrategies must be"):
        Policy.model_validate({"name": "x", "fairSharing": {
            "preemptionStrategies": ["LessThanInitialShare", "LessThanOrEqualToFinalShare"]}})


def _snap(jobs: list[Job], qs: list[ClusterQueue] | None = None) -> Snapshot:
    return snapshot(nodes(), qs or pool_queues(), jobs)

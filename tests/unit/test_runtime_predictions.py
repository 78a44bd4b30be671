"""Learned run-time predictions (queue_controller/predictions.py) and how the engine plans with them.

The engine scenes are worked out by hand: one 8-GPU node, a running job whose user estimated 1,000 s but
whose queue's history predicts 100 s, a gang blocked behind it, and a job that could backfill."""

from __future__ import annotations

import pytest

from queue_controller.engine import PendingReason, decide
from queue_controller.engine.policy import RuntimePredictionSettings
from queue_controller.predictions import EstimateLearner
from queue_controller.sim.cluster import ClusterSpec
from queue_controller.sim.generate import generate
from queue_controller.sim.simulator import Simulator
from tests.unit.engine_factory import EASY, IASS, admitted, job, node, queue, running, snapshot

pytestmark = pytest.mark.unit

IASS_NO_PREDICTIONS = IASS.model_copy(update={"backfill": IASS.backfill.model_copy(
    update={"runtime_predictions": RuntimePredictionSettings()})})


def _scene(now_started: float = 0.0) -> list:
    # r cannot be checkpointed and big may not preempt it (same priority): big reserves r's end.
    r = running(job("r", gpus=6, checkpointable=False, runtime_estimate_s=1000, runtime_prediction_s=100),
                ["n0"], started_at=now_started)
    # big asks for more work than short (8 GPUs x 1,000 s against 2 x 2,000 s), so it stays ahead of short
    # under iass's credit for requested work too (ordering.work_credit: 44 s against 22 s).
    big = job("big", gpus=8, t=1, runtime_estimate_s=1000)
    short = job("short", gpus=2, t=2, checkpointable=False, runtime_estimate_s=2000, runtime_prediction_s=80)
    return [r, big, short]


def test_a_reservation_is_placed_by_the_prediction_and_backfill_trusts_predicted_ends() -> None:
    d = decide(snapshot([node("n0")], [queue(gpus=64)], _scene()), 10, IASS)
    assert d.waiting["ns/big"].reason is PendingReason.RESERVATION
    assert d.waiting["ns/big"].reserved_start == pytest.approx(100)
    # short is predicted to end at 90, before the reservation: plain EASY backfill, not opportunistic.
    assert admitted(d) == ["ns/short"]


@pytest.mark.parametrize("policy", [EASY, IASS_NO_PREDICTIONS], ids=["easy", "iass-without-predictions"])
def test_without_predictions_the_users_estimates_plan(policy: object) -> None:
    d = decide(snapshot([node("n0")], [queue(gpus=64)], _scene()), 10, policy)  # type: ignore[arg-type]
    assert d.waiting["ns/big"].reserved_start == pytest.approx(1000)
    assert admitted(d) == []  # short would end at 2010 by its estimate: it would delay big
    assert d.waiting["ns/short"].reason is PendingReason.BACKFILL_BLOCKED


def test_a_job_that_runs_past_its_prediction_is_planned_by_its_estimate_again() -> None:
    # At t=150 r has run 150 s, past its 100 s prediction: its user's 1,000 s bound holds again, rather
    # than "about to end" cycle after cycle.
    d = decide(snapshot([node("n0")], [queue(gpus=64)], _scene()), 150, IASS)
    assert d.waiting["ns/big"].reserved_start == pytest.approx(1000)


def test_the_learner_takes_a_quantile_of_the_recent_ratios_once_it_has_enough() -> None:
    learner = EstimateLearner(RuntimePredictionSettings(enabled=True, quantile=0.5, window=4, min_samples=3))
    learner.observe("a", 10, 100)
    learner.observe("a", 40, 100)
    assert learner.factor("a") is None and learner.predict("a", 1000) is None  # too little history
    learner.observe("a", 300, 100)  # ran past its estimate: counts as 1, a prediction never exceeds it
    assert learner.factor("a") == pytest.approx(0.4)  # nearest-rank median of 0.1, 0.4, 1.0
    assert learner.predict("a", 1000) == pytest.approx(400)
    learner.observe("a", 20, None)  # no estimate: nothing to learn
    learner.observe("a", 20, 100)
    learner.observe("a", 20, 100)  # the window keeps the last 4: 0.4, 1.0, 0.2, 0.2
    assert learner.factor("a") == pytest.approx(0.2)
    assert learner.factor("b") is None and learner.predict("a", None) is None


def test_the_simulator_learns_per_queue_and_feeds_predictions_to_the_engine() -> None:
    trace = generate(300, seed=3, cluster_gpus=64, load=0.9)
    sim = Simulator(trace, IASS, ClusterSpec.uniform(8))
    seen: list[float] = []

    def spy(snap, now, policy):  # type: ignore[no-untyped-def]
        seen.extend(j.runtime_prediction_s for j in snap.jobs if j.runtime_prediction_s is not None)
        return decide(snap, now, policy)

    sim.decide_fn = spy
    res = sim.run()
    assert all(j.end is not None for j in res.jobs)
    assert sim.learner is not None
    factor = sim.learner.factor("batch")
    # The generator's estimates are run time x U(1.0, 2.5) rounded up to a usual walltime.
    assert factor is not None and 0.2 < factor < 1.0
    assert seen  # predictions reached the engine
    # Under a policy without predictions the simulator learns nothing and feeds none.
    assert Simulator(trace, EASY, ClusterSpec.uniform(8)).learner is None


def test_the_controller_learns_from_succeeded_jobs_per_namespace_and_predicts(monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio

    from queue_controller.operator import controller as controller_module
    from tests.unit.operator_world import make_world

    policy = IASS.model_copy(update={"backfill": IASS.backfill.model_copy(update={"runtime_predictions":
        RuntimePredictionSettings(enabled=True, min_samples=1)})})
    seen: dict[str, float | None] = {}

    def spy(snap, now, pol):  # type: ignore[no-untyped-def]
        seen.update({j.key: j.runtime_prediction_s for j in snap.jobs})
        return decide(snap, now, pol)

    monkeypatch.setattr(controller_module, "decide", spy)

    async def scenario() -> None:
        w = make_world(policy)
        w.submit("a", runtime_s=100, runtimeEstimateSeconds=400)
        await w.cycle()
        w.server.run_pods("a")
        await w.cycle()  # the controller first sees the pods running
        await w.cycle(1)
        assert seen["team/a"] is None  # nothing has finished yet: the estimate plans
        w.clock.advance(100)
        w.server.finish_pods("a")
        await w.cycle()
        st = w.server.status("a")
        assert st["phase"] == "Succeeded"
        w.submit("b", runtime_s=100, runtimeEstimateSeconds=1000)
        await w.cycle()
        assert seen["team/b"] == pytest.approx(1000 * st["runTimeSeconds"] / 400)

    asyncio.run(scenario())

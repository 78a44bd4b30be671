"""The failure rate the controller measures (the MTBF behind `auto` checkpoint intervals) and the interval
it writes into each job's status."""

from __future__ import annotations

import asyncio

import pytest

from queue_controller.engine.policy import daly_interval
from queue_controller.operator.cache import Cache
from queue_controller.operator.failures import FailureRate
from tests.unit.operator_world import make_world, node_body

pytestmark = pytest.mark.unit


def test_the_prior_alone_then_the_measurement_takes_over() -> None:
    cache = Cache()
    for i in range(10):
        cache.upsert_node(node_body(f"n{i}"))
    rate = FailureRate(prior_mtbf_s=7 * 86400.0)
    rate.observe(cache, 0.0)
    assert rate.mtbf_s == 7 * 86400.0  # nothing observed: the prior
    rate.observe(cache, 3600.0)  # 10 Ready nodes for an hour
    cache.upsert_node(node_body("n3", ready=False))  # one turns NotReady: a failure
    rate.observe(cache, 3600.0)
    rate.pod_failed()
    assert (rate.node_seconds, rate.failures) == (36000.0, 2)
    assert rate.mtbf_s == pytest.approx((7 * 86400.0 + 36000.0) / 3)
    cache.upsert_node(node_body("n3", ready=False))  # still NotReady: no new failure
    rate.observe(cache, 7200.0)  # 9 Ready nodes for an hour
    assert (rate.node_seconds, rate.failures) == (36000.0 + 9 * 3600.0, 2)


def test_a_running_job_says_which_interval_is_in_force_and_why() -> None:
    async def scenario() -> None:
        w = make_world("iass")
        w.submit("auto", checkpoint={"interval": "auto"})
        w.submit("fixed", checkpoint={"interval": "45m"}, gpus=0)
        await w.cycle()
        w.server.run_pods("auto")
        w.server.run_pods("fixed")
        await w.cycle()  # the controller first sees the pods running
        await w.cycle(1)
        fixed = w.server.status("fixed")["checkpointInterval"]
        assert fixed == {"seconds": 2700.0, "reason": "spec.checkpoint.interval"}
        auto = w.server.status("auto")["checkpointInterval"]
        assert auto["reason"].startswith("auto: Daly's interval for a ")
        assert "node MTBF from 0 failure(s) in" in auto["reason"] and "prior 168h" in auto["reason"]
        cost = w.controller.intervals._jobs["team/auto"].checkpoint_cost_s
        expected = min(max(daly_interval(cost, w.controller.failures.mtbf_s), 300.0), 86400.0)
        assert auto["seconds"] == pytest.approx(expected, rel=1e-3)

    asyncio.run(scenario())

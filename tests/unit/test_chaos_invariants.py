"""The chaos tier's pure checks (tests/chaos/invariants.py): what a ClusterQueue may use, and which
tracebacks in a controller's log count as bugs."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import pytest

from tests.chaos.invariants import queue_limits, traceback_violations
from tests.plugins.controller import cluster_queue

pytestmark = pytest.mark.unit

GPU = ("h100", "nvidia.com/gpu")


def test_a_queue_alone_may_use_its_nominal_quota() -> None:
    assert queue_limits([cluster_queue("a", 16)])["a"].usable[GPU] == 16


def test_in_a_cohort_a_queue_may_borrow_up_to_its_limit_or_the_cohort_total() -> None:
    a, b = cluster_queue("a", 8, cohort="c"), cluster_queue("b", 16, cohort="c")
    a["spec"]["resourceGroups"][0]["flavors"][0]["resources"][2]["borrowingLimit"] = "4"
    limits = queue_limits([a, b])
    assert limits["a"].usable[GPU] == 12  # nominal 8 + borrowing limit 4
    assert limits["b"].usable[GPU] == 24  # no limit: the cohort's total
    assert limits["a"].cohort_total[GPU] == Fraction(24)


OUTAGE_LOG = """\
[2026-11-27 21:53:23,778] ckq.controller       [ERROR   ] scheduling cycle failed; retrying
Traceback (most recent call last):
  File "x.py", line 1, in f
    raise
ConnectionRefusedError: [Errno 111] Connect call failed ('127.0.0.1', 58539)

The above exception was the direct cause of the following exception:

Traceback (most recent call last):
  File "x.py", line 2, in g
aiohttp.client_exceptions.ClientConnectorError: Cannot connect to host 127.0.0.1:58539 ssl:default
[2026-11-27 21:53:41,124] ckq.controller       [ERROR   ] scheduling cycle failed; retrying
Traceback (most recent call last):
  File "x.py", line 3, in h
queue_controller.operator.kube.ApiError: 503 the request has been made before all known HTTP paths
"""

BUG_LOG = """\
[2026-11-27 21:53:41,124] ckq.controller       [ERROR   ] scheduling cycle failed; retrying
Traceback (most recent call last):
  File "x.py", line 3, in h
KeyError: 'admission'
"""


def test_api_server_errors_are_expected_only_during_an_outage(tmp_path: Path) -> None:
    log = tmp_path / "controller-0.log"
    log.write_text(OUTAGE_LOG)
    assert traceback_violations([log], outage=True) == []
    assert len(traceback_violations([log], outage=False)) == 3


def test_any_other_traceback_counts_even_during_an_outage(tmp_path: Path) -> None:
    log = tmp_path / "controller-0.log"
    log.write_text(BUG_LOG)
    found = traceback_violations([log], outage=True)
    assert len(found) == 1 and "KeyError: 'admission'" in found[0] and "scheduling cycle failed" in found[0]

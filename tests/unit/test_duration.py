"""The one duration grammar (queue_controller/duration.py), and that the API and policy profiles share it."""

from __future__ import annotations

import re

import pytest
from pydantic import ValidationError

from queue_controller.api import CheckpointPolicy
from queue_controller.api import parse_duration as api_parse_duration
from queue_controller.duration import DURATION_PATTERN, parse_duration
from queue_controller.engine import Policy
from queue_controller.engine import parse_duration as engine_parse_duration

pytestmark = pytest.mark.unit

VALID = {
    "90s": 90.0, "30m": 1800.0, "2h": 7200.0, "1h30m": 5400.0, "1.5h": 5400.0, "500ms": 0.5, "250ms": 0.25,
    "1m30s": 90.0, "1h1m1s1ms": 3661.001,
    "30m1h": 5400.0,  # as Go: units in any order
}
MALFORMED = ["", "soon", "30", "30 minutes", "1h 30m", " 30m", "30m ", "-1s", "+1s", "1d", "1us", "1ns", ".5s",
             "1.s", "1H", "auto", "1e3s", "٣s"]
ZERO = ["0s", "0ms", "0h0m0s", "0.0s"]


@pytest.mark.parametrize(("text", "seconds"), VALID.items())
def test_valid_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", MALFORMED)
def test_malformed_durations_name_the_accepted_forms(text: str) -> None:
    with pytest.raises(ValueError, match=r"is not a duration: .*'30m', '1h30m', '90s' or '500ms'"):
        parse_duration(text)


@pytest.mark.parametrize("text", ZERO)
def test_a_duration_is_longer_than_zero(text: str) -> None:
    with pytest.raises(ValueError, match="longer than zero"):
        parse_duration(text)


def test_the_api_and_the_engine_use_the_one_parser() -> None:
    assert api_parse_duration is parse_duration
    assert engine_parse_duration is parse_duration


@pytest.mark.parametrize("text", [*VALID, *MALFORMED, *ZERO])
def test_a_job_interval_and_a_policy_default_accept_the_same_strings(text: str) -> None:
    """The CRD pattern (what the API server checks), the job model and a policy profile agree."""
    parses = True
    try:
        parse_duration(text)
    except ValueError:
        parses = False
    in_pattern = re.fullmatch(DURATION_PATTERN, text) is not None
    assert in_pattern == (parses or text in ZERO)
    try:
        CheckpointPolicy(interval=text)
        job_ok = True
    except ValidationError:
        job_ok = False
    try:
        Policy.model_validate({"name": "p", "checkpoints": {"defaultInterval": text}})
        policy_ok = True
    except ValidationError:
        policy_ok = False
    if text == "auto":  # the one non-duration both fields take
        assert job_ok and policy_ok
    else:
        assert job_ok == policy_ok == parses


def test_a_policy_default_interval_in_milliseconds() -> None:
    # engine/policy.py used to refuse "500ms", which a job's own interval accepted.
    policy = Policy.model_validate({"name": "p", "checkpoints": {"periodic": True, "defaultInterval": "500ms"}})
    assert policy.interval_for(None, False, checkpoint_cost_s=1.0) == 0.5
    assert policy.interval_for(None, False, checkpoint_cost_s=1.0) == CheckpointPolicy(
        interval="500ms").interval_seconds()

"""Policy profiles (policy.py): validation, and the checkpoint interval a job gets."""

from __future__ import annotations

import pytest

from queue_controller.engine import Policy

pytestmark = pytest.mark.unit


def test_policy_profiles_validate() -> None:
    with pytest.raises(ValueError, match=r"reservationDepth|reservation_depth"):
        Policy.model_validate({"name": "x", "backfill": {"reservationDepth": 0}})

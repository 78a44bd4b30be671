"""docs/api-reference.md stays in step with the models, and its examples are valid."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from queue_controller.api.crdgen import KINDS
from queue_controller.api.docgen import update_reference
from queue_controller.api.validation import validate_object

pytestmark = pytest.mark.unit

DOC = Path(__file__).resolve().parents[2] / "docs" / "api-reference.md"


def test_field_tables_are_current() -> None:
    text = DOC.read_text()
    assert update_reference(text) == text, "run `python -m queue_controller.api.docgen docs/api-reference.md`"


def test_every_kind_has_a_field_table_and_an_example() -> None:
    text = DOC.read_text()
    examples = [yaml.safe_load(b) for b in re.findall(r"```yaml\n(.*?)```", text, re.S)]
    kinds = {e["kind"] for e in examples}
    for kind in KINDS:
        assert f"<!-- BEGIN FIELDS: {kind.KIND} -->" in text
        assert kind.KIND in kinds


def test_examples_are_valid() -> None:
    for block in re.findall(r"```yaml\n(.*?)```", DOC.read_text(), re.S):
        validate_object(yaml.safe_load(block))

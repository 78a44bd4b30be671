"""Kubernetes quantities: exact parsing, milli-units rounding like MilliValue, canonical formatting."""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from queue_controller.api.quantity import (
    QuantityError,
    format_milli,
    format_quantity,
    is_quantity,
    parse_quantity,
    resources_to_milli,
    to_milli,
)

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("500m", Fraction(1, 2)),
        ("64Gi", Fraction(64 * 2**30)),
        ("1.5", Fraction(3, 2)),
        ("8", Fraction(8)),
        ("1e3", Fraction(1000)),
        ("2Ki", Fraction(2048)),
        ("1.5Gi", Fraction(3 * 2**29)),
        ("100n", Fraction(1, 10**7)),
        ("3u", Fraction(3, 10**6)),
        ("2k", Fraction(2000)),
        ("1E-3", Fraction(1, 1000)),
        ("+5", Fraction(5)),
        ("-2", Fraction(-2)),
        (".5", Fraction(1, 2)),
        ("1.", Fraction(1)),
        ("0", Fraction(0)),
        (7, Fraction(7)),
        (0.1, Fraction(1, 10)),
        (Decimal("0.25"), Fraction(1, 4)),
    ],
)
def test_parse_exact(text: str | int | float | Decimal, value: Fraction) -> None:
    assert parse_quantity(text) == value


@pytest.mark.parametrize(
    "text", ["", "abc", "1K", "1.5.5", "1e1.5", "Gi", "1 Gi", "1gi", "--1", "1e999", "1ee3", " 1", "1 ", "1\n"]
)
def test_parse_rejects(text: str) -> None:
    with pytest.raises(QuantityError, match="expected"):
        parse_quantity(text)
    assert not is_quantity(text)


@pytest.mark.parametrize("value", [True, None, [1], float("nan"), float("inf")])
def test_parse_rejects_non_quantities(value: object) -> None:
    with pytest.raises(QuantityError):
        parse_quantity(value)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "milli"),
    [("500m", 500), ("1", 1000), ("64Gi", 64 * 2**30 * 1000), ("1n", 1), ("1500u", 2), ("0.0001", 1),
     ("-1n", -1), ("2.5", 2500), (3, 3000)],
)
def test_to_milli_rounds_up_like_milli_value(text: str | int, milli: int) -> None:
    assert to_milli(text) == milli


@pytest.mark.parametrize(
    ("text", "canonical"),
    [("500m", "500m"), ("0.5", "500m"), ("1000m", "1"), ("1.5", "1500m"), ("1500", "1500"), ("2000", "2k"),
     ("64Gi", "64Gi"), ("1.5Gi", "1536Mi"), ("0.5Ki", "512"), ("1024", "1024"), ("2048", "2048"), ("1e3", "1e3"),
     ("1.5e3", "1500"), ("0", "0"), ("1Ki", "1Ki"), ("1536", "1536"), ("0.1n", "1n"), ("12e6", "12e6")],
)
def test_format_canonical(text: str, canonical: str) -> None:
    assert format_quantity(text) == canonical


def test_format_milli() -> None:
    assert format_milli(1500) == "1500m"
    assert format_milli(64 * 2**30 * 1000, "BinarySI") == "64Gi"


def test_resources_to_milli() -> None:
    assert resources_to_milli({"cpu": "250m", "memory": "1Gi", "nvidia.com/gpu": 2, "x": 0.5}) == {
        "cpu": 250, "memory": 2**30 * 1000, "nvidia.com/gpu": 2000, "x": 500,
    }
    assert resources_to_milli(None) == {}


def test_resources_to_milli_names_the_resource() -> None:
    with pytest.raises(QuantityError, match="memory"):
        resources_to_milli({"cpu": "1", "memory": "lots"})


# Quantities Kubernetes can represent exactly: integer nano-units with a suffix.
_SUFFIXES = ["", "n", "u", "m", "k", "M", "G", "T", "Ki", "Mi", "Gi", "Ti"]
nanos = st.integers(min_value=0, max_value=10**15)


@st.composite
def quantity_strings(draw: st.DrawFn) -> str:
    whole = draw(st.integers(min_value=0, max_value=10**6))
    frac = draw(st.none() | st.integers(min_value=0, max_value=999))
    suffix = draw(st.sampled_from([*_SUFFIXES, "e3", "e-3", "E6"]))
    number = str(whole) if frac is None else f"{whole}.{frac:03d}"
    return number + suffix


@given(nanos)
def test_format_parse_round_trip_exact(n: int) -> None:
    value = Fraction(n, 10**9)
    for fmt in ("DecimalSI", "BinarySI", "DecimalExponent"):
        assert parse_quantity(format_quantity(value, fmt)) == value


@given(quantity_strings())
def test_parse_format_parse_is_stable(text: str) -> None:
    value = parse_quantity(text)
    canonical = format_quantity(text)
    # Canonical form keeps the value up to Kubernetes' nano precision (rounded up), and is a fixed point.
    assert parse_quantity(canonical) == Fraction(-((-value * 10**9).__floor__()), 10**9)
    assert format_quantity(canonical) == canonical


@given(st.lists(st.integers(min_value=0, max_value=10**9), max_size=50))
def test_sums_are_exact(millis: list[int]) -> None:
    texts = [f"{m}m" for m in millis]
    assert sum(to_milli(t) for t in texts) == sum(millis)
    assert sum((parse_quantity(t) for t in texts), Fraction(0)) * 1000 == sum(millis)
    # Ten 100m requests are exactly one CPU, which float arithmetic gets wrong.
    assert sum(to_milli("0.1") for _ in range(10)) == 1000


@given(st.integers(min_value=-(10**12), max_value=10**12))
def test_to_milli_of_integer_milli_strings(m: int) -> None:
    assert to_milli(f"{m}m") == m
    assert to_milli(format_milli(m)) == m


@settings(max_examples=300, derandomize=True)
@given(st.from_regex(r"\A\+?[0-9]{1,3}(\.[0-9]{0,2})?([eE][+-]?[0-9]{1,4}|[KMGTPE]i|[numkMGTPE])?\Z", fullmatch=True))
def test_the_crd_pattern_accepts_what_the_parser_accepts(text: str) -> None:
    """The API server (the CRDs' `pattern`) and the controller (the parser) agree, exponents included:
    "1e999" was stored by the API server and refused only by the controller (found by the fuzz tier)."""
    import re

    from queue_controller.api.quantity import NONNEGATIVE_QUANTITY_PATTERN, QuantityError

    try:
        parse_quantity(text)
        parsed = True
    except QuantityError:
        parsed = False
    assert (re.fullmatch(NONNEGATIVE_QUANTITY_PATTERN, text) is not None) == parsed, text

"""Kubernetes resource quantities ("500m", "64Gi", "1.5", "1e3"), parsed exactly.

Values are `Fraction`s so that sums never drift; the scheduling engine works in integer milli-units
(`to_milli`), rounding up any sub-milli remainder exactly as Kubernetes' `Quantity.MilliValue` does.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from decimal import Decimal
from fractions import Fraction
from typing import Literal

QuantityInput = str | int | float | Fraction | Decimal

# Same grammar as k8s.io/apimachinery/pkg/api/resource (the exponent of "1e3" must be an integer).
_QUANTITY_RE = re.compile(
    r"^(?P<num>[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))"
    r"(?P<suffix>[KMGTPE]i|[numkMGTPE]|[eE][+-]?[0-9]+)?$"
)

# An exponent of at most MAX_EXPONENT (64), leading zeros allowed: what the parser accepts, so that the
# API server refuses "1e999" at admission instead of storing a quota the controller cannot use.
_EXPONENT = r"[eE](\+|-)?0*([0-9]|[1-5][0-9]|6[0-4])"
#: Regex for CRD schemas (`pattern` of int-or-string fields): the same grammar as the parser.
QUANTITY_PATTERN = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|(" + _EXPONENT + r"))?$"
)
#: As `QUANTITY_PATTERN` but without a minus sign: quotas and limits cannot be negative.
NONNEGATIVE_QUANTITY_PATTERN = (
    r"^\+?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|(" + _EXPONENT + r"))?$"
)

#: Human wording of the accepted forms, used in every error message about a quantity.
ACCEPTED_FORMS = (
    'a Kubernetes quantity: an integer, or a string such as "8", "1.5", "500m", "64Gi", "2Ki", "1e3" '
    "(decimal suffixes n u m k M G T P E, binary suffixes Ki Mi Gi Ti Pi Ei, or an integer exponent eN)"
)

_DECIMAL_SUFFIX_EXP = {"n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}
_BINARY_SUFFIX_EXP = {"Ki": 10, "Mi": 20, "Gi": 30, "Ti": 40, "Pi": 50, "Ei": 60}
_DECIMAL_EXP_SUFFIX = {v: k for k, v in _DECIMAL_SUFFIX_EXP.items()}
_BINARY_EXP_SUFFIX = {v: k for k, v in _BINARY_SUFFIX_EXP.items()}
# A quantity's exponent is bounded so that "1e999999999" cannot make us build a gigantic integer.
#: The largest exponent ("1e64") a quantity may have: the CRD pattern, the admission policy and the parser agree.
MAX_EXPONENT = 64

Format = Literal["DecimalSI", "BinarySI", "DecimalExponent"]


class QuantityError(ValueError):
    """A value that is not a Kubernetes quantity."""

    def __init__(self, value: object, field: str | None = None) -> None:
        where = f" for {field}" if field else ""
        super().__init__(f"invalid quantity {value!r}{where}: expected {ACCEPTED_FORMS}")
        self.value = value
        self.field = field


def _split(value: str) -> tuple[Fraction, Format]:
    m = _QUANTITY_RE.fullmatch(value)
    if m is None:
        raise QuantityError(value)
    number = Fraction(Decimal(m["num"]))
    suffix = m["suffix"] or ""
    if suffix in _BINARY_SUFFIX_EXP:
        return number * (1 << _BINARY_SUFFIX_EXP[suffix]), "BinarySI"
    if suffix in _DECIMAL_SUFFIX_EXP:
        return number * Fraction(10) ** _DECIMAL_SUFFIX_EXP[suffix], "DecimalSI"
    exponent = int(suffix[1:])
    if abs(exponent) > MAX_EXPONENT:
        raise QuantityError(value)
    return number * Fraction(10) ** exponent, "DecimalExponent"


def parse_quantity(value: QuantityInput) -> Fraction:
    """Parse a quantity into its exact value (a `Fraction`); raise `QuantityError` if it is not one."""
    if isinstance(value, bool):  # bool is an int subclass, but `true` is never a quantity
        raise QuantityError(value)
    if isinstance(value, Fraction):
        return value
    if isinstance(value, int):
        return Fraction(value)
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise QuantityError(value)
        return Fraction(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise QuantityError(value)
        # repr() is the shortest string that round-trips, so 0.1 means 1/10, not the binary float.
        return Fraction(Decimal(repr(value)))
    if isinstance(value, str):
        return _split(value)[0]
    raise QuantityError(value)


def quantity_format(value: str) -> Format:
    """The Kubernetes format family a quantity string was written in (used to pick its canonical form)."""
    return _split(value)[1]


def is_quantity(value: object) -> bool:
    """True when `value` parses as a quantity."""
    try:
        parse_quantity(value)  # type: ignore[arg-type]
    except QuantityError:
        return False
    return True


def _ceil_away_from_zero(x: Fraction) -> int:
    return math.ceil(x) if x >= 0 else math.floor(x)


def to_milli(value: QuantityInput) -> int:
    """Exact milli-units, rounding any sub-milli remainder away from zero (Kubernetes `MilliValue`)."""
    return _ceil_away_from_zero(parse_quantity(value) * 1000)


def from_milli(milli: int) -> Fraction:
    """The exact value of an integer count of milli-units."""
    return Fraction(milli, 1000)


def resources_to_milli(resources: Mapping[str, QuantityInput] | None) -> dict[str, int]:
    """Map resource name -> quantity to resource name -> integer milli-units (the engine's unit)."""
    out: dict[str, int] = {}
    for name, q in (resources or {}).items():
        try:
            out[name] = to_milli(q)
        except QuantityError:
            raise QuantityError(q, name) from None
    return out


def add_milli(a: Mapping[str, int], b: Mapping[str, int]) -> dict[str, int]:
    """Per-resource sum of two milli-unit maps."""
    out = dict(a)
    for k, v in b.items():
        out[k] = out.get(k, 0) + v
    return out


def max_milli(a: Mapping[str, int], b: Mapping[str, int]) -> dict[str, int]:
    """Per-resource maximum of two milli-unit maps (a missing resource counts as 0)."""
    out = dict(a)
    for k, v in b.items():
        out[k] = max(out.get(k, 0), v)
    return out


def _decimal_parts(value: Fraction) -> tuple[int, int]:
    """(mantissa, exponent) with exponent a multiple of 3 and as large as keeps the mantissa integral.

    Values finer than 1n are rounded up to the next nano, as Kubernetes does.
    """
    nanos = _ceil_away_from_zero(value * 10**9)
    if nanos == 0:
        return 0, 0
    exponent = -9
    while nanos % 1000 == 0 and exponent < 18:
        nanos //= 1000
        exponent += 3
    return nanos, exponent


def format_quantity(value: QuantityInput, fmt: Format | None = None) -> str:
    """Canonical Kubernetes string for a quantity.

    `fmt` picks the suffix family; by default it is the family the input string was written in
    (DecimalSI for numbers). Like Kubernetes, BinarySI falls back to DecimalSI for values that are
    not a whole multiple of 1Ki, and sub-nano precision is rounded up.
    """
    if fmt is None:
        fmt = quantity_format(value) if isinstance(value, str) else "DecimalSI"
    exact = parse_quantity(value)
    if fmt == "BinarySI" and exact.denominator == 1 and exact != 0 and abs(exact) >= 1024:
        n = int(exact)
        exponent = 0
        while n % 1024 == 0 and exponent < 60:
            n //= 1024
            exponent += 10
        if exponent > 0:
            return f"{n}{_BINARY_EXP_SUFFIX[exponent]}"
        # Not a multiple of 1Ki: fall through to decimal, as Kubernetes does.
    mantissa, exponent = _decimal_parts(exact)
    if fmt == "DecimalExponent":
        return f"{mantissa}e{exponent}" if exponent else str(mantissa)
    return f"{mantissa}{_DECIMAL_EXP_SUFFIX[exponent]}"


def format_milli(milli: int, fmt: Format = "DecimalSI") -> str:
    """Canonical Kubernetes string for an integer count of milli-units."""
    return format_quantity(from_milli(milli), fmt)

"""Durations: the one grammar for every duration ckq reads.

A duration is one or more decimal numbers, each followed by a unit: `h`, `m`, `s` or `ms`, as in `"30m"`,
`"1h30m"`, `"1.5h"`, `"90s"`, `"500ms"`. It is Go's `time.ParseDuration` limited to the units that make
sense for checkpoint intervals (no sign, no `us` or `ns`), so the API server can check it with the same
pattern and CEL's `duration()`. Every duration ckq reads is an interval, so it must be longer than zero.

Durations appear in a CheckpointableJob's `spec.checkpoint.interval` (api/job.py, which also puts
`DURATION_PATTERN` into the CRD) and in a policy profile's `checkpoints.defaultInterval`
(engine/policy.py). Both parse them here. This module is pure (no I/O, no clock, no dependencies), so the
engine may import it.
"""

from __future__ import annotations

import re

# One number and its unit, repeated: the body of the patterns below. `ms` must stay ahead of `m` where
# the units are split (`_PART`); in these patterns a full match backtracks into `ms` by itself.
DURATION_BODY = r"([0-9]+(\.[0-9]+)?(h|m|s|ms))+"
DURATION_PATTERN = "^" + DURATION_BODY + "$"

_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|h|m|s)")
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
_FULL = re.compile(DURATION_PATTERN)

EXAMPLES = "'30m', '1h30m', '90s' or '500ms'"


def parse_duration(text: str) -> float:
    """Seconds in a duration such as "1h30m", "90s" or "500ms". Raises ValueError, naming the accepted
    forms, for anything else, and for a duration of zero."""
    if not _FULL.fullmatch(text):
        raise ValueError(f"{text!r} is not a duration: use a number and a unit (h, m, s, ms), such as {EXAMPLES}")
    seconds = sum(float(n) * _UNIT_SECONDS[u] for n, u in _PART.findall(text))
    if seconds <= 0:
        raise ValueError(f"{text!r} must be longer than zero")
    return seconds

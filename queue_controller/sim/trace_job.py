"""One job of a workload trace, whatever format it was read from.

The simulator reads traces as JSONL (trace.py, which documents every field) or converts them from SWF
logs of the Parallel Workloads Archive (swf.py). Both produce `TraceJob`s and report unreadable input as
`TraceError`. The record lives here, below both readers, so that neither imports the other for it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass


class TraceError(ValueError):
    """A trace that cannot be read; the message names the file, the line and the field."""


@dataclass(frozen=True, slots=True)
class TraceJob:
    """One job: the fields of a JSONL trace line (see trace.py)."""

    id: str
    submit_s: float
    runtime_s: float
    estimate_s: float | None
    cpu: float
    memory_gib: float
    gpus: int
    pods: int
    priority: int
    queue: str
    checkpointable: bool
    checkpoint_gib: float | None

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

"""The simulator's workload trace: JSONL, one job per line.

Fields (exactly these, all required; `null` allowed where noted):

| field            | type          | meaning                                                             |
|------------------|---------------|---------------------------------------------------------------------|
| `id`             | str           | unique job id                                                       |
| `submit_s`       | float >= 0    | submit time, seconds from the trace start                           |
| `runtime_s`      | float > 0     | work the job needs, seconds (what it would run undisturbed)         |
| `estimate_s`     | float or null | the user's runtime estimate (walltime), for backfill                |
| `cpu`            | float >= 0    | CPU cores, total over all pods                                      |
| `memory_gib`     | float >= 0    | memory in GiB, total over all pods                                  |
| `gpus`           | int >= 0      | GPUs, total over all pods (must divide evenly among the pods)       |
| `pods`           | int >= 1      | pods in the gang                                                    |
| `priority`       | int           | larger runs first and may preempt smaller                           |
| `queue`          | str           | queue name; mapped to a ClusterQueue by the cluster layout          |
| `checkpointable` | bool          | whether the job can be checkpointed                                 |
| `checkpoint_gib` | float or null | checkpoint size in GiB; null: the job's memory (host, plus GPUs')   |
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from queue_controller.sim.swf import read_swf
from queue_controller.sim.trace_job import TraceError, TraceJob

FIELDS: tuple[str, ...] = (
    "id", "submit_s", "runtime_s", "estimate_s", "cpu", "memory_gib", "gpus", "pods", "priority", "queue",
    "checkpointable", "checkpoint_gib",
)


def _num(rec: dict[str, Any], name: str, *, minimum: float | None = None, positive: bool = False,
         nullable: bool = False) -> float | None:
    v = rec[name]
    if v is None and nullable:
        return None
    # bool is an int subclass: `true` is not a number of seconds.
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        kind = "a number or null" if nullable else "a number"
        raise ValueError(f"field {name!r}: expected {kind}, got {v!r}")
    if positive and v <= 0:
        raise ValueError(f"field {name!r}: must be > 0, got {v!r}")
    if minimum is not None and v < minimum:
        raise ValueError(f"field {name!r}: must be >= {minimum:g}, got {v!r}")
    return float(v)


def _int(rec: dict[str, Any], name: str, minimum: int | None = None) -> int:
    v = rec[name]
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if isinstance(v, bool) or not isinstance(v, int):
        raise ValueError(f"field {name!r}: expected an integer, got {v!r}")
    if minimum is not None and v < minimum:
        raise ValueError(f"field {name!r}: must be >= {minimum}, got {v!r}")
    return v


def parse_job(rec: object) -> TraceJob:
    """Validate one decoded JSON record. Raises ValueError naming the field and what is allowed."""
    if not isinstance(rec, dict):
        raise ValueError(f"expected a JSON object with fields {', '.join(FIELDS)}")
    missing = [f for f in FIELDS if f not in rec]
    if missing:
        raise ValueError(f"missing field(s) {', '.join(missing)}")
    extra = sorted(set(rec) - set(FIELDS))
    if extra:
        raise ValueError(f"unknown field(s) {', '.join(extra)}; allowed: {', '.join(FIELDS)}")
    if not isinstance(rec["id"], str) or not rec["id"]:
        raise ValueError(f"field 'id': expected a non-empty string, got {rec['id']!r}")
    if not isinstance(rec["queue"], str) or not rec["queue"]:
        raise ValueError(f"field 'queue': expected a non-empty string, got {rec['queue']!r}")
    if not isinstance(rec["checkpointable"], bool):
        raise ValueError(f"field 'checkpointable': expected true or false, got {rec['checkpointable']!r}")
    gpus = _int(rec, "gpus", 0)
    pods = _int(rec, "pods", 1)
    if gpus % pods:
        raise ValueError(f"field 'gpus': {gpus} GPUs do not divide evenly among {pods} pods")
    estimate = _num(rec, "estimate_s", positive=True, nullable=True)
    return TraceJob(
        id=rec["id"],
        submit_s=_num(rec, "submit_s", minimum=0.0) or 0.0,
        runtime_s=_num(rec, "runtime_s", positive=True) or 0.0,
        estimate_s=estimate,
        cpu=_num(rec, "cpu", minimum=0.0) or 0.0,
        memory_gib=_num(rec, "memory_gib", minimum=0.0) or 0.0,
        gpus=gpus,
        pods=pods,
        priority=_int(rec, "priority"),
        queue=rec["queue"],
        checkpointable=rec["checkpointable"],
        checkpoint_gib=_num(rec, "checkpoint_gib", minimum=0.0, nullable=True),
    )


def iter_trace(path: Path) -> Iterator[TraceJob]:
    seen: set[str] = set()
    try:
        fh = path.open(encoding="utf-8")
    except OSError as e:
        raise TraceError(f"{path}: cannot read trace: {e.strerror or e}") from None
    with fh:
        for lineno, line in enumerate(fh, 1):
            text = line.strip()
            if not text or text.startswith("#"):
                continue  # blank lines and comments are allowed, for hand-written traces
            try:
                rec = json.loads(text)
            except json.JSONDecodeError as e:
                raise TraceError(f"{path}:{lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
            try:
                job = parse_job(rec)
            except ValueError as e:
                raise TraceError(f"{path}:{lineno}: {e}") from None
            if job.id in seen:
                raise TraceError(f"{path}:{lineno}: field 'id': duplicate id {job.id!r}")
            seen.add(job.id)
            yield job


def read_trace(path: Path) -> list[TraceJob]:
    """All jobs of a JSONL trace, sorted by submit time (stable, so ties keep file order)."""
    jobs = list(iter_trace(path))
    if not jobs:
        raise TraceError(f"{path}: the trace holds no jobs")
    jobs.sort(key=lambda j: j.submit_s)
    return jobs


def write_trace(path: Path, jobs: Iterable[TraceJob]) -> int:
    n = 0
    with path.open("w", encoding="utf-8") as fh:
        for job in jobs:
            fh.write(job.to_json() + "\n")
            n += 1
    return n


def load_any(path: Path, fmt: str = "auto") -> list[TraceJob]:
    """Read a JSONL trace or an SWF log (by `fmt`, or by suffix when `fmt` is 'auto')."""
    if fmt not in ("auto", "jsonl", "swf"):
        raise TraceError(f"unknown trace format {fmt!r}: use auto, jsonl or swf")
    if fmt == "swf" or (fmt == "auto" and path.suffix.lower() in (".swf", ".gz") and ".swf" in path.name.lower()):
        return read_swf(path)
    return read_trace(path)

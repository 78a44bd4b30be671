"""Reader for the Standard Workload Format (SWF v2.2) of the Parallel Workloads Archive.

SWF logs come from CPU clusters, so a mapping turns them into GPU jobs (see docs/simulator.md):

- processors: field 5 (allocated), or field 8 (requested) when 5 is -1. `gpus = ceil(procs / procs_per_gpu)`
  (default one processor = one GPU); `pods = ceil(gpus / gpus_per_node)`, and `gpus` is rounded up to a
  multiple of `pods` so every pod asks for the same number.
- cpu = `cpu_per_gpu` x gpus; memory = field 7 (used KB per processor) x processors when known, else
  field 10 (requested), else `memory_gib_per_gpu` x gpus.
- run time: field 4; jobs with run time <= 0 are skipped (they never ran). estimate: field 9 (requested
  time) when > 0, else null.
- queue: "q<field 15>" ("default" when -1). priority: `queue_priorities[field 15]` when given; otherwise
  jobs whose requested time is at most `short_job_s` get `short_job_priority` (short jobs stand in for
  interactive work), the rest priority 0. SWF records no priorities, so this is a documented assumption.
- every job is checkpointable (an assumption to vary with `checkpointable`); checkpoint size: null
  (the simulator uses the job's memory).
- submit times are shifted so the first job arrives at 0.
"""

from __future__ import annotations

import gzip
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from queue_controller.sim.trace_job import TraceError, TraceJob


@dataclass(frozen=True, slots=True)
class SwfMapping:
    procs_per_gpu: float = 1.0
    gpus_per_node: int = 8
    cpu_per_gpu: float = 8.0
    memory_gib_per_gpu: float = 64.0
    queue_priorities: dict[int, int] = field(default_factory=dict)
    short_job_s: float = 3600.0
    short_job_priority: int = 100
    checkpointable: bool = True


def _open(path: Path) -> TextIO:
    # PWA distributes logs gzipped; read them as they come.
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8", errors="replace")
    return path.open(encoding="utf-8", errors="replace")


def _field(parts: list[str], index: int) -> float:
    return float(parts[index - 1])  # SWF numbers its fields from 1


def read_swf(path: Path, mapping: SwfMapping | None = None) -> list[TraceJob]:
    m = mapping or SwfMapping()
    if m.procs_per_gpu <= 0 or m.gpus_per_node < 1:
        raise TraceError("SWF mapping: procs_per_gpu must be > 0 and gpus_per_node >= 1")
    jobs: list[TraceJob] = []
    first_submit: float | None = None
    try:
        fh = _open(path)
    except OSError as e:
        raise TraceError(f"{path}: cannot read SWF log: {e.strerror or e}") from None
    with fh:
        for lineno, line in enumerate(fh, 1):
            text = line.strip()
            if not text or text.startswith(";"):
                continue  # header comments
            parts = text.split()
            if len(parts) < 18:
                raise TraceError(f"{path}:{lineno}: SWF needs 18 whitespace-separated fields, found {len(parts)}")
            try:
                num = int(_field(parts, 1))
                submit = _field(parts, 2)
                run = _field(parts, 4)
                procs = _field(parts, 5)
                if procs <= 0:
                    procs = _field(parts, 8)
                used_mem_kb = _field(parts, 7)
                req_time = _field(parts, 9)
                req_mem_kb = _field(parts, 10)
                queue_no = int(_field(parts, 15))
            except ValueError:
                raise TraceError(f"{path}:{lineno}: SWF fields must be numbers (-1 for unknown)") from None
            if run <= 0 or procs <= 0:
                continue  # never ran, or no size: nothing to replay
            if first_submit is None:
                first_submit = submit
            gpus = max(1, math.ceil(procs / m.procs_per_gpu))
            pods = math.ceil(gpus / m.gpus_per_node)
            gpus = pods * math.ceil(gpus / pods)
            mem_kb = used_mem_kb if used_mem_kb > 0 else req_mem_kb
            memory_gib = mem_kb * procs / 2**20 if mem_kb > 0 else m.memory_gib_per_gpu * gpus
            estimate = req_time if req_time > 0 else None
            if queue_no in m.queue_priorities:
                priority = m.queue_priorities[queue_no]
            else:
                priority = m.short_job_priority if estimate is not None and estimate <= m.short_job_s else 0
            jobs.append(TraceJob(
                id=f"swf-{num}",
                submit_s=max(submit - first_submit, 0.0),
                runtime_s=run,
                estimate_s=estimate,
                cpu=m.cpu_per_gpu * gpus,
                memory_gib=round(memory_gib, 3),
                gpus=gpus,
                pods=pods,
                priority=priority,
                queue="default" if queue_no < 0 else f"q{queue_no}",
                checkpointable=m.checkpointable,
                checkpoint_gib=None,
            ))
    if not jobs:
        raise TraceError(f"{path}: no SWF job with a positive run time and size")
    jobs.sort(key=lambda j: j.submit_s)
    return jobs

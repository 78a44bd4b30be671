"""Discrete-event simulator: replays workload traces through the same engine as the controller.

Modules, one job each: `trace` (JSONL format), `swf` (Parallel Workloads Archive reader), `generate`
(seeded synthetic mix), `cluster` (nodes, queue layout, checkpoint cost model), `simulator` (the event
loop), `metrics`, `plots`, `runner` (one policy or a comparison, to a directory). See docs/simulator.md.
"""

from pathlib import Path

SAMPLE_TRACE = Path(__file__).resolve().parent / "data" / "sample.jsonl"

__all__ = ["SAMPLE_TRACE"]

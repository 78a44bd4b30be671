"""Trace formats: the JSONL reader's validation, the SWF mapping, and the seeded generator."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from queue_controller.sim import SAMPLE_TRACE
from queue_controller.sim.generate import Mix, generate
from queue_controller.sim.swf import SwfMapping, read_swf
from queue_controller.sim.trace import FIELDS, TraceError, load_any, read_trace, write_trace

pytestmark = pytest.mark.unit

GOOD = {"id": "a", "submit_s": 0, "runtime_s": 60, "estimate_s": None, "cpu": 4, "memory_gib": 16, "gpus": 2,
        "pods": 1, "priority": 0, "queue": "batch", "checkpointable": True, "checkpoint_gib": None}


def _write(tmp_path: Path, *records: object) -> Path:
    p = tmp_path / "t.jsonl"
    p.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return p


def test_reads_good_trace_sorted_by_submit(tmp_path: Path) -> None:
    p = _write(tmp_path, {**GOOD, "id": "late", "submit_s": 50}, GOOD)
    jobs = read_trace(p)
    assert [j.id for j in jobs] == ["a", "late"]
    assert jobs[0].estimate_s is None and jobs[0].gpus == 2


@pytest.mark.parametrize(("change", "needle"), [
    ({"gpus": 3, "pods": 2}, "field 'gpus'"),
    ({"runtime_s": 0}, "field 'runtime_s': must be > 0"),
    ({"submit_s": "soon"}, "field 'submit_s': expected a number"),
    ({"checkpointable": "yes"}, "field 'checkpointable'"),
    ({"pods": 0}, "field 'pods': must be >= 1"),
    ({"priority": 1.5}, "field 'priority': expected an integer"),
    ({"colour": "red"}, "unknown field(s) colour"),
])
def test_bad_field_names_line_and_field(tmp_path: Path, change: dict[str, object], needle: str) -> None:
    p = _write(tmp_path, GOOD, {**GOOD, "id": "b", **change})
    with pytest.raises(TraceError) as e:
        read_trace(p)
    assert f"{p}:2:" in str(e.value) and needle in str(e.value)


def test_malformed_json_and_missing_and_duplicate(tmp_path: Path) -> None:
    with pytest.raises(TraceError, match=r":1: not valid JSON"):
        read_trace(_write(tmp_path, "{oops"))
    missing = {k: v for k, v in GOOD.items() if k != "queue"}
    with pytest.raises(TraceError, match=r":1: missing field\(s\) queue"):
        read_trace(_write(tmp_path, missing))
    with pytest.raises(TraceError, match=r":2: field 'id': duplicate id 'a'"):
        read_trace(_write(tmp_path, GOOD, GOOD))
    with pytest.raises(TraceError, match="holds no jobs"):
        read_trace(_write(tmp_path, "# only a comment"))


def test_round_trip(tmp_path: Path) -> None:
    jobs = generate(50, seed=3, cluster_gpus=64)
    p = tmp_path / "g.jsonl"
    write_trace(p, jobs)
    assert read_trace(p) == jobs
    assert set(json.loads(p.read_text().splitlines()[0])) == set(FIELDS)


SWF = """; Version: 2.2
; MaxProcs: 100
1 0 10 3600 16 -1 -1 16 7200 -1 1 1 1 1 1 -1 -1 -1
2 100 5 600 -1 -1 1048576 3 900 -1 1 2 1 1 -1 -1 -1 -1
3 200 0 0 4 -1 -1 4 100 -1 5 1 1 1 1 -1 -1 -1
"""


def test_swf_mapping(tmp_path: Path) -> None:
    p = tmp_path / "log.swf"
    p.write_text(SWF)
    jobs = read_swf(p)
    assert [j.id for j in jobs] == ["swf-1", "swf-2"]  # job 3 never ran
    big, small = jobs
    assert (big.gpus, big.pods, big.estimate_s, big.priority, big.queue) == (16, 2, 7200.0, 0, "q1")
    # 3 requested processors -> 3 GPUs on one pod; 1 GiB per processor used; short job -> priority 100
    assert (small.gpus, small.pods, small.memory_gib, small.priority, small.queue) == (3, 1, 3.0, 100, "default")
    assert small.submit_s == 100.0
    assert read_swf(p, SwfMapping(procs_per_gpu=4, queue_priorities={1: 7}))[0].gpus == 4
    assert load_any(p)[0].id == "swf-1"


def test_swf_bad_line(tmp_path: Path) -> None:
    p = tmp_path / "bad.swf"
    p.write_text("1 2 3\n")
    with pytest.raises(TraceError, match=r"bad.swf:1: SWF needs 18"):
        read_swf(p)


def test_generator_deterministic_and_calibrated() -> None:
    a = generate(2000, seed=11, cluster_gpus=128, load=0.8)
    assert a == generate(2000, seed=11, cluster_gpus=128, load=0.8)
    assert a != generate(2000, seed=12, cluster_gpus=128, load=0.8)
    work = sum(j.gpus * j.runtime_s for j in a)
    span = max(j.submit_s for j in a)
    assert 0.6 < work / (128 * span) < 1.0  # offered load near the target
    kinds = {j.queue for j in a}
    assert kinds == {"batch", "training", "interactive"}
    assert all(j.gpus % j.pods == 0 for j in a)
    assert all(j.estimate_s is None or j.estimate_s >= j.runtime_s for j in a)
    assert all(j.checkpointable for j in generate(200, seed=1, mix=Mix(all_checkpointable=True)))


def test_sample_trace_ships_and_parses() -> None:
    jobs = read_trace(SAMPLE_TRACE)
    assert len(jobs) >= 500


def test_swf_gzipped(tmp_path: Path) -> None:
    import gzip

    p = tmp_path / "log.swf.gz"
    with gzip.open(p, "wt") as fh:
        fh.write(SWF)
    assert [j.id for j in load_any(p)] == ["swf-1", "swf-2"]

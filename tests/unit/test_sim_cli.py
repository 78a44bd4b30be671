"""`ckq simulate`: outputs, --compare, and clean errors (exit code 2, no stack trace) for bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from queue_controller.cli import app
from queue_controller.sim.generate import Mix, generate
from queue_controller.sim.trace import write_trace

pytestmark = pytest.mark.unit

REQUIRED = ("utilization", "gpu_utilization", "mean_wait_s", "p95_wait_s_by_priority", "mean_bounded_slowdown",
            "wasted_gpu_hours", "wasted_fraction", "checkpoints", "checkpoint_overhead_gpu_hours", "makespan_s",
            "jobs_completed")


def run(*args: str) -> tuple[int, str]:
    """Invoke the CLI with a wide terminal, so rich does not wrap messages; return (code, flat output)."""
    r = CliRunner(env={"COLUMNS": "500", "TERMINAL_WIDTH": "500"}).invoke(app, list(args))
    return r.exit_code, " ".join(r.output.replace("│", " ").split())


@pytest.fixture
def trace(tmp_path: Path) -> Path:
    p = tmp_path / "small.jsonl"
    write_trace(p, generate(60, seed=2, cluster_gpus=32, load=1.0, mix=Mix(training_pods=((2, 1.0),))))
    return p


def test_single_policy_writes_metrics_csv_and_plots(trace: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    r = CliRunner().invoke(app, ["simulate", "--trace", str(trace), "--policy", "iass", "--nodes", "4",
                                 "--out", str(out)])
    assert r.exit_code == 0, r.output
    m = json.loads((out / "metrics.json").read_text())
    assert all(k in m for k in REQUIRED)
    assert m["jobs_completed"] == 60
    assert set(m["p95_wait_s_by_priority"]) <= {"0", "100", "1000"}
    assert (out / "jobs.csv").read_text().count("\n") == 61
    for png in ("utilization.png", "wait_cdf.png", "timeline.png"):
        assert (out / png).stat().st_size > 1000


def test_compare_writes_each_policy_and_a_table(trace: Path, tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    r = CliRunner().invoke(app, ["simulate", "--trace", str(trace), "--compare", "fifo,kueue,easy,iass",
                                 "--nodes", "4", "--out", str(out), "--no-plots"])
    assert r.exit_code == 0, r.output
    for p in ("fifo", "kueue", "easy", "iass"):
        assert (out / p / "metrics.json").exists()
        assert p in r.output
    assert set(json.loads((out / "comparison.json").read_text())) == {"fifo", "kueue", "easy", "iass"}


@pytest.mark.parametrize(("args", "needle"), [
    (["--policy", "nope"], "unknown policy 'nope'"),
    (["--compare", "fifo,bogus"], "unknown policy 'bogus'"),
    (["--nodes", "-1"], "--nodes"),
    (["--gpus-per-node", "-2"], "--gpus-per-node"),
    (["--format", "csv"], "use auto, jsonl or swf"),
])
def test_bad_options_exit_2(trace: Path, tmp_path: Path, args: list[str], needle: str) -> None:
    code, out = run("simulate", "--trace", str(trace), "--out", str(tmp_path / "o"), *args)
    assert code == 2, out
    assert needle in out
    assert "Traceback" not in out


def test_malformed_trace_line_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a"}\n')
    code, out = run("simulate", "--trace", str(bad), "--out", str(tmp_path / "o"))
    assert code == 2
    assert "bad.jsonl:1: missing field(s)" in out
    assert "Traceback" not in out
    code, out = run("simulate", "--trace", str(tmp_path / "absent.jsonl"), "--out", str(tmp_path))
    assert code == 2 and "cannot read trace" in out


def test_bad_queue_layout_exit_2(trace: Path, tmp_path: Path) -> None:
    layout = tmp_path / "queues.yaml"
    layout.write_text("clusterQueues:\n  - name: a\nqueues:\n  batch: b\n")
    code, out = run("simulate", "--trace", str(trace), "--queues", str(layout), "--out", str(tmp_path / "o"))
    assert code == 2
    assert "queues.batch: ClusterQueue 'b' is not one of a" in out

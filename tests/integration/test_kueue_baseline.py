"""bench/kueue_baseline.py at --scale 0.02 (300 jobs): it completes and its counters agree with each other.

Nothing here is timed: how fast ckq is, is the bench's to report, not a test's to assert.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CLASSES = {"small": 7, "medium": 2, "large": 1}  # per ClusterQueue at scale 0.02 (350, 100, 50 x 0.02)
QUEUES = 30


def test_kueue_baseline_bench_completes_with_consistent_counters() -> None:
    # Its own cluster, under a short state directory of its own (it shows in every component's argv).
    state = Path(tempfile.mkdtemp(prefix="ckq-kb-", dir="/tmp"))
    name = f"kb-{uuid.uuid4().hex[:6]}"
    try:
        run = subprocess.run(
            [sys.executable, str(ROOT / "bench" / "kueue_baseline.py"), "--scale", "0.02", "--timeout", "600",
             "--cluster", name, "--progress", "60"],
            cwd=ROOT, capture_output=True, text=True, timeout=850,
            env={**os.environ, "CKQ_STATE_DIR": str(state), "PYTHONPATH": str(ROOT)},
        )
    finally:
        shutil.rmtree(state, ignore_errors=True)
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])

    jobs = QUEUES * sum(CLASSES.values())
    assert out["jobs"] == out["created"] == jobs == 300
    assert out["timed_out"] is False
    assert out["finished"] == jobs
    expected = {c: QUEUES * n for c, n in CLASSES.items()}
    assert out["jobs_by_class"] == out["admitted_by_class"] == out["finished_by_class"] == expected
    assert sum(out["finished_by_class"].values()) == out["finished"]
    for c in CLASSES:
        assert out["tta_mean_s"][c] is not None and out["tta_mean_s"][c] >= 0
        assert out["evictions_by_class"][c] >= 0
    assert out["wall_s"] > 0
    assert 0 < out["usage_from_jobs_pct"]["cq"] <= 100
    assert out["usage_pct"]["cq"] is not None and 0 <= out["usage_pct"]["cq"] <= 100

    # API requests: the server's totals and the audit log's split by client tell the same story.
    assert out["api_requests"] == sum(out["api_requests_by_verb_resource"].values()) > 0
    assert out["api_requests_per_job"] > 0
    assert out["api_requests_by_verb_resource"]["POST checkpointablejobs"] == jobs  # the bench's creates
    by_client = out["api_requests_by_client"]
    assert by_client["bench"] >= jobs and by_client["controller"] > 0
    assert by_client["scheduler"] >= jobs  # one binding per pod
    assert out["api_requests_by_client_verb_resource"]["bench"]["create checkpointablejobs"] == jobs
    assert out["api_requests_by_client_verb_resource"]["controller"]["create pods"] >= jobs
    assert all(v >= 0 for v in out["cpu_seconds"].values())
    assert {"kube-apiserver", "etcd", "controller", "kwok", "kube-scheduler"} <= set(out["cpu_seconds"])
    assert out["controller_peak_rss_mib"] > 0
    assert out["create_errors"] == 0

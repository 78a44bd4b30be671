"""The user commands (`ckq get|describe|pending|suspend|resume|checkpoint|top`) against the real control
plane with the controller running: the pending order is computed on demand from the jobs the API server
holds and agrees with the engine's; suspend, resume and checkpoint act through the API as documented."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from queue_controller.cli import app
from tests.plugins.controller import Kube, cjob, job_status

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def ckq(kube: Kube, *args: str, ok: bool = True) -> Any:
    result = CliRunner().invoke(app, [*args, "--kubeconfig", kube.kubeconfig])
    if ok:
        assert result.exit_code == 0, f"ckq {' '.join(args)}: {result.output}"
    return result


def ckq_json(kube: Kube, *args: str) -> Any:
    return json.loads(ckq(kube, *args, "-o", "json").stdout)


def pending_order(kube: Kube, cq: str) -> list[tuple[str, int | None, str | None]]:
    return [(i["name"], i["position"], i["pendingReason"]) for i in ckq_json(kube, "pending", cq)["items"]]


def test_user_commands_on_a_live_queue(kube: Kube, kube_cluster: Any, namespace: str, queues: Any,
                                       run_controller: Any, tmp_path: Path) -> None:
    lq = queues(gpus=8)
    cq = f"{namespace}-{lq}"
    # One job holds the whole quota; three wait. Queue order: priority, then creation time.
    kube.create("checkpointablejobs", cjob("big", lq, priority=5, runtime_s=600, memory="1Gi"), namespace)
    run_controller("iass")
    kube.wait_phase(namespace, "big", "Running")
    for name, prio in (("low-1", 1), ("high", 3), ("low-2", 1)):
        # Long runs: once admitted, a job stays, so the queue behind it holds still while it is read.
        kube.create("checkpointablejobs", cjob(name, lq, priority=prio, runtime_s=600, memory="1Gi"), namespace)
    kube.wait("the controller's reasons", lambda: all(
        job_status(kube, namespace, n).get("pendingReason") for n in ("low-1", "high", "low-2")))

    # ckq pending: the engine's order, each with the reason the controller wrote.
    order = pending_order(kube, cq)
    assert [(n, p) for n, p, _ in order] == [("high", 1), ("low-1", 2), ("low-2", 3)]
    for name, _, reason in order:
        assert reason == job_status(kube, namespace, name)["pendingReason"]
    assert "high" in ckq(kube, "pending", cq).stdout
    # The controller's own sample of the queue's head (the engine's positions) says the same.
    kube.wait("the ClusterQueue's pendingJobs", lambda: [
        (p["name"], p["position"], p.get("localQueuePosition"))
        for p in (kube.get("clusterqueues", cq).get("status") or {}).get("pendingJobs") or ()
    ] == [(i["name"], i["position"], i["positionInLocalQueue"]) for i in ckq_json(kube, "pending", cq)["items"]])

    # ckq get jobs: the same positions; the running job has none.
    rows = {r["name"]: r for r in ckq_json(kube, "get", "jobs", "-n", namespace)["items"]}
    assert {n: r["position"] for n, r in rows.items()} == {"big": None, "high": 1, "low-1": 2, "low-2": 3}
    assert rows["big"]["phase"] == "Running" and rows["big"]["priority"] == 5
    assert "low-2" in ckq(kube, "get", "jobs", "-n", namespace).stdout
    assert namespace in ckq(kube, "get", "jobs", "-A").stdout

    # Queues: counts and usage against quota.
    queues_view = ckq_json(kube, "get", "queues", "-n", namespace)
    mine = next(q for q in queues_view["clusterQueues"] if q["name"] == cq)
    gpu = next(u for u in mine["usage"] if u["resource"] == "nvidia.com/gpu")
    assert (gpu["used"], gpu["nominalQuota"]) == ("8", "8")
    assert [q["name"] for q in queues_view["localQueues"]] == [lq]
    top = [r for r in ckq_json(kube, "top", "queues")["items"] if r["clusterQueue"] == cq]
    assert {(r["resource"], r["used"], r["usedPercent"]) for r in top} >= {("nvidia.com/gpu", "8", 100)}

    # ckq checkpoint --leave-running: a User Checkpoint the controller takes; describe shows it.
    out = ckq(kube, "checkpoint", "big", "-n", namespace, "--leave-running").stdout
    assert "checkpoint" in out and "created" in out

    def user_checkpoints() -> list[dict[str, Any]]:
        described = ckq_json(kube, "describe", "job", "big", "-n", namespace)
        return [c for c in described["checkpointHistory"] if c["reason"] == "User"]

    kube.wait("the user checkpoint completed", lambda: [c for c in user_checkpoints() if c["phase"] == "Completed"])
    described = ckq_json(kube, "describe", "job", "big", "-n", namespace)
    user = user_checkpoints()
    assert len(user) == 1 and user[0]["leaveRunning"] is True
    assert user[0]["sizeBytes"] > 0 and user[0]["durationSeconds"] is not None
    assert described["phase"] == "Running" and described["admission"]["podSets"][0]["nodes"]
    assert "Checkpoints" in ckq(kube, "describe", "job", "big", "-n", namespace).stdout

    # ckq suspend: checkpointed out; the queue moves up and "high" is admitted.
    ckq(kube, "suspend", "big", "-n", namespace)
    kube.wait_phase(namespace, "big", "Suspended")
    kube.wait_phase(namespace, "high", "Running")
    kube.wait("low-1 at the head", lambda: pending_order(kube, cq)[:2] == [
        ("low-1", 1, job_status(kube, namespace, "low-1").get("pendingReason")),
        ("low-2", 2, job_status(kube, namespace, "low-2").get("pendingReason"))])
    big = next(i for i in ckq_json(kube, "pending", cq)["items"] if i["name"] == "big")
    assert big["position"] is None and big["pendingReason"] == "SuspendedByUser"
    why = ckq_json(kube, "describe", "job", "big", "-n", namespace)["whyWaiting"]
    assert "ckq resume" in why

    # ckq resume: it queues again, ahead of the lower-priority jobs.
    ckq(kube, "resume", "big", "-n", namespace)
    assert kube.job(namespace, "big")["spec"]["suspend"] is False
    kube.wait("big queued at the head, or running again", lambda: (
        kube.phase(namespace, "big") in ("Restoring", "Running")
        or next((p for n, p, _ in pending_order(kube, cq) if n == "big"), None) == 1))

    # Errors: one line naming the object, exit 1.
    missing = ckq(kube, "describe", "job", "nope", "-n", namespace, ok=False)
    assert missing.exit_code == 1 and missing.output.strip() == f"error: job {namespace}/nope not found"
    no_cq = ckq(kube, "pending", "no-such-cq", ok=False)
    assert no_cq.exit_code == 1 and no_cq.output.strip() == 'error: no ClusterQueue "no-such-cq"'

    # The same commands as a kubectl plugin: kubectl runs `kubectl-ckq` from PATH.
    plugin_dir = tmp_path / "plugins"
    plugin_dir.mkdir()
    shim = plugin_dir / "kubectl-ckq"
    shim.write_text(f"#!/bin/sh\nexec {sys.executable} -c "
                    "'from queue_controller.cli.user import kubectl_main; kubectl_main()' \"$@\"\n")
    shim.chmod(shim.stat().st_mode | stat.S_IXUSR)
    env = {**os.environ, "PATH": f"{plugin_dir}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(ROOT),
           "KUBECONFIG": kube.kubeconfig}
    run = subprocess.run([str(kube_cluster.bin_dir / "kubectl"), "ckq", "get", "jobs", "-n", namespace,
                          "-o", "json"], env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert {r["name"] for r in json.loads(run.stdout)["items"]} == {"big", "high", "low-1", "low-2"}

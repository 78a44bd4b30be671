"""bench/kueue_baseline.py's pure parts: the scenario, the recorder's arithmetic, the audit log's split."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def kb() -> ModuleType:
    spec = importlib.util.spec_from_file_location("kueue_baseline", ROOT / "bench" / "kueue_baseline.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["kueue_baseline"] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


def test_the_scenario_is_kueues_baseline_and_scales_every_set(kb: ModuleType) -> None:
    full = kb.Scenario()
    assert full.jobs == 15_000 and len(full.queues) == 30
    assert full.jobs_per_class() == {"small": 10_500, "medium": 3_000, "large": 1_500}
    assert full.queues[0] == ("cq-0-0-cohort-0", "cohort-0")  # Kueue's generator's names
    assert kb.Scenario().scaled(0.02).jobs == 300
    assert kb.Scenario().scaled(0.2).jobs_per_class() == {"small": 2_100, "medium": 600, "large": 300}
    assert kb.Scenario().scaled(0.001).jobs == 90  # at least one job per set
    gen = kb.Scenario().scaled(0.2).kueue_generator()
    qs = gen["cohorts"][0]["queuesSets"][0]
    assert gen["cohorts"][0]["count"] == 5 and qs["count"] == 6
    assert (qs["nominalQuota"], qs["borrowingLimit"]) == (20, 100)
    assert (qs["reclaimWithinCohort"], qs["withinClusterQueue"]) == ("Any", "LowerPriority")
    assert [(w["count"], w["creationIntervalMs"], w["workloads"][0]["runtimeMs"], w["workloads"][0]["priority"],
             w["workloads"][0]["request"]) for w in qs["workloadsSets"]] == [
        (70, 100, 200, 50, 1), (20, 500, 500, 100, 5), (10, 1200, 1000, 200, 20)]


def test_a_job_declares_its_sub_second_run_time_and_priority(kb: ModuleType) -> None:
    small = kb.Scenario().sets[0]
    body = kb.job("small-0-3-0", "cq-0-0-cohort-0", small)
    assert body["metadata"]["annotations"]["ckq.io/simulated-runtime-seconds"] == "0.2"
    assert body["spec"]["priority"] == 50 and body["spec"]["queueName"] == "cq-0-0-cohort-0"
    assert body["spec"]["podSets"][0]["template"]["spec"]["containers"][0]["resources"] == {"requests": {"cpu": "1"}}
    cq = kb.cluster_queue("cq-0-0-cohort-0", "cohort-0", kb.Scenario())
    res = cq["spec"]["resourceGroups"][0]["flavors"][0]["resources"][0]
    assert (res["nominalQuota"], res["borrowingLimit"]) == ("20", "100")


def _cq(usage: str | None) -> dict[str, object]:
    status = {"flavorsUsage": [{"name": "rf", "resources": [{"name": "cpu", "total": usage}]}]} if usage else {}
    return {"metadata": {"name": "cq-0-0-cohort-0"},
            "spec": {"resourceGroups": [{"flavors": [{"name": "rf", "resources": [
                {"name": "cpu", "nominalQuota": "20"}]}]}]}, "status": status}


def test_cluster_queue_usage_is_integrated_as_kueues_recorder_does(kb: ModuleType) -> None:
    rec = kb.Recorder(kb.Scenario())
    rec.on_cq(_cq(None), 100.0)  # created: the first event
    rec.on_cq(_cq("10"), 101.0)
    rec.on_cq(_cq("20"), 103.0)  # 10 CPU held for 2 s
    rec.on_cq(_cq(None), 104.0)  # 20 CPU held for 1 s
    st = rec.cqs["cq-0-0-cohort-0"]
    assert st.used == pytest.approx(10_000 * 2_000 + 20_000 * 1_000)  # mCPU x ms
    assert (st.first, st.last, st.quota_milli) == (100.0, 104.0, 20_000)


def _job(phase: str | None, admitted: bool) -> dict[str, object]:
    status: dict[str, object] = {"phase": phase} if phase else {}
    if admitted:
        status["admission"] = {"clusterQueue": "cq-0-0-cohort-0"}
    return {"metadata": {"namespace": "cq-0-0-cohort-0", "name": "large-2-0-0"}, "status": status}


def test_job_admission_eviction_and_finish(kb: ModuleType) -> None:
    rec = kb.Recorder(kb.Scenario())
    key = ("cq-0-0-cohort-0", "large-2-0-0")
    rec.jobs[key] = kb.JobRecord("large", key[0], 20_000, created=10.0)
    rec.on_job(_job(None, False), 10.5)
    rec.on_job(_job("Running", True), 12.0)
    rec.on_job(_job("Checkpointing", True), 13.0)  # still holds its quota while it is checkpointed
    rec.on_job(_job("Suspended", False), 14.0)  # preempted: an eviction
    rec.on_job(_job("Restoring", True), 20.0)  # admitted again: time to admission counts to here
    rec.on_job(_job("Succeeded", False), 21.0)
    rec.on_job(_job("Succeeded", False), 22.0)  # a later event changes nothing
    r = rec.jobs[key]
    assert (r.admitted, r.finished, r.evictions) == (20.0, 21.0, 1)
    assert r.held_cpu_ms == pytest.approx(20_000 * (2_000 + 1_000))
    assert rec.finished_count == 1 and rec.all_finished.is_set()
    rec.on_job({"metadata": {"namespace": "elsewhere", "name": "x"}, "status": {"phase": "Running"}}, 23.0)
    assert set(rec.jobs) == {key}  # not one of ours: ignored


def test_audit_log_is_split_by_client_within_a_byte_window(kb: ModuleType, tmp_path: Path) -> None:
    def line(user: str, agent: str, verb: str, resource: str, sub: str = "", stage: str = "ResponseComplete") -> str:
        ref = {"resource": resource, **({"subresource": sub} if sub else {})}
        return json.dumps({"stage": stage, "verb": verb, "user": {"username": user}, "userAgent": agent,
                           "objectRef": ref}) + "\n"

    before = line("ckq-admin", "kopf/1", "patch", "checkpointablejobs", "status")
    inside = [line("ckq-admin", "kopf/1", "patch", "checkpointablejobs", "status"),
              line("ckq-admin", kb.BENCH_USER_AGENT, "create", "checkpointablejobs"),
              line("system:kube-scheduler", "kube-scheduler/v1.35.4", "create", "pods", "binding"),
              line("kwok-controller", "kwok/v0.8.0", "patch", "pods", "status"),
              line("system:serviceaccount:kube-system:job-controller", "kcm", "get", "checkpointablejobs"),
              line("kwok-controller", "kwok/v0.8.0", "patch", "pods", "status", stage="ResponseStarted")]
    after = line("ckq-admin", "kopf/1", "create", "events")
    log = tmp_path / "audit.log"
    log.write_text(before + "".join(inside) + after)
    start, end = len(before), len(before) + len("".join(inside))
    by = kb.read_audit(log, start, end)
    assert {k: dict(v) for k, v in by.items()} == {
        "controller": {"patch checkpointablejobs/status": 1},
        "bench": {"create checkpointablejobs": 1},
        "scheduler": {"create pods/binding": 1},
        "kwok": {"patch pods/status": 1},
        "controller-manager": {"get checkpointablejobs": 1},
    }
    assert kb.kueue_classify("", "minimalkueue/v0.0.0 (linux/amd64) kubernetes/$Format") == "kueue"
    assert kb.kueue_classify("", "runner/v0.0.0 (linux/amd64) kubernetes/$Format") == "runner"


def test_apiserver_request_totals_are_summed_by_label(kb: ModuleType) -> None:
    text = (
        'apiserver_request_total{code="201",component="apiserver",group="ckq.io",resource="checkpointablejobs",'
        'scope="namespace",subresource="",verb="POST",version="v1alpha1"} 300\n'
        'apiserver_request_total{code="409",component="apiserver",group="ckq.io",resource="checkpointablejobs",'
        'scope="namespace",subresource="",verb="POST",version="v1alpha1"} 2\n'
        'apiserver_request_total{code="200",component="apiserver",group="",resource="pods",'
        'scope="namespace",subresource="status",verb="PATCH",version="v1"} 5\n'
    )
    totals = kb.metric_totals(text, "apiserver_request_total", kb.REQ_LABELS)
    assert totals == {("POST", "ckq.io", "checkpointablejobs", ""): 302.0, ("PATCH", "", "pods", "status"): 5.0}

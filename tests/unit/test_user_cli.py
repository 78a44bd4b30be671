"""The user commands without a cluster: queue positions computed on demand, the views, their tables and
`-o json|yaml`, and the one-line errors. The commands run against a fake client holding plain dicts."""

from __future__ import annotations

import json
import socket
import tomllib
from collections.abc import Iterator
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes.client.rest import ApiException
from rich.console import Console
from typer.testing import CliRunner

from queue_controller.api import Checkpoint
from queue_controller.cli import app, render, user, views
from queue_controller.cli.client import (
    CHECKPOINTS,
    CLUSTER_QUEUES,
    JOBS,
    LOCAL_QUEUES,
    Client,
    Forbidden,
    Target,
    UserError,
)
from queue_controller.wire import JOB_LABEL

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
NOW = 1_800_000_000.0


def ts(offset: float) -> str:
    """An RFC 3339 time `offset` seconds after 2027-01-15 08:00:00 UTC (NOW)."""
    from queue_controller.wire import format_time

    return format_time(NOW + offset)


def job(name: str, ns: str = "team-a", queue: str = "main", priority: int | None = 0, created: float = -100,
        phase: str | None = "Pending", **spec: Any) -> dict[str, Any]:
    status = spec.pop("status", {})
    body: dict[str, Any] = {
        "metadata": {"name": name, "namespace": ns, "uid": f"uid-{name}", "creationTimestamp": ts(created)},
        "spec": {"queueName": queue, **({"priority": priority} if priority is not None else {}), **spec,
                 "podSets": [{"name": "main", "count": 1, "template": {"spec": {"containers": []}}}]},
        "status": {**({"phase": phase} if phase else {}), **status},
    }
    return body


def lq(name: str, ns: str, cq: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": ns}, "spec": {"clusterQueue": cq}}


def cq(name: str, gpus: str = "8", cohort: str | None = None, used: str | None = None, selector: Any = None,
       lending: str | None = None, **status: Any) -> dict[str, Any]:
    res: dict[str, Any] = {"name": "nvidia.com/gpu", "nominalQuota": gpus}
    if lending is not None:
        res["lendingLimit"] = lending
    spec: dict[str, Any] = {"namespaceSelector": {} if selector is None else selector,
                            "resourceGroups": [{"coveredResources": ["nvidia.com/gpu"],
                                                "flavors": [{"name": "h100", "resources": [res]}]}]}
    if cohort:
        spec["cohort"] = cohort
    if selector == "unset":
        del spec["namespaceSelector"]
    st: dict[str, Any] = dict(status)
    if used is not None:
        st["flavorsUsage"] = [{"name": "h100", "resources": [{"name": "nvidia.com/gpu", "total": used}]}]
    return {"metadata": {"name": name}, "spec": spec, "status": st}


# ---- positions on demand -------------------------------------------------------------------------

def test_positions_follow_priority_then_creation_then_key_per_cluster_queue() -> None:
    jobs = [job("a", priority=1, created=-50), job("b", priority=5, created=-10), job("c", priority=1, created=-90),
            job("d", ns="team-b", priority=1, created=-90), job("other", queue="side", priority=9),
            job("running", priority=100, phase="Running"), job("done", priority=100, phase="Succeeded"),
            job("fresh", priority=1, created=-1, phase=None)]
    lqs = [lq("main", "team-a", "research"), lq("main", "team-b", "research"), lq("side", "team-a", "prod")]
    entries = views.queue_entries(jobs, lqs, [cq("research"), cq("prod")])
    assert "team-a/running" not in entries and "team-a/done" not in entries
    pos = {k: (e.cluster_queue, e.position, e.lq_position) for k, e in entries.items()}
    assert pos == {
        "team-a/b": ("research", 1, 1),
        "team-a/c": ("research", 2, 2), "team-b/d": ("research", 3, 1),  # same time: key decides
        "team-a/a": ("research", 4, 3),
        "team-a/fresh": ("research", 5, 4),  # not yet seen by the controller: queued all the same
        "team-a/other": ("prod", 1, 1),
    }


def test_reason_and_message_come_from_the_jobs_status() -> None:
    waiting = job("w", status={"pendingReason": "InsufficientQuota", "message": "needs 8 GPUs",
                               "queuePosition": 42})  # a stale stored position (older controllers) is never read
    e = views.queue_entries([waiting], [lq("main", "team-a", "q")], [cq("q")])["team-a/w"]
    assert (e.position, e.reason, e.message) == (1, "InsufficientQuota", "needs 8 GPUs")


@pytest.mark.parametrize(("body", "reason"), [
    (job("s", suspend=True), views.SUSPENDED_BY_USER),
    (job("s", queue="nope"), views.LQ_NOT_FOUND),
    (job("s", ns="locked"), views.NS_NOT_ALLOWED),
    (job("s", priority=None, priorityClassName="missing"), views.PC_NOT_FOUND),
    (job("s", status={"conditions": [{"type": "CheckpointModeUnavailable", "status": "True",
                                      "reason": "NoNodeAgent", "message": "no agent"}]}),
     "CheckpointModeUnavailable"),
    (job("s", status={"pendingReason": "PodsReadyBackoff", "requeueState": {"count": 1}}), "PodsReadyBackoff"),
])
def test_jobs_the_controller_does_not_queue_have_no_position_and_say_why(body: dict[str, Any], reason: str) -> None:
    lqs = [lq("main", "team-a", "q"), lq("main", "locked", "q")]
    queues = [cq("q", selector={"matchLabels": {"team": "a"}})]
    labels = {"team-a": {"team": "a"}, "locked": {"team": "b"}}
    others = [job("x", priority=1), job("y", priority=2)]
    entries = views.queue_entries([body, *others], lqs, queues, labels, {"high": 1000})
    key = f"{body['metadata']['namespace']}/s"
    assert entries[key].position is None and entries[key].reason == reason
    assert (entries["team-a/y"].position, entries["team-a/x"].position) == (1, 2)


def test_unset_namespace_selector_admits_no_namespace() -> None:
    entries = views.queue_entries([job("j")], [lq("main", "team-a", "q")], [cq("q", selector="unset")])
    assert entries["team-a/j"].reason == views.NS_NOT_ALLOWED


def test_priority_class_value_orders_and_unreadable_classes_fall_back_to_status() -> None:
    jobs = [job("pc", priority=None, priorityClassName="high", created=-1), job("plain", priority=10)]
    lqs, cqs = [lq("main", "team-a", "q")], [cq("q")]
    assert views.queue_entries(jobs, lqs, cqs, None, {"high": 1000})["team-a/pc"].position == 1
    jobs[0]["status"]["priority"] = 5
    entries = views.queue_entries(jobs, lqs, cqs, None, None)
    assert (entries["team-a/plain"].position, entries["team-a/pc"].position) == (1, 2)


# ---- views ------------------------------------------------------------------------------------------

def test_pending_view_lists_queued_jobs_in_order_then_the_unqueued() -> None:
    jobs = [job("late", priority=1, created=-5), job("early", priority=1, created=-50), job("held", suspend=True),
            job("suspended", priority=3, phase="Suspended", status={"pendingReason": "InsufficientQuota"})]
    entries = views.queue_entries(jobs, [lq("main", "team-a", "q")], [cq("q")])
    view = views.pending_view(cq("q"), jobs, entries)
    assert [(i["name"], i["position"]) for i in view["items"]] == [
        ("suspended", 1), ("early", 2), ("late", 3), ("held", None)]
    assert view["items"][0]["phase"] == "Suspended" and view["items"][-1]["pendingReason"] == "SuspendedByUser"


def test_job_rows_progress_counts_the_current_run() -> None:
    running = job("r", phase="Running", runtimeEstimateSeconds=1000,
                  status={"runTimeSeconds": 100.0, "runStartTime": ts(-50), "checkpoints": 2, "priority": 7})
    view = views.job_rows([running], {}, NOW)
    row = view["items"][0]
    assert (row["runTimeSeconds"], row["checkpoints"], row["priority"], row["position"]) == (150.0, 2, 7, None)
    assert views.progress(row["runTimeSeconds"], row["runtimeEstimateSeconds"]) == "2m / 16m (15%)"
    assert views.job_rows([running], None, NOW)["positionsKnown"] is False


def test_top_view_borrowed_and_lent_add_up_across_the_cohort() -> None:
    queues = [cq("borrower", gpus="8", cohort="lab", used="20"), cq("a", gpus="8", cohort="lab", used="0"),
              cq("b", gpus="8", cohort="lab", used="4", lending="8"), cq("alone", gpus="4", used="2")]
    rows = {r["clusterQueue"]: r for r in views.top_view(queues)["items"]}
    assert rows["borrower"]["borrowed"] == "12" and rows["borrower"]["usedPercent"] == 250
    # Unused lendable: a 8, b 4 -> the 12 borrowed split 8 and 4.
    assert (rows["a"]["lent"], rows["b"]["lent"]) == ("8", "4")
    assert (rows["alone"]["borrowed"], rows["alone"]["lent"], rows["alone"]["usedPercent"]) == ("0", "0", 50)


def test_describe_view_history_admission_and_why() -> None:
    j = job("j", phase="Running", status={
        "admission": {"clusterQueue": "q", "time": ts(-60), "podSetAssignments": [
            {"name": "main", "flavor": "h100", "count": 2, "nodes": ["n1", "n2"]}]},
        "conditions": [{"type": "Admitted", "status": "True", "reason": "Admitted", "message": "ok",
                        "lastTransitionTime": ts(-60)}]})
    ckpts = [{"metadata": {"name": n, "creationTimestamp": ts(t)}, "spec": {"jobName": "j", "reason": r},
              "status": {"phase": "Completed", "sizeBytes": 2**30, "durationSeconds": 3.5}}
             for n, t, r in (("j-2", -10, "User"), ("j-1", -30, "Periodic"))]
    ckpts.append({"metadata": {"name": "other-1"}, "spec": {"jobName": "other", "reason": "User"}})
    view = views.describe_view(j, ckpts, {}, [], NOW)
    assert [c["name"] for c in view["checkpointHistory"]] == ["j-1", "j-2"]
    assert view["admission"]["podSets"][0]["nodes"] == ["n1", "n2"] and view["whyWaiting"] is None
    waiting = job("w", priority=2, status={"pendingReason": "InsufficientQuota", "message": "full"})
    entries = views.queue_entries([waiting, job("v", priority=1)], [lq("main", "team-a", "q")], [cq("q")])
    why = views.describe_view(waiting, [], entries, [], NOW)["whyWaiting"]
    assert why == "InsufficientQuota: full (position 1 of 2 in ClusterQueue q)"


def test_can_checkpoint_only_a_running_checkpointable_job() -> None:
    assert views.can_checkpoint(job("r", phase="Running")) is None
    assert views.can_checkpoint(job("p")) == "job team-a/p is Pending: only a Running job can be checkpointed"
    assert "not checkpointable" in (views.can_checkpoint(job("n", phase="Running", checkpoint={"mode": "None"})) or "")


def test_user_checkpoint_body_is_a_valid_owned_user_checkpoint() -> None:
    j = job("train", phase="Running", status={"attempt": 3})
    body = user.checkpoint_body(j, leave_running=True)
    parsed = Checkpoint.model_validate(body)
    assert parsed.spec.reason == "User" and parsed.spec.leave_running and parsed.spec.job_name == "train"
    meta = body["metadata"]
    assert meta["generateName"] == "train-user-" and meta["labels"][JOB_LABEL] == "train"
    assert meta["ownerReferences"][0]["uid"] == "uid-train" and meta["ownerReferences"][0]["kind"] == \
        "CheckpointableJob"


# ---- rendering --------------------------------------------------------------------------------------

def _views() -> list[tuple[dict[str, Any], Any]]:
    jobs = [job("a", priority=1), job("b", phase="Running", runtimeEstimateSeconds=60,
                                      status={"runTimeSeconds": 30.0})]
    entries = views.queue_entries(jobs, [lq("main", "team-a", "q")], [cq("q")])
    return [
        (views.job_rows(jobs, entries, NOW, True), render.jobs_table),
        (views.pending_view(cq("q"), jobs, entries), render.pending_table),
        (views.queues_view([cq("q", used="4", pendingWorkloads=1)], [lq("main", "team-a", "q")]),
         render.queues_table),
        (views.top_view([cq("q", used="4")]), render.top_table),
        (views.describe_view(jobs[0], [], entries, [], NOW), render.describe_text),
    ]


@pytest.mark.parametrize("output", ["json", "yaml"])
def test_machine_output_round_trips_to_the_view(output: str) -> None:
    for view, table in _views():
        out = StringIO()
        render.emit(Console(file=out), view, output, table, NOW)
        parsed = json.loads(out.getvalue()) if output == "json" else yaml.safe_load(out.getvalue())
        assert parsed == view


def test_tables_show_the_views() -> None:
    texts = []
    for view, table in _views():
        out = StringIO()
        render.emit(Console(file=out, width=200), view, "table", table, NOW)
        texts.append(out.getvalue())
    jobs, pending, queues, top, describe = texts
    assert "NAMESPACE" in jobs and "30s / 60s (50%)" in jobs
    assert "1 (1 in LQ)" in pending and "ClusterQueue q" in pending
    assert "nvidia.com/gpu 4/8" in queues
    assert "50%" in top
    assert "Position:" in describe and "1 in ClusterQueue" in describe


def test_human_formats() -> None:
    assert [views.human_duration(s) for s in (5, 119, 600, 3900, 36000, 90000, 10 * 86400)] == [
        "5s", "119s", "10m", "1h05m", "10h", "1d1h", "10d"]
    assert views.human_bytes(None) == "-" and views.human_bytes(1536) == "1.5 KiB"


# ---- commands against a fake client ------------------------------------------------------------------

class FakeClient:
    """Plain dicts in, the calls recorded; raises UserError as the real client words it."""

    def __init__(self, objects: dict[str, list[dict[str, Any]]], namespace: str = "team-a") -> None:
        self.store = objects
        self.namespace = namespace
        self.patches: list[tuple[str, str, dict[str, Any]]] = []
        self.created: list[dict[str, Any]] = []

    def objects(self, plural: str, namespace: str | None = None) -> list[dict[str, Any]]:
        items = self.store.get(plural, [])
        return [o for o in items if namespace is None or o["metadata"].get("namespace") == namespace]

    def get(self, plural: str, name: str, namespace: str | None = None) -> dict[str, Any]:
        for o in self.objects(plural, namespace):
            if o["metadata"]["name"] == name:
                return o
        kind = {JOBS: "job", CLUSTER_QUEUES: "ClusterQueue"}[plural]
        raise UserError(f"{kind} {namespace}/{name} not found" if namespace else f'no {kind} "{name}"')

    def namespace_labels(self, names: set[str]) -> dict[str, dict[str, str]]:
        return {n: {"kubernetes.io/metadata.name": n} for n in names}

    def priority_classes(self) -> dict[str, int]:
        return {}

    def job_events(self, namespace: str, name: str) -> list[dict[str, Any]]:
        return []

    def patch_job(self, namespace: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        self.patches.append((namespace, name, body))
        return self.get(JOBS, name, namespace)

    def create_checkpoint(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        self.created.append(body)
        return {**body, "metadata": {**body["metadata"], "name": body["metadata"]["generateName"] + "x1y2z"}}


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeClient]:
    client = FakeClient({
        JOBS: [job("run", phase="Running", priority=9), job("a", priority=1), job("b", priority=4),
               job("c", ns="team-b", priority=2), job("held", suspend=True)],
        LOCAL_QUEUES: [lq("main", "team-a", "q"), lq("main", "team-b", "q")],
        CLUSTER_QUEUES: [cq("q", used="8")],
        CHECKPOINTS: [],
    })
    monkeypatch.setattr(user, "_client", lambda *a, **k: client)
    yield client


def invoke(*args: str) -> Any:
    return CliRunner().invoke(app, list(args))


def test_get_jobs_positions_count_other_namespaces(fake: FakeClient) -> None:
    result = invoke("get", "jobs", "-o", "json")
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r["position"] for r in json.loads(result.stdout)["items"]}
    assert rows == {"run": None, "a": 3, "b": 1, "held": None}  # team-b/c (priority 2) is second


def test_pending_command_orders_the_cluster_queue(fake: FakeClient) -> None:
    result = invoke("pending", "q", "-o", "yaml")
    assert result.exit_code == 0, result.output
    items = yaml.safe_load(result.stdout)["items"]
    assert [(i["namespace"], i["name"], i["position"]) for i in items] == [
        ("team-a", "b", 1), ("team-b", "c", 2), ("team-a", "a", 3), ("team-a", "held", None)]
    missing = invoke("pending", "nope")
    assert (missing.exit_code, missing.output) == (1, 'error: no ClusterQueue "nope"\n')


def test_suspend_resume_patch_spec_suspend(fake: FakeClient) -> None:
    assert invoke("suspend", "run").exit_code == 0
    assert invoke("resume", "team-a/held").exit_code == 0
    assert fake.patches == [("team-a", "run", {"spec": {"suspend": True}}),
                            ("team-a", "held", {"spec": {"suspend": False}})]
    again = invoke("resume", "a")
    assert again.exit_code == 0 and "already not suspended" in again.output and len(fake.patches) == 2
    missing = invoke("suspend", "ghost")
    assert (missing.exit_code, missing.output) == (1, "error: job team-a/ghost not found\n")


def test_checkpoint_command_creates_a_user_checkpoint_of_a_running_job(fake: FakeClient) -> None:
    result = invoke("checkpoint", "run", "--leave-running")
    assert result.exit_code == 0, result.output
    assert "team-a/run-user-x1y2z" in result.output
    assert fake.created[0]["spec"] == {"jobName": "run", "reason": "User", "leaveRunning": True}
    refused = invoke("checkpoint", "a")
    assert refused.exit_code == 1 and refused.output.count("\n") == 1 and "is Pending" in refused.output


def test_describe_and_top_run(fake: FakeClient) -> None:
    described = invoke("describe", "job", "b", "-o", "json")
    assert described.exit_code == 0, described.output
    assert json.loads(described.stdout)["position"] == 1
    assert "Why waiting" in invoke("describe", "job", "b").stdout
    assert invoke("top", "queues").exit_code == 0
    assert invoke("get", "queues", "-A").exit_code == 0


# ---- the real client's errors -------------------------------------------------------------------------

def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _kubeconfig(path: Path, server: str) -> Path:
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "dev",
        "clusters": [{"name": "dev", "cluster": {"server": server}}],
        "contexts": [{"name": "dev", "context": {"cluster": "dev", "user": "me", "namespace": "team-z"}}],
        "users": [{"name": "me", "user": {"token": "t"}}]}))
    return path


def test_unreachable_server_is_one_line_naming_server_and_kubeconfig(tmp_path: Path) -> None:
    server = f"http://127.0.0.1:{_closed_port()}"
    cfg = _kubeconfig(tmp_path / "kubeconfig", server)
    result = invoke("get", "jobs", "--kubeconfig", str(cfg))
    assert result.exit_code == 1
    assert result.output.startswith(f"error: cannot reach the API server {server} (kubeconfig {cfg})")
    assert result.output.count("\n") == 1 and "Traceback" not in result.output
    assert Client(Target(kubeconfig=str(cfg))).namespace == "team-z"  # the context's namespace


def test_bad_kubeconfig_and_conflicting_flags(tmp_path: Path) -> None:
    missing = invoke("get", "queues", "--kubeconfig", str(tmp_path / "nope"))
    assert missing.exit_code == 1 and missing.output.startswith(f"error: cannot load kubeconfig {tmp_path}/nope")
    cfg = _kubeconfig(tmp_path / "kubeconfig", "http://127.0.0.1:1")
    both = invoke("get", "jobs", "-n", "x", "-A", "--kubeconfig", str(cfg))
    assert both.output == "error: -n/--namespace and -A/--all-namespaces exclude each other\n"
    ctx = invoke("get", "jobs", "--kubeconfig", str(cfg), "--context", "nope")
    assert ctx.exit_code == 1 and "context 'nope'" in ctx.output


def _api_error(status: int, body: dict[str, Any]) -> ApiException:
    e = ApiException(status=status, reason="x")
    e.body = json.dumps(body)
    return e


def test_api_errors_name_the_object(tmp_path: Path) -> None:
    client = Client(Target(kubeconfig=str(_kubeconfig(tmp_path / "kubeconfig", "http://127.0.0.1:1"))))
    not_found = _api_error(404, {"details": {"name": "x", "kind": "checkpointablejobs"}})
    assert client._api_message(not_found, "get job t/x", "job t/x not found") == "job t/x not found"
    no_crd = _api_error(404, {"message": "the server could not find the requested resource"})
    assert "CRDs are not installed on http://127.0.0.1:1" in client._api_message(no_crd, "list", "")
    forbidden = _api_error(403, {"message": 'user "me" cannot list'})
    assert client._api_message(forbidden, "list checkpointablejobs in all namespaces", None) == \
        'forbidden: cannot list checkpointablejobs in all namespaces (user "me" cannot list)'


# ---- kubectl plugin ---------------------------------------------------------------------------------

def test_kubectl_plugin_entry_point_runs_the_same_user_commands() -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["kubectl-ckq"] == "queue_controller.cli.user:kubectl_main"
    names = {c.name for c in user.kubectl_app.registered_commands} | {
        g.name for g in user.kubectl_app.registered_groups}
    assert names == {"get", "describe", "pending", "suspend", "resume", "checkpoint", "top"}
    ckq_names = {c.name for c in app.registered_commands} | {g.name for g in app.registered_groups}
    assert names <= ckq_names
    result = CliRunner().invoke(user.kubectl_app, ["--help"], prog_name="kubectl ckq")
    assert result.exit_code == 0 and "kubectl ckq" in result.output


def test_without_access_to_every_namespace_positions_are_unknown_not_wrong(fake: FakeClient,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    own = fake.objects

    def namespaced_only(plural: str, namespace: str | None = None) -> list[dict[str, Any]]:
        if plural == JOBS and namespace is None:
            raise Forbidden("forbidden: cannot list checkpointablejobs in all namespaces (RBAC)")
        return own(plural, namespace)

    monkeypatch.setattr(fake, "objects", namespaced_only)
    result = invoke("get", "jobs", "-o", "json")
    assert result.exit_code == 0, result.output
    view = json.loads(result.stdout)
    assert view["positionsKnown"] is False and all(r["position"] is None for r in view["items"])
    assert "warning: positions unknown (forbidden: cannot list checkpointablejobs in all namespaces" in result.output

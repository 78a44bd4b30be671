"""The local control plane itself (issue 3): real API server, scheduler, controller manager, kwok."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from queue_controller import devcluster as dc
from queue_controller.devcluster.nodes import node_is_ready
from tests.plugins.cluster import TEST_CLUSTER_NAME, TEST_NODE_GROUPS

pytestmark = pytest.mark.integration

T = TypeVar("T")
CKQ = [str(Path(sys.executable).parent / "ckq")]  # the installed entry point, as users run it


def wait_until(fn: Callable[[], T | None], *, timeout: float = 60, what: str = "condition") -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.25)


@pytest.fixture(scope="module")
def managed(kube_cluster: dc.ClusterHandle) -> dc.ClusterHandle:
    """The session cluster, when it is a ckq dev cluster (kwok nodes and their stages)."""
    if not kube_cluster.managed:
        pytest.skip(
            f"harness tests need a ckq dev cluster (kwok), not KUBECONFIG={kube_cluster.kubeconfig}; "
            "unset KUBECONFIG to let the kube_cluster fixture start one"
        )
    return kube_cluster


@pytest.fixture(scope="module")
def core(managed: dc.ClusterHandle) -> Iterator[client.CoreV1Api]:
    with managed.api_client() as api:
        yield client.CoreV1Api(api)


@pytest.fixture(scope="module")
def batch(managed: dc.ClusterHandle) -> Iterator[client.BatchV1Api]:
    with managed.api_client() as api:
        yield client.BatchV1Api(api)


@pytest.fixture(scope="module")
def ns(core: client.CoreV1Api) -> Iterator[str]:
    name = f"harness-{uuid.uuid4().hex[:6]}"
    core.create_namespace({"metadata": {"name": name}})
    yield name
    core.delete_namespace(name)


def pod_body(
    name: str,
    *,
    gpus: int = 0,
    annotations: dict[str, str] | None = None,
    node_selector: dict[str, str] | None = None,
) -> dict[str, Any]:
    resources = {"requests": {"cpu": "1"}, "limits": {}}
    if gpus:
        resources["limits"][dc.GPU_RESOURCE] = str(gpus)
    return {
        "metadata": {"name": name, "annotations": annotations or {}},
        "spec": {
            "restartPolicy": "Never",
            "nodeSelector": node_selector or {},
            "containers": [{"name": "main", "image": "busybox", "resources": resources}],
        },
    }


def phase(core: client.CoreV1Api, ns: str, name: str) -> str:
    return str(core.read_namespaced_pod(name, ns).status.phase)


def ready_condition(node: client.V1Node) -> client.V1NodeCondition:
    return next(c for c in node.status.conditions if c.type == "Ready")


def kwok_nodes(core: client.CoreV1Api) -> list[client.V1Node]:
    nodes = [n for n in core.list_node().items if n.metadata.labels.get(dc.FLAVOR_LABEL)]
    return sorted(nodes, key=lambda n: n.metadata.name)


def gpus_of(node: client.V1Node) -> int:
    return int((node.status.allocatable or {}).get(dc.GPU_RESOURCE, 0))


def gpu_flavor(core: client.CoreV1Api) -> tuple[str, list[str], int]:
    """A GPU flavor of this cluster: (flavor, its node names, GPUs per node)."""
    gpu_nodes = [n for n in kwok_nodes(core) if gpus_of(n)]
    assert gpu_nodes, "the cluster has no GPU nodes"
    flavor = gpu_nodes[0].metadata.labels[dc.FLAVOR_LABEL]
    names = [n.metadata.name for n in gpu_nodes if n.metadata.labels[dc.FLAVOR_LABEL] == flavor]
    return flavor, names, gpus_of(gpu_nodes[0])


def test_all_nodes_ready_with_gpu_capacity(managed: dc.ClusterHandle, core: client.CoreV1Api) -> None:
    nodes = kwok_nodes(core)
    assert nodes and any(gpus_of(n) for n in nodes)
    for node in nodes:
        labels, alloc, cap = node.metadata.labels, node.status.allocatable, node.status.capacity
        assert node_is_ready(node), node.metadata.name
        assert labels["kubernetes.io/arch"] in ("amd64", "arm64")
        if dc.GPU_PRODUCT_LABEL in labels:
            assert alloc[dc.GPU_RESOURCE] == cap[dc.GPU_RESOURCE] == labels["nvidia.com/gpu.count"]
        else:
            assert dc.GPU_RESOURCE not in alloc
    if managed.name != TEST_CLUSTER_NAME:
        return  # someone else's dev cluster: its own node groups
    by_name = {n.metadata.name: n for n in nodes}
    assert sorted(by_name) == sorted(n for g in TEST_NODE_GROUPS for n in g.node_names())
    for group in TEST_NODE_GROUPS:
        for name in group.node_names():
            node = by_name[name]
            labels = node.metadata.labels
            assert labels[dc.FLAVOR_LABEL] == group.name
            assert labels["kubernetes.io/arch"] == "amd64"
            alloc, cap = node.status.allocatable, node.status.capacity
            if group.gpus:
                assert labels[dc.GPU_PRODUCT_LABEL] == group.product
                assert alloc[dc.GPU_RESOURCE] == cap[dc.GPU_RESOURCE] == str(group.gpus)
            else:
                assert dc.GPU_RESOURCE not in alloc
            assert alloc["cpu"] == group.cpu and alloc["memory"] == group.memory


def test_default_service_account_exists(core: client.CoreV1Api, ns: str) -> None:
    # Created by KCM's serviceaccount controller: proof the controller manager runs.
    def sa() -> client.V1ServiceAccount | None:
        try:
            return core.read_namespaced_service_account("default", ns)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    wait_until(sa, what="default SA in the new namespace")


def test_real_scheduler_binds_gpu_pod_and_kwok_runs_it(core: client.CoreV1Api, ns: str) -> None:
    flavor, names, gpus = gpu_flavor(core)
    core.create_namespaced_pod(ns, pod_body("gpu-pod", gpus=min(2, gpus), node_selector={dc.FLAVOR_LABEL: flavor}))
    wait_until(lambda: phase(core, ns, "gpu-pod") == "Running", what="gpu-pod Running")
    pod = core.read_namespaced_pod("gpu-pod", ns)
    assert pod.spec.node_name in names
    assert pod.status.pod_ip
    events = core.list_namespaced_event(ns, field_selector="involvedObject.name=gpu-pod").items
    scheduled = [e for e in events if e.reason == "Scheduled"]
    assert scheduled and pod.spec.node_name in scheduled[0].message


def test_pod_too_big_for_any_node_stays_pending(core: client.CoreV1Api, ns: str) -> None:
    most = max(gpus_of(n) for n in kwok_nodes(core))
    core.create_namespaced_pod(ns, pod_body("too-big", gpus=most + 1))
    cond = wait_until(
        lambda: next(
            (c for c in core.read_namespaced_pod("too-big", ns).status.conditions or [] if c.type == "PodScheduled"),
            None,
        ),
        what="PodScheduled condition",
    )
    assert cond.status == "False" and cond.reason == "Unschedulable"
    assert "nvidia.com/gpu" in cond.message


def _seconds(a: Any, b: Any) -> float:
    return float((b - a).total_seconds())


def test_batch_job_completes_after_run_seconds(batch: client.BatchV1Api, core: client.CoreV1Api, ns: str) -> None:
    pod_spec = pod_body("x", gpus=1)["spec"]
    job = {
        "metadata": {"name": "three-seconds"},
        "spec": {
            "completions": 2,
            "parallelism": 2,
            "backoffLimit": 0,
            "template": {"metadata": {"annotations": {dc.RUN_SECONDS_ANNOTATION: "3"}}, "spec": pod_spec},
        },
    }
    batch.create_namespaced_job(ns, job)

    def complete() -> bool:
        conds = batch.read_namespaced_job_status("three-seconds", ns).status.conditions or []
        return any(c.type == "Complete" and c.status == "True" for c in conds)

    wait_until(complete, timeout=90, what="Job Complete")
    pods = core.list_namespaced_pod(ns, label_selector="job-name=three-seconds").items
    assert len(pods) == 2
    for pod in pods:
        assert pod.status.phase == "Succeeded"
        term = pod.status.container_statuses[0].state.terminated
        assert term.exit_code == 0 and term.reason == "Completed"
        assert _seconds(pod.status.start_time, term.finished_at) >= 3


def test_sub_second_run_seconds_are_a_duration_not_a_rounded_deadline(core: client.CoreV1Api, ns: str) -> None:
    # "0.3" finishes (it is not rounded down to "finish at once" nor up to a second, which only the
    # bench's timings can show); "60", started at the same time, is still running then. Were kwok
    # unable to evaluate the stage's delay, it would fall back to 0 and finish both at once.
    core.create_namespaced_pod(ns, pod_body("short", annotations={dc.RUN_SECONDS_ANNOTATION: "0.3"}))
    core.create_namespaced_pod(ns, pod_body("minute", annotations={dc.RUN_SECONDS_ANNOTATION: "60"}))
    wait_until(lambda: phase(core, ns, "short") == "Succeeded", what="the 0.3 s pod Succeeded")
    wait_until(lambda: phase(core, ns, "minute") == "Running", what="the 60 s pod Running")
    assert phase(core, ns, "minute") == "Running"


def test_run_seconds_delay_expression() -> None:
    """The stage's jq, evaluated by jq itself: a duration in ms, capped by startTime + N + 1 s."""
    import json
    import shutil
    from datetime import UTC, datetime, timedelta

    from queue_controller.devcluster.stages import RUN_SECONDS_DELAY_JQ

    jq = shutil.which("jq")
    if jq is None:
        pytest.skip("jq is not installed (kwok evaluates the expression with gojq; jq is only this check)")

    def delay(run: str, started: timedelta) -> int:
        start = (datetime.now(UTC) + started).strftime("%Y-%m-%dT%H:%M:%SZ")
        pod = {"metadata": {"annotations": {dc.RUN_SECONDS_ANNOTATION: run}}, "status": {"startTime": start}}
        out = subprocess.run([jq, "-r", RUN_SECONDS_DELAY_JQ], input=json.dumps(pod), capture_output=True,
                             text=True, check=True).stdout.strip()
        assert out.endswith("ms"), out
        return int(out[:-2])

    # A pod kwok has just seen running (its startTime is this second): exactly N.
    ahead = timedelta(seconds=5)  # keeps the cap out of reach however slow this test runs
    assert delay("0.2", ahead) == 200
    assert delay("42", ahead) == 42_000
    # Matched again long after it started (a kwok restart): what is left, or a past deadline (< 0: at once).
    assert 6_500 <= delay("10", timedelta(seconds=-3)) <= 8_000
    assert delay("10", timedelta(hours=-1)) < 0


def test_exit_code_annotation_fails_pod(core: client.CoreV1Api, ns: str) -> None:
    core.create_namespaced_pod(
        ns, pod_body("fails", annotations={dc.RUN_SECONDS_ANNOTATION: "1", dc.EXIT_CODE_ANNOTATION: "3"})
    )
    wait_until(lambda: phase(core, ns, "fails") == "Failed", what="pod Failed")
    term = core.read_namespaced_pod("fails", ns).status.container_statuses[0].state.terminated
    assert term.exit_code == 3


def test_owned_pods_are_garbage_collected_with_owner(batch: client.BatchV1Api, core: client.CoreV1Api, ns: str) -> None:
    template = pod_body("x")["spec"]
    batch.create_namespaced_job(
        ns,
        {
            "metadata": {"name": "long"},
            "spec": {
                "parallelism": 2,
                "completions": 2,
                "template": {
                    "metadata": {"annotations": {dc.RUN_SECONDS_ANNOTATION: "3600"}},
                    "spec": template,
                },
            },
        },
    )

    def running() -> bool:
        pods = core.list_namespaced_pod(ns, label_selector="job-name=long").items
        return len(pods) == 2 and all(p.status.phase == "Running" for p in pods)

    wait_until(running, what="2 running pods of job 'long'")
    batch.delete_namespaced_job("long", ns, propagation_policy="Background")
    wait_until(
        lambda: not core.list_namespaced_pod(ns, label_selector="job-name=long").items,
        what="garbage collection of the Job's pods",
    )


def test_not_ready_node_is_visible_and_avoided(managed: dc.ClusterHandle, core: client.CoreV1Api, ns: str) -> None:
    node = kwok_nodes(core)[-1].metadata.name
    managed.set_node_ready(node, False)
    try:
        cond = ready_condition(core.read_node(node))
        assert cond.status == "False" and cond.reason == "KwokSimulatedNotReady"
        # The real node lifecycle controller reacts with its not-ready taint ...
        wait_until(
            lambda: any(t.key == "node.kubernetes.io/not-ready" for t in core.read_node(node).spec.taints or []),
            what="not-ready taint from kube-controller-manager",
        )
        # ... and the real scheduler keeps new pods off the node.
        core.create_namespaced_pod(ns, pod_body("pinned", node_selector={"kubernetes.io/hostname": node}))
        cond = wait_until(
            lambda: next(
                (c for c in core.read_namespaced_pod("pinned", ns).status.conditions or [] if c.type == "PodScheduled"),
                None,
            ),
            what="PodScheduled condition",
        )
        assert cond.status == "False"
        kubectl_view = managed.kubectl("get", "node", node, "--no-headers").stdout
        assert "NotReady" in kubectl_view
    finally:
        managed.set_node_ready(node, True)
    assert ready_condition(core.read_node(node)).status == "True"
    wait_until(lambda: phase(core, ns, "pinned") == "Running", timeout=90, what="pinned pod Running after recovery")


def managed_api_dict(core: client.CoreV1Api, node: client.V1Node) -> dict[str, Any]:
    raw = core.api_client.sanitize_for_serialization(node)
    meta = raw["metadata"]
    return {
        "metadata": {"name": meta["name"], "labels": meta["labels"], "annotations": meta["annotations"]},
        "status": {k: raw["status"][k] for k in ("capacity", "allocatable", "addresses", "nodeInfo")},
    }


def test_deleted_node_takes_its_pods_with_it(managed: dc.ClusterHandle, core: client.CoreV1Api, ns: str) -> None:
    victim = kwok_nodes(core)[-1]
    node = victim.metadata.name
    # Enough of the node to create it again afterwards (status is accepted on create).
    saved = managed_api_dict(core, victim)
    core.create_namespaced_pod(ns, pod_body("on-lost-node", node_selector={"kubernetes.io/hostname": node}))
    wait_until(lambda: phase(core, ns, "on-lost-node") == "Running", what="pod on the doomed node Running")
    managed.delete_node(node)
    try:
        with pytest.raises(ApiException):
            core.read_node(node)

        def pod_gone() -> bool:
            try:
                core.read_namespaced_pod("on-lost-node", ns)
            except ApiException as exc:
                return exc.status == 404
            return False

        # KCM's pod garbage collector removes pods bound to a vanished node (after ~40-60 s).
        wait_until(pod_gone, timeout=150, what="pod GC of a pod on a deleted node")
    finally:
        core.create_node(saved)
        wait_until(lambda: node_is_ready(core.read_node(node)), what=f"{node} back")


# ---- the `ckq dev` command line, on a second cluster beside the session's ----------------------------


def ckq(*args: str, env: dict[str, str], timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CKQ, *args], capture_output=True, text=True, env=env, timeout=timeout, check=False)


@pytest.fixture
def cli_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
    env["CKQ_STATE_DIR"] = str(tmp_path / "state")
    env["COLUMNS"] = "200"
    yield env
    # Whatever a failed test left running is stopped here.
    for name in dc.state.list_clusters(Path(env["CKQ_STATE_DIR"])):
        dc.down(name, root=Path(env["CKQ_STATE_DIR"]))


def test_cli_up_twice_status_kubeconfig_down(kube_cluster: dc.ClusterHandle, cli_env: dict[str, str]) -> None:
    args = [
        "--name",
        "side",
        "--node-group",
        "name=l4,count=2,gpus=4,product=NVIDIA-L4,cpu=16,memory=64Gi",
        "--node-group",
        "name=cpu,count=1,gpus=0",
    ]
    first = ckq("dev", "up", *args, env=cli_env)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "export KUBECONFIG=" in first.stdout
    again = ckq("dev", "up", *args, env=cli_env)
    assert again.returncode == 0 and "already up" in again.stdout

    kubeconfig = ckq("dev", "kubeconfig", "--name", "side", env=cli_env).stdout.strip()
    assert kubeconfig != kube_cluster.kubeconfig  # two clusters side by side
    side = dc.ClusterHandle("side", kubeconfig, kube_cluster.bin_dir, managed=True)
    assert side.node_names() == ["cpu-0", "l4-0", "l4-1"]
    assert side.node_names(flavor="l4") == ["l4-0", "l4-1"]
    assert ckq("dev", "status", "--name", "side", env=cli_env).returncode == 0

    state = dc.load("side", root=Path(cli_env["CKQ_STATE_DIR"]))
    pids = {p.name: p.pid for p in state.processes}
    assert set(pids) == {"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok"}

    os.kill(pids["kube-scheduler"], signal.SIGKILL)
    time.sleep(0.5)
    st = ckq("dev", "status", "--name", "side", env=cli_env)
    assert st.returncode == 1
    assert "kube-scheduler is not running" in st.stderr and "kube-scheduler.log" in st.stderr

    down = ckq("dev", "down", "--name", "side", env=cli_env)
    assert down.returncode == 0, down.stderr
    for pid in pids.values():
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split(")")[1][:3]
    assert not Path(state.root).exists()
    assert ckq("dev", "down", "--name", "side", env=cli_env).returncode == 0  # harmless when gone


def test_cli_bad_input_leaves_nothing_behind(kube_cluster: dc.ClusterHandle, cli_env: dict[str, str]) -> None:
    root = Path(cli_env["CKQ_STATE_DIR"])
    bad = ckq("dev", "up", "--nodes", "0", env=cli_env)
    assert bad.returncode == 2 and "node count 0" in bad.stderr
    bad = ckq("dev", "up", "--memory", "lots", env=cli_env)
    assert bad.returncode == 2 and "not a Kubernetes quantity" in bad.stderr
    bad = ckq("dev", "up", "--no-such-flag", env=cli_env)
    assert bad.returncode == 2 and "No such option" in bad.stderr
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        busy = ckq("dev", "up", "--name", "busy", "--port", str(port), env=cli_env)
    assert busy.returncode == 1 and "already in use" in busy.stderr and "Traceback" not in busy.stderr
    assert not (root / "busy").exists()


def test_component_that_dies_is_reported_and_cleaned_up(
    kube_cluster: dc.ClusterHandle, cli_env: dict[str, str], tmp_path: Path
) -> None:
    assert kube_cluster.bin_dir is not None
    fake_bins = tmp_path / "bins"
    fake_bins.mkdir()
    for b in dc.BINARIES:
        (fake_bins / b).symlink_to(kube_cluster.bin_dir / b)
    (fake_bins / "kube-apiserver").unlink()
    (fake_bins / "kube-apiserver").write_text("#!/bin/sh\necho 'simulated apiserver crash: bad flag' >&2\nexit 7\n")
    (fake_bins / "kube-apiserver").chmod(0o755)
    env = dict(cli_env, CKQ_KUBE_BIN_DIR=str(fake_bins))
    res = ckq("dev", "up", "--name", "crashy", "--nodes", "1", env=env)
    assert res.returncode == 1
    assert "kube-apiserver" in res.stderr and "exited with status 7" in res.stderr
    assert "simulated apiserver crash" in res.stderr  # the tail of its log
    assert not (Path(cli_env["CKQ_STATE_DIR"]) / "crashy").exists()
    # etcd, started before the apiserver died, was stopped again.
    out = subprocess.run(["pgrep", "-f", f"{fake_bins}/etcd"], capture_output=True, text=True, check=False)
    assert out.stdout.strip() == ""

"""Real worker nodes (issue 9): real containers from local images, logs, exec, port-forward, the pod
network between two nodes, memory limits, and a `down` that leaves the machine as it was.

Every check uses something a fake node cannot produce: a nonce drawn here and printed by a real
python3 inside the container, an HTTP answer from one pod to another, the kernel's OOM killer.
"""

from __future__ import annotations

import os
import secrets
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
from queue_controller.devcluster import realnode
from queue_controller.devcluster.constants import NODE_KIND_LABEL
from queue_controller.devcluster.state import ClusterPaths, ClusterState
from tests.plugins.realnodes import REAL_NODES, RealCluster

pytestmark = pytest.mark.integration

T = TypeVar("T")
CKQ = [str(Path(sys.executable).parent / "ckq")]


def wait_until(fn: Callable[[], T | None], *, timeout: float = 90, what: str = "condition") -> T:
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = fn()
        except ApiException as exc:
            last = f"{exc.status} {exc.reason}"
        else:
            if last:
                return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")
        time.sleep(0.25)


@pytest.fixture(scope="module")
def core(real_cluster: RealCluster) -> Iterator[client.CoreV1Api]:
    with real_cluster.handle.api_client() as api:
        yield client.CoreV1Api(api)


@pytest.fixture
def ns(core: client.CoreV1Api) -> Iterator[str]:
    name = f"real-{uuid.uuid4().hex[:6]}"
    core.create_namespace({"metadata": {"name": name}})
    wait_until(lambda: _has_default_sa(core, name), what=f"the default ServiceAccount in {name}")
    yield name
    core.delete_namespace(name, grace_period_seconds=0)


def _has_default_sa(core: client.CoreV1Api, ns: str) -> bool:
    try:
        core.read_namespaced_service_account("default", ns)
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise
    return True


def _pod(name: str, node: str, script: str, *, memory: str | None = None, port: int | None = None) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": "main",
        "image": dc.PYTHON_IMAGE,
        "imagePullPolicy": "IfNotPresent",
        "command": ["python3", "-u", "-c", script],
    }
    if memory:
        container["resources"] = {"limits": {"memory": memory, "cpu": "500m"}}
    if port:
        container["ports"] = [{"containerPort": port}]
    return {
        "metadata": {"name": name},
        "spec": {
            "nodeName": node,
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 1,
            "containers": [container],
        },
    }


def _alive(pid: int) -> bool:
    """Running or sleeping; a zombie waiting for PID 1 to reap it has released everything."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] not in "ZX"


def _phase(core: client.CoreV1Api, ns: str, name: str) -> str:
    return str(core.read_namespaced_pod(name, ns).status.phase)


def _running(core: client.CoreV1Api, ns: str, name: str) -> client.V1Pod | None:
    pod = core.read_namespaced_pod(name, ns)
    return pod if pod.status.phase == "Running" and pod.status.pod_ip else None


def test_real_nodes_ready_labelled_with_true_capacity(real_cluster: RealCluster, core: client.CoreV1Api) -> None:
    nodes = {n.metadata.name: n for n in core.list_node(label_selector=f"{NODE_KIND_LABEL}=real").items}
    assert sorted(nodes) == [f"real-{i}" for i in range(REAL_NODES)]
    mem_kib = int(next(line for line in Path("/proc/meminfo").read_text().splitlines()
                       if line.startswith("MemTotal")).split()[1])
    for name, node in nodes.items():
        assert node.metadata.labels[dc.FLAVOR_LABEL] == dc.REAL_FLAVOR
        ready = {c.type: c.status for c in node.status.conditions}
        assert ready["Ready"] == "True", f"{name} not Ready: {node.status.conditions}"
        assert node.status.capacity["cpu"] == str(os.cpu_count())
        assert node.status.capacity["memory"] == f"{mem_kib}Ki"
        assert "nvidia.com/gpu" not in node.status.capacity
        assert node.status.node_info.container_runtime_version.startswith("containerd://")
        addresses = {a.type: a.address for a in node.status.addresses}
        assert addresses["InternalIP"].startswith("10.")
    # The kwok nodes of the same cluster are still fake ones.
    kwok = core.list_node(label_selector=f"{NODE_KIND_LABEL}=kwok").items
    assert kwok, "the mixed cluster should have kwok nodes too"


def test_python_pod_runs_and_its_log_is_read_through_the_api(core: client.CoreV1Api, ns: str) -> None:
    nonce = secrets.token_hex(16)
    script = (f"import hashlib, sys; "
              f"print('nonce', '{nonce}', hashlib.sha256(b'{nonce}').hexdigest(), sys.version_info[0])")
    core.create_namespaced_pod(ns, _pod("hello", "real-0", script))
    wait_until(lambda: _phase(core, ns, "hello") == "Succeeded", what="the pod to succeed")
    log = core.read_namespaced_pod_log("hello", ns)
    import hashlib

    assert f"nonce {nonce} {hashlib.sha256(nonce.encode()).hexdigest()} 3" in log


def test_exec_and_port_forward(real_cluster: RealCluster, core: client.CoreV1Api, ns: str) -> None:
    token = secrets.token_hex(8)
    server = (
        "import http.server, socketserver\n"
        "class H(http.server.BaseHTTPRequestHandler):\n"
        "    def do_GET(self):\n"
        f"        body = b'{token}'\n"
        "        self.send_response(200); self.send_header('Content-Length', str(len(body))); self.end_headers()\n"
        "        self.wfile.write(body)\n"
        "socketserver.TCPServer(('0.0.0.0', 8080), H).serve_forever()\n"
    )
    core.create_namespaced_pod(ns, _pod("web", "real-1", server, port=8080))
    wait_until(lambda: _running(core, ns, "web"), what="the web pod to run")
    h = real_cluster.handle
    out = h.kubectl("exec", "-n", ns, "web", "--", "sh", "-c", "echo $((6*7)) && cat /etc/os-release | head -1").stdout
    assert out.splitlines()[0] == "42" and "Debian" in out
    # The pod is Running before its server has bound the port; kubectl port-forward gives up for good
    # on the first refused connection, so wait (inside the pod) until the server listens.
    probe = "import socket; socket.create_connection(('127.0.0.1', 8080), timeout=2).close()"
    wait_until(lambda: h.kubectl("exec", "-n", ns, "web", "--", "python3", "-c", probe, check=False).returncode == 0,
               timeout=60, what="the web server to listen inside the pod")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        local = s.getsockname()[1]
    import urllib.request

    errors: list[str] = []
    pf: subprocess.Popen[str] | None = None

    def fetch() -> bytes | None:
        nonlocal pf
        if pf is None or pf.poll() is not None:  # not started yet, or it exited on an error: start it again
            if pf is not None:
                errors.append(f"port-forward exited {pf.returncode}: {pf.stdout.read() if pf.stdout else ''}")
            pf = subprocess.Popen(
                [h.kubectl_path, f"--kubeconfig={h.kubeconfig}", "port-forward", "-n", ns, "pod/web", f"{local}:8080"],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            )
            assert pf.stdout is not None
            line = pf.stdout.readline()  # "Forwarding from 127.0.0.1:N -> 8080", or the error before it exits
            if "Forwarding from" not in line:
                errors.append(f"port-forward said {line!r}")
                return None
        try:
            return urllib.request.urlopen(f"http://127.0.0.1:{local}/", timeout=5).read()
        except OSError as exc:
            errors.append(repr(exc))
            return None

    try:
        try:
            body = wait_until(fetch, timeout=60, what="an answer through port-forward")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; last errors: {errors[-3:]}") from None
        assert body.decode() == token
    finally:
        if pf is not None:
            pf.terminate()
            pf.wait(timeout=10)


def test_pods_on_two_real_nodes_reach_each_other(core: client.CoreV1Api, ns: str) -> None:
    token = secrets.token_hex(8)
    server = (
        "import socket\n"
        "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(('0.0.0.0', 7000))\n"
        "s.listen(1)\n"
        "c, _ = s.accept(); data = c.recv(100); c.sendall(b'echo:' + data); c.close()\n"
    )
    core.create_namespaced_pod(ns, _pod("server", "real-0", server, port=7000))
    pod = wait_until(lambda: _running(core, ns, "server"), what="the server pod to run")
    ip = pod.status.pod_ip
    assert pod.spec.node_name == "real-0"
    client_script = (
        "import socket, time\n"
        "for _ in range(100):\n"
        "    try:\n"
        f"        c = socket.create_connection(('{ip}', 7000), timeout=2); break\n"
        "    except OSError:\n"
        "        time.sleep(0.2)\n"
        f"c.sendall(b'{token}'); print(c.recv(100).decode())\n"
    )
    core.create_namespaced_pod(ns, _pod("client", "real-1", client_script))
    wait_until(lambda: _phase(core, ns, "client") in ("Succeeded", "Failed"), what="the client pod to finish")
    client_pod = core.read_namespaced_pod("client", ns)
    assert client_pod.status.pod_ip != ip and client_pod.spec.node_name == "real-1"
    assert core.read_namespaced_pod_log("client", ns).strip() == f"echo:{token}"
    assert _phase(core, ns, "client") == "Succeeded"


def test_memory_limit_is_enforced_by_the_kernel(core: client.CoreV1Api, ns: str) -> None:
    hog = "b = []\nwhile True:\n    b.append(bytearray(16 << 20))\n"
    core.create_namespaced_pod(ns, _pod("hog", "real-0", hog, memory="64Mi"))

    def terminated() -> client.V1ContainerStateTerminated | None:
        statuses = core.read_namespaced_pod("hog", ns).status.container_statuses or []
        return statuses[0].state.terminated if statuses and statuses[0].state.terminated else None

    state = wait_until(terminated, what="the memory hog to be killed")
    assert state.reason == "OOMKilled", state
    assert state.exit_code == 137


def test_cli_up_real_node_then_down_leaves_nothing(tmp_path: Path) -> None:
    """`ckq dev up --real-nodes 1` with a pod running, then `ckq dev down`: no process, mount, cgroup,
    bridge or directory of that node is left on the machine."""
    env = dict(os.environ, CKQ_STATE_DIR=str(tmp_path / "state"))
    env.pop("KUBECONFIG", None)
    name = "real-down"
    up = subprocess.run([*CKQ, "dev", "up", "--name", name, "--nodes", "0", "--real-nodes", "1"],
                        capture_output=True, text=True, env=env, timeout=300)
    assert up.returncode == 0, up.stdout + up.stderr
    assert "real node: real-0" in up.stdout
    state = ClusterState.load(ClusterPaths(tmp_path / "state" / name))
    assert state is not None and len(state.real_nodes) == 1
    node = state.real_nodes[0]
    handle = dc.ClusterHandle(name, state.kubeconfig, Path(state.bin_dir), managed=True)
    handle.kubectl("run", "sleeper", f"--image={dc.PYTHON_IMAGE}", "--image-pull-policy=IfNotPresent",
                   "--restart=Never", "--command", "--", "sleep", "3600")
    wait_until(lambda: handle.kubectl_json("get", "pod", "sleeper")["status"].get("phase") == "Running",
               what="the sleeper pod to run")
    pids = list(realnode.iter_processes_of(node))
    assert len(pids) >= 4, f"expected containerd, kubelet, shim, pause and sleep in the node's cgroups: {pids}"
    down = subprocess.run([*CKQ, "dev", "down", "--name", name], capture_output=True, text=True, env=env,
                          timeout=120)
    assert down.returncode == 0, down.stdout + down.stderr
    assert realnode.leftovers(node) == []
    alive = [p for p in pids if _alive(p)]
    assert alive == [], f"processes of the node still alive: {alive}"
    assert not any(node.bridge in line for line in subprocess.run(
        ["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout.splitlines())


def test_image_import_cli_refuses_a_non_image(tmp_path: Path, real_cluster: RealCluster) -> None:
    bogus = tmp_path / "not-an-image.tar"
    bogus.write_bytes(b"hello")
    env = dict(os.environ, CKQ_STATE_DIR=str(Path(real_cluster.state.root).parent))
    proc = subprocess.run([*CKQ, "dev", "image", "import", str(bogus), "--name", real_cluster.state.name],
                          capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 1
    assert "not a readable image archive" in proc.stderr and "Traceback" not in proc.stderr


def test_controller_places_jobs_on_real_and_kwok_nodes_by_flavor(
    real_cluster: RealCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A mixed cluster: the same ClusterQueue offers the `real` flavor (real nodes) and `h100` (kwok
    GPU nodes); a CPU job runs for real on a real node and a GPU job on a kwok node, both placed by
    the controller's engine. The real job's log holds a digest only a real python3 run produces."""
    from tests.plugins.controller import ControllerProcess, Kube, cjob, cluster_queue, local_queue

    kube = Kube(real_cluster.state.kubeconfig)
    kube.apply_crds()
    for flavor, labels in (("real", {NODE_KIND_LABEL: "real"}), ("h100", {dc.FLAVOR_LABEL: "h100"})):
        body = {"apiVersion": "ckq.io/v1alpha1", "kind": "ResourceFlavor", "metadata": {"name": flavor},
                "spec": {"nodeLabels": labels}}
        try:
            kube.create("resourceflavors", body)
        except ApiException as exc:
            if exc.status != 409:
                raise
    ns = f"mixed-{uuid.uuid4().hex[:6]}"
    kube.core.create_namespace({"metadata": {"name": ns}})
    kube.wait("default ServiceAccount", lambda: _has_default_sa(kube.core, ns), timeout=60)
    cq = cluster_queue(f"{ns}-cq", gpus=16, flavors=("real", "h100"))
    cq["spec"]["resourceGroups"][0]["flavors"][0]["resources"][2]["nominalQuota"] = "0"  # no GPUs on real nodes
    kube.create("clusterqueues", cq)
    kube.create("localqueues", local_queue("main", ns, cq["metadata"]["name"]), ns)
    # $KUBECONFIG names another cluster (the session's kwok one, or nothing): --kubeconfig alone must
    # decide which cluster the controller reads and writes.
    monkeypatch.setenv("KUBECONFIG", "/nonexistent/kubeconfig")
    controller = ControllerProcess(kube.kubeconfig, "iass", tmp_path / "controller.log")
    controller.start()
    try:
        nonce = secrets.token_hex(8)
        cpu_job = cjob("cpu-job", "main", gpus=0, mode="None", memory="64Mi")
        container = cpu_job["spec"]["podSets"][0]["template"]["spec"]["containers"][0]
        container.update({
            "image": dc.PYTHON_IMAGE, "imagePullPolicy": "IfNotPresent",
            "command": ["python3", "-c", f"import hashlib; print(hashlib.sha256(b'{nonce}').hexdigest())"],
            "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}},
        })
        kube.create("checkpointablejobs", cpu_job, ns)
        kube.create("checkpointablejobs", cjob("gpu-job", "main", gpus=8, mode="None", runtime_s=2), ns)
        done = kube.wait_phase(ns, "cpu-job", "Succeeded", timeout=120)
        assert done["status"]["admission"]["podSetAssignments"][0]["flavor"] == "real"
        kube.wait_phase(ns, "gpu-job", "Succeeded", timeout=120)
        pods = {p.metadata.labels["ckq.io/job-name"]: p for p in kube.pods(ns)}
        assert pods["cpu-job"].spec.node_name.startswith("real-")
        assert pods["gpu-job"].spec.node_name.startswith("h100-")
        import hashlib

        log = kube.core.read_namespaced_pod_log(pods["cpu-job"].metadata.name, ns)
        assert log.strip() == hashlib.sha256(nonce.encode()).hexdigest()
    finally:
        controller.stop()
        for job in kube.list("checkpointablejobs", ns):
            kube.delete("checkpointablejobs", job["metadata"]["name"], ns)
        kube.delete("clusterqueues", cq["metadata"]["name"])
        kube.core.delete_namespace(ns)


def test_controller_image_imports_and_runs_ckq(real_cluster: RealCluster, core: client.CoreV1Api, ns: str) -> None:
    """The controller image (for running ckq in a cluster) is built locally, imported with `ckq dev image
    import`, and runs `ckq` from Debian's python3 with the dependencies it carries."""
    from queue_controller.devcluster.images import controller_image

    image = controller_image()
    env = dict(os.environ, CKQ_STATE_DIR=str(Path(real_cluster.state.root).parent))
    proc = subprocess.run([*CKQ, "dev", "image", "import", str(image.archive), "--name", real_cluster.state.name],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert image.ref in proc.stdout
    pod = _pod("ckq", "real-1", "")
    pod["spec"]["containers"][0].update({
        "image": image.ref,
        "command": ["python3", "-c", "import kopf, kubernetes, pydantic, queue_controller.operator.main as m; "
                    "import queue_controller.cli as c; print('ckq imports ok', m.__name__)"],
    })
    core.create_namespaced_pod(ns, pod)
    wait_until(lambda: _phase(core, ns, "ckq") in ("Succeeded", "Failed"), timeout=120, what="the ckq pod to end")
    log = core.read_namespaced_pod_log("ckq", ns)
    assert _phase(core, ns, "ckq") == "Succeeded", log
    assert "ckq imports ok queue_controller.operator.main" in log

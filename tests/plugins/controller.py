"""Fixtures for controller tests on the real control plane: CRDs installed, flavors for the test node
groups, a namespace per test, and the controller run as a real `ckq controller` process."""

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
from typing import Any

import pytest
import yaml
from kubernetes import client, config
from kubernetes.client.rest import ApiException

ROOT = Path(__file__).resolve().parents[2]
GROUP, VERSION = "ckq.io", "v1alpha1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Kube:
    """Small synchronous helpers over the official client, for tests."""

    def __init__(self, kubeconfig: str) -> None:
        self.api = config.new_client_from_config(config_file=kubeconfig)
        self.core = client.CoreV1Api(self.api)
        self.custom = client.CustomObjectsApi(self.api)
        self.ext = client.ApiextensionsV1Api(self.api)
        self.kubeconfig = kubeconfig

    def apply_crds(self) -> None:
        """The CRDs and the admission policy of crds/, as `kubectl apply -f crds/` installs them."""
        for path in sorted((ROOT / "crds").glob("ckq.io_*.yaml")):
            body = yaml.safe_load(path.read_text())
            try:
                self.ext.create_custom_resource_definition(body)
            except ApiException as e:
                if e.status != 409:
                    raise
                current = self.ext.read_custom_resource_definition(body["metadata"]["name"])
                body["metadata"]["resourceVersion"] = current.metadata.resource_version
                self.ext.replace_custom_resource_definition(body["metadata"]["name"], body)
        deadline = time.time() + 60
        for path in sorted((ROOT / "crds").glob("ckq.io_*.yaml")):
            name = yaml.safe_load(path.read_text())["metadata"]["name"]
            while True:
                crd = self.ext.read_custom_resource_definition(name)
                conds = {c.type: c.status for c in (crd.status.conditions or [])}
                if conds.get("Established") == "True":
                    break
                assert time.time() < deadline, f"CRD {name} not established"
                time.sleep(0.2)
        self.apply_admission_policy()

    def apply_admission_policy(self) -> None:
        """Install the policy, then wait until the API server enforces it (its admission plugin picks
        policies up from a watch): a dry-run of a job it must refuse is refused."""
        from queue_controller.devcluster.cluster import install_admission_policy

        install_admission_policy(self.api)
        probe = cjob("admission-probe", "none", memory="lots")

        def enforced() -> bool:
            try:
                self.custom.create_namespaced_custom_object(GROUP, VERSION, "default", "checkpointablejobs", probe,
                                                            dry_run="All")
            except ApiException as e:
                return e.status == 422
            return False

        self.wait("the admission policy enforced", enforced, timeout=60)

    def create(self, plural: str, body: dict[str, Any], namespace: str | None = None) -> dict[str, Any]:
        if namespace:
            return self.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, plural, body)
        return self.custom.create_cluster_custom_object(GROUP, VERSION, plural, body)

    def get(self, plural: str, name: str, namespace: str | None = None) -> dict[str, Any]:
        if namespace:
            return self.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, plural, name)
        return self.custom.get_cluster_custom_object(GROUP, VERSION, plural, name)

    def list(self, plural: str, namespace: str) -> list[dict[str, Any]]:
        return self.custom.list_namespaced_custom_object(GROUP, VERSION, namespace, plural)["items"]

    def patch(self, plural: str, name: str, body: dict[str, Any], namespace: str | None = None) -> dict[str, Any]:
        if namespace:
            return self.custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, plural, name, body)
        return self.custom.patch_cluster_custom_object(GROUP, VERSION, plural, name, body)

    def delete(self, plural: str, name: str, namespace: str | None = None) -> None:
        try:
            if namespace:
                self.custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, plural, name)
            else:
                self.custom.delete_cluster_custom_object(GROUP, VERSION, plural, name)
        except ApiException as e:
            if e.status != 404:
                raise

    def pods(self, namespace: str, job: str | None = None) -> list[Any]:
        sel = f"ckq.io/job-name={job}" if job else "ckq.io/managed=true"
        return self.core.list_namespaced_pod(namespace, label_selector=sel).items

    def wait(self, what: str, fn: Callable[[], Any], timeout: float = 60.0, interval: float = 0.25) -> Any:
        deadline = time.time() + timeout
        last: Any = None
        while time.time() < deadline:
            last = fn()
            if last:
                return last
            time.sleep(interval)
        raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; last seen: {last!r}")

    def job(self, namespace: str, name: str) -> dict[str, Any]:
        return self.get("checkpointablejobs", name, namespace)

    def phase(self, namespace: str, name: str) -> str:
        return str((self.job(namespace, name).get("status") or {}).get("phase") or "")

    def wait_phase(self, namespace: str, name: str, phases: str | tuple[str, ...], timeout: float = 60.0
                   ) -> dict[str, Any]:
        wanted = (phases,) if isinstance(phases, str) else phases

        def check() -> dict[str, Any] | None:
            j = self.job(namespace, name)
            return j if (j.get("status") or {}).get("phase") in wanted else None

        try:
            return self.wait(f"job {namespace}/{name} in {wanted}", check, timeout)  # type: ignore[no-any-return]
        except AssertionError:
            status = (self.job(namespace, name).get("status") or {})
            raise AssertionError(f"job {namespace}/{name} not in {wanted} after {timeout:.0f}s: phase "
                                 f"{status.get('phase')!r}, message {status.get('message')!r}") from None


@pytest.fixture(scope="session")
def kube(kube_cluster: Any) -> Kube:
    k = Kube(kube_cluster.kubeconfig)
    k.apply_crds()
    for name in ("h100", "a100", "cpu"):
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ResourceFlavor", "metadata": {"name": name},
                "spec": {"nodeLabels": {"ckq.io/flavor": name}}}
        try:
            k.create("resourceflavors", body)
        except ApiException as e:
            if e.status != 409:
                raise
    return k


@pytest.fixture
def namespace(kube: Kube) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:8]}"
    kube.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    kube.wait("default ServiceAccount", lambda: _has_default_sa(kube, name), timeout=30)
    yield name
    free_namespace(kube, name)


def free_namespace(kube: Kube, name: str, timeout: float = 60) -> None:
    """A test's teardown: delete its jobs, its pods at once and the namespace, and wait until the pods
    are gone. The nodes are shared by the tests: a pod left terminating (a workload that ignores
    SIGTERM waits out its 30 s grace) still holds its requests there, and the next test's job that
    needs a whole node would wait for it instead of doing what the test expects."""
    for job in kube.list("checkpointablejobs", name):
        kube.delete("checkpointablejobs", job["metadata"]["name"], name)
    kube.core.delete_collection_namespaced_pod(name, grace_period_seconds=0)
    kube.core.delete_namespace(name)
    kube.wait(f"the pods of namespace {name} gone", lambda: not kube.core.list_namespaced_pod(name).items,
              timeout=timeout)


def _has_default_sa(kube: Kube, ns: str) -> bool:
    try:
        kube.core.read_namespaced_service_account("default", ns)
        return True
    except ApiException:
        return False


class ControllerProcess:
    def __init__(self, kubeconfig: str, policy: str, log_path: Path, extra: list[str] | None = None) -> None:
        self.kubeconfig = kubeconfig
        self.policy = policy
        self.log_path = log_path
        self.extra = extra or []
        self.proc: subprocess.Popen[bytes] | None = None
        self.metrics_port = 0

    def start(self) -> None:
        self.metrics_port = free_port()
        cmd = [sys.executable, "-m", "queue_controller.cli", "controller", "--policy", self.policy,
               "--kubeconfig", self.kubeconfig, "--metrics-port", str(self.metrics_port),
               "--liveness-port", str(free_port()), "--checkpoint-bandwidth-mib", "1024", *self.extra]
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})
        deadline = time.time() + 30
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"controller exited at start:\n{self.log_tail()}")
            if "ckq controller started" in self.log_path.read_text(errors="replace"):
                return
            time.sleep(0.2)
        raise AssertionError(f"controller did not start:\n{self.log_tail()}")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        self.kill(signal.SIGTERM)

    def log_tail(self, n: int = 60) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    def metrics(self) -> str:
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
            return r.read().decode()


@pytest.fixture
def run_controller(kube: Kube, tmp_path: Path, request: pytest.FixtureRequest
                   ) -> Iterator[Callable[..., ControllerProcess]]:
    started: list[ControllerProcess] = []

    def start(policy: str = "iass", extra: list[str] | None = None) -> ControllerProcess:
        c = ControllerProcess(kube.kubeconfig, policy, tmp_path / "controller.log", extra)
        c.start()
        started.append(c)
        return c

    yield start
    for c in started:
        c.stop()
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed and started:
        print(f"--- controller log ---\n{started[-1].log_tail(120)}")


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)


# ---- manifests ----------------------------------------------------------------------------------

def cluster_queue(name: str, gpus: int, cohort: str | None = None, flavors: tuple[str, ...] = ("h100",),
                  **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "ClusterQueue", "metadata": {"name": name},
        "spec": {
            "namespaceSelector": {},
            "resourceGroups": [{
                "coveredResources": ["cpu", "memory", "nvidia.com/gpu"],
                "flavors": [{"name": f, "resources": [
                    {"name": "cpu", "nominalQuota": "512"}, {"name": "memory", "nominalQuota": "4Ti"},
                    {"name": "nvidia.com/gpu", "nominalQuota": str(gpus)},
                ]} for f in flavors],
            }],
            **spec,
        },
    }
    if cohort:
        body["spec"]["cohort"] = cohort
    return body


def local_queue(name: str, namespace: str, cq: str) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "LocalQueue",
            "metadata": {"name": name, "namespace": namespace}, "spec": {"clusterQueue": cq}}


def cjob(name: str, queue: str, gpus: int = 8, pods: int = 1, priority: int = 0, runtime_s: int = 30,
         mode: str = "Simulated", memory: str = "16Gi", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "CheckpointableJob",
        "metadata": {"name": name, "annotations": {"ckq.io/simulated-runtime-seconds": str(runtime_s)}},
        "spec": {
            "queueName": queue, "priority": priority,
            "checkpoint": {"mode": mode, **spec.pop("checkpoint", {})},
            "podSets": [{"name": "worker", "count": pods, "template": {"spec": {"containers": [{
                "name": "train", "image": "registry.example/train:1",
                "resources": {"requests": {"cpu": "4", "memory": memory, "nvidia.com/gpu": str(gpus)},
                              "limits": {"nvidia.com/gpu": str(gpus)}},
            }]}}}],
            **spec,
        },
    }


@pytest.fixture
def queues(kube: Kube, namespace: str) -> Iterator[Callable[..., str]]:
    """Create ClusterQueues (named uniquely per test) with a LocalQueue each in the test namespace."""
    made: list[str] = []

    def make(gpus: int, cohort: str | None = None, lq: str = "main", **spec: Any) -> str:
        name = f"{namespace}-{lq}"
        kube.create("clusterqueues", cluster_queue(name, gpus, cohort, **spec))
        made.append(name)
        kube.create("localqueues", local_queue(lq, namespace, name), namespace)
        return lq

    yield make
    for name in made:
        kube.delete("clusterqueues", name)


def job_status(kube: Kube, ns: str, name: str) -> dict[str, Any]:
    return kube.job(ns, name).get("status") or {}


def running_pods(kube: Kube, ns: str, job: str) -> list[Any]:
    return [p for p in kube.pods(ns, job) if p.status.phase == "Running" and not p.metadata.deletion_timestamp]

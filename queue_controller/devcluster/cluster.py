"""`up`, `down` and `status` of one named local control plane."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import secrets
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from queue_controller.devcluster import images as local_images
from queue_controller.devcluster import processes, realnode
from queue_controller.devcluster.binaries import cached_bin_dir, ensure_binaries
from queue_controller.devcluster.components import (
    ADVERTISE_IP,
    AUDIT_POLICY,
    PORT_NAMES,
    SERVICE_IP,
    Component,
    apiserver_ready,
    components,
)
from queue_controller.devcluster.errors import DevClusterError
from queue_controller.devcluster.kube import api_client
from queue_controller.devcluster.kubeconfig import write_kubeconfig
from queue_controller.devcluster.nodes import NodeGroup, check_unique, create_nodes, node_is_ready
from queue_controller.devcluster.pki import CLIENTS, write_pki
from queue_controller.devcluster.ports import free_ports, require_free
from queue_controller.devcluster.preload import local_images as preloaded_images
from queue_controller.devcluster.processes import ProcessRecord
from queue_controller.devcluster.stages import stages_yaml
from queue_controller.devcluster.state import ClusterPaths, ClusterState, locked, paths_for

Say = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


@dataclass(frozen=True)
class ComponentStatus:
    name: str
    pid: int
    alive: bool
    log: str

    def log_tail(self, lines: int = 15) -> str:
        return processes.tail(self.log, lines)


class ComponentDied(DevClusterError):
    """A component exited; the message carries the tail of its log."""


def _died_message(rec: ProcessRecord) -> str:
    code = processes.exit_code(rec)
    how = f"exited with status {code}" if code is not None else "is not running"
    return f"{rec.name} (pid {rec.pid}) {how}. Last lines of {rec.log}:\n" + "\n".join(
        "    " + line for line in processes.tail(rec.log).splitlines()
    )


def _check_alive(state: ClusterState) -> None:
    for rec in state.processes:
        if not processes.is_alive(rec):
            raise ComponentDied(_died_message(rec))


def _stop_all(state: ClusterState) -> None:
    real = {f"{kind}-{n.name}" for n in state.real_nodes for kind in ("kubelet", "containerd")}
    for rec in reversed(state.processes):  # kubelets first, etcd last: dependants before dependencies
        # A real node's daemons get little grace: teardown SIGKILLs whatever is left in their cgroups.
        processes.stop(rec, timeout=2.0 if rec.name in real else 15.0)
    problems = []
    for node in state.real_nodes:  # containers, shims, mounts, cgroups, bridges
        problems += realnode.teardown(node)
    if state.real_nodes:
        realnode.restore_forwarding(state.ip_forward_before)
    if state.store:  # the cluster's checkpoint images go with it
        shutil.rmtree(state.store, ignore_errors=True)
        for parent in (Path(state.store).parent, realnode.NODES_ROOT):  # empty ones only
            with contextlib.suppress(OSError):
                parent.rmdir()
    if problems:
        raise DevClusterError("stopped, but some of the real nodes' state is left:\n  " + "\n  ".join(problems))


def _write_configs(paths: ClusterPaths, name: str, server: str) -> None:
    paths.configs.mkdir(parents=True, exist_ok=True)
    write_pki(paths.pki, service_ip=SERVICE_IP, advertise_ip=ADVERTISE_IP)
    ca = paths.pki / "ca.crt"
    for c in CLIENTS:
        target = paths.kubeconfig if c.file_stem == "admin" else paths.component_kubeconfig(c.file_stem)
        write_kubeconfig(
            target,
            cluster=name,
            server=server,
            ca=ca,
            cert=paths.pki / f"{c.file_stem}.crt",
            key=paths.pki / f"{c.file_stem}.key",
            user=c.user,
        )
    (paths.configs / "kwok-stages.yaml").write_text(stages_yaml())


def _start(
    comp: Component,
    state: ClusterState,
    timeout: float,
    die_with_parent: bool,
    say: Say,
    *,
    cgroup: str = "",
    env: dict[str, str] | None = None,
) -> None:
    t0 = time.monotonic()
    rec = processes.start(
        comp.name,
        comp.argv,
        state.paths.logs / f"{comp.name}.log",
        die_with_parent=die_with_parent,
        cgroup_procs=realnode.cgroup_procs_files(cgroup) if cgroup else (),
        env=env,
    )
    state.processes.append(rec)
    state.save()  # recorded before waiting, so a later `down` finds it even if we crash now
    try:
        processes.wait_for(
            comp.healthy,
            timeout=timeout,
            what=f"{comp.name} to become healthy",
            alive=lambda: _check_alive(state),
        )
    except TimeoutError as exc:
        raise DevClusterError(f"{exc}. Last lines of {rec.log}:\n{processes.tail(rec.log)}") from None
    say(f"  {comp.name:<24} pid {rec.pid:<7} healthy in {time.monotonic() - t0:4.1f}s")


def _wait_cluster_ready(state: ClusterState, node_names: list[str], timeout: float) -> None:
    with api_client(state.kubeconfig) as api:
        core = client.CoreV1Api(api)
        create_nodes(core, state.node_groups)

        def nodes_ready() -> bool:
            ready = {n.metadata.name for n in core.list_node().items if n.metadata and node_is_ready(n)}
            return set(node_names) <= ready

        def default_sa() -> bool:
            try:
                core.read_namespaced_service_account("default", "default")
            except ApiException as exc:
                if exc.status == 404:
                    return False
                raise
            return True

        alive = lambda: _check_alive(state)  # noqa: E731
        processes.wait_for(nodes_ready, timeout=timeout, what=f"{len(node_names)} nodes to be Ready", alive=alive)
        processes.wait_for(default_sa, timeout=timeout, what="the default ServiceAccount", alive=alive)


def up(
    name: str,
    node_groups: list[NodeGroup],
    *,
    root: Path | None = None,
    api_port: int | None = None,
    timeout: float = 90.0,
    die_with_parent: bool = False,
    build: bool = True,
    say: Say = _quiet,
    real_nodes: int = 0,
    real_node_labels: dict[str, str] | None = None,
    audit_log: bool = False,
    node_local_store: bool = False,
    pod_gc_threshold: int | None = None,
) -> tuple[ClusterState, bool]:
    """Start cluster `name`, or find it already running. Returns (state, started_now).

    `real_nodes` real worker nodes (kubelet + containerd) run beside the kwok node groups.
    `audit_log`: the API server writes every request's metadata to `logs/audit.log` (JSON lines).
    `node_local_store`: the real nodes do not share a checkpoint store: each keeps its images in its own
    directory (store/<node>/, ConfigMap storeMode: node-local) and a restore on another node has them
    staged by the agents (docs/dev-cluster.md).
    `pod_gc_threshold`: finished pods the cluster keeps before PodGC deletes the oldest (None: Kubernetes'
    default, 12,500); applies when the cluster is started here.
    On any failure everything started here is stopped and its state removed before raising.
    """
    if not node_groups and not real_nodes:
        raise DevClusterError("at least one node is needed (a kwok node group or --real-nodes N)")
    if pod_gc_threshold is not None and pod_gc_threshold < 1:
        raise DevClusterError(f"pod_gc_threshold {pod_gc_threshold} must be at least 1")
    if not 0 <= real_nodes <= realnode.MAX_REAL_NODES:
        raise DevClusterError(f"--real-nodes {real_nodes} must be 0..{realnode.MAX_REAL_NODES}")
    if real_nodes:
        problems = realnode.preflight()
        if problems:
            raise DevClusterError("this machine cannot host real nodes:\n  " + "\n  ".join(problems))
    try:
        check_unique(node_groups)
    except ValueError as exc:
        raise DevClusterError(str(exc)) from None
    paths = paths_for(name, root)
    with locked(paths):
        existing = ClusterState.load(paths)
        if existing is not None:
            if _healthy(existing):
                if len(existing.real_nodes) != real_nodes:
                    raise DevClusterError(
                        f"cluster '{name}' is running with {len(existing.real_nodes)} real node(s), not {real_nodes}; "
                        f"run `ckq dev down --name {name}` first"
                    )
                wanted = "node-local" if node_local_store else "shared"
                if real_nodes and existing.store_mode != wanted:
                    raise DevClusterError(
                        f"cluster '{name}' is running with a {existing.store_mode} checkpoint store, not {wanted}; "
                        f"run `ckq dev down --name {name}` first"
                    )
                return existing, False
            _clear_stale(existing, paths, say)
        if paths.root.exists():
            shutil.rmtree(paths.root)
        if api_port is not None:
            require_free(api_port, "API server")
        bin_dir = _binaries(build, say)
        real = _RealSetup.provision(real_nodes, real_node_labels or {}, build, say) if real_nodes else None
        if real is not None:
            real.node_local_store = node_local_store
        elif node_local_store:
            raise DevClusterError("--node-local-store needs real nodes (--real-nodes N)")
        state = _fresh_up(name, node_groups, paths, bin_dir, api_port, timeout, die_with_parent, say, real,
                          audit_log, pod_gc_threshold)
        return state, True


def _binaries(build: bool, say: Say) -> Path:
    bin_dir = cached_bin_dir()
    if bin_dir is not None:
        return bin_dir
    if not build:
        raise DevClusterError("the control plane binaries are not built yet: run `ckq dev build`")
    say("building the control plane binaries from Go modules first (once; tens of minutes cold)")
    return ensure_binaries()


def _fresh_up(
    name: str,
    node_groups: list[NodeGroup],
    paths: ClusterPaths,
    bin_dir: Path,
    api_port: int | None,
    timeout: float,
    die_with_parent: bool,
    say: Say,
    real: _RealSetup | None,
    audit_log: bool = False,
    pod_gc_threshold: int | None = None,
) -> ClusterState:
    ports = dict(zip(PORT_NAMES, free_ports(len(PORT_NAMES)), strict=True))
    if api_port is not None:
        ports["apiserver"] = api_port
    server = f"https://127.0.0.1:{ports['apiserver']}"
    paths.root.mkdir(parents=True)
    state = ClusterState(
        name=name,
        root=str(paths.root),
        bin_dir=str(bin_dir),
        server=server,
        ports=ports,
        node_groups=list(node_groups),
    )
    t0 = time.monotonic()
    try:
        _write_configs(paths, name, server)
        if audit_log:
            paths.logs.mkdir(parents=True, exist_ok=True)
            (paths.configs / "audit-policy.yaml").write_text(AUDIT_POLICY)
        state.save()
        for comp in components(bin_dir, paths, ports, name, audit_log=audit_log, pod_gc_threshold=pod_gc_threshold):
            _start(comp, state, timeout, die_with_parent, say)
        if real is not None:
            real.start(state, timeout, die_with_parent, say)
        node_names = [n for g in node_groups for n in g.node_names()] + [n.name for n in state.real_nodes]
        _wait_cluster_ready(state, node_names, timeout)
        say(f"  {len(node_names)} node(s) Ready, default ServiceAccount present ({time.monotonic() - t0:.1f}s in all)")
        state.ready = True
        state.save()
        return state
    except BaseException as exc:  # also Ctrl-C: never leave a half-started cluster behind
        _stop_all(state)
        shutil.rmtree(paths.root, ignore_errors=True)
        if isinstance(exc, DevClusterError) or not isinstance(exc, Exception):
            raise  # ours already reads well; Ctrl-C and exits pass through
        raise DevClusterError(f"cluster '{name}' did not come up: {type(exc).__name__}: {exc}") from None


@dataclass
class _RealSetup:
    """What real nodes need before the control plane starts: the runtime packages and the images."""

    count: int
    labels: dict[str, str]
    runtime: realnode.NodeRuntime
    images: list[local_images.LocalImage]
    seed: Path
    node_local_store: bool = False

    @classmethod
    def provision(cls, count: int, labels: dict[str, str], build: bool, say: Say) -> _RealSetup:
        rt = realnode.cached_runtime()
        if rt is None:
            if not build:
                raise DevClusterError("the real-node runtime is not provisioned yet: run `ckq dev build`")
            rt = realnode.ensure_runtime(log=say)
        images = preloaded_images(log=say)
        return cls(count, labels, rt, images, realnode.seed_root(rt, images))

    def start(self, state: ClusterState, timeout: float, die_with_parent: bool, say: Say) -> None:
        # Two clusters may share a name under different state roots (tests do): the key tells them apart.
        key = f"{state.name}-{hashlib.sha256(state.root.encode()).hexdigest()[:6]}"
        net = realnode.pick_net(key)
        state.ip_forward_before = realnode.enable_forwarding()
        ports = free_ports(2 * self.count)
        for i, node_name in enumerate(realnode.node_names(self.count)):
            node = realnode.RealNode(
                cluster=key,
                name=node_name,
                index=i,
                net=net,
                dir=str(realnode.NODES_ROOT / key / node_name),
                kubelet_port=10250,  # each node listens on its own address
                healthz_port=ports[2 * i],
            )
            state.real_nodes.append(node)
            state.save()  # recorded before anything is made, so `down` removes it whatever happens
            realnode.prepare(node, state.paths.pki, state.server)
            realnode.plant_seed(node, self.seed)  # images preloaded: nothing is ever pulled
            env = {**os.environ, "PATH": self.runtime.path_env}
            containerd = Component(
                f"containerd-{node_name}",
                realnode.containerd_argv(node, self.runtime),
                functools.partial(realnode.containerd_ready, node, self.runtime),
            )
            _start(containerd, state, timeout, die_with_parent, say, cgroup=f"{node.cgroup}/runtime", env=env)
        bin_dir = Path(state.bin_dir)
        for node in state.real_nodes:
            kubelet = Component(
                f"kubelet-{node.name}",
                [str(bin_dir / "kubelet"), *realnode.kubelet_args(node, self.labels)],
                functools.partial(realnode.kubelet_healthy, node),
            )
            _start(kubelet, state, timeout, die_with_parent, say, cgroup=f"{node.cgroup}/kubelet",
                   env={**os.environ, "PATH": self.runtime.path_env})
        # What the controller's real checkpoint path needs, so `ckq controller` runs with no flags:
        # the CRDs, the cluster's settings (wire.CONFIG_MAP) and one node agent per real node.
        store = realnode.NODES_ROOT / key / "store"
        store.mkdir(parents=True, exist_ok=True)
        store.chmod(0o700)  # checkpoint images hold process memory
        state.store = str(store)
        agent_args: list[str] = []
        if self.node_local_store:
            # Each node its own store (store/<node>/: what a node-local disk is on a real cluster) and
            # the agents' shared transfer token (a Secret in a real cluster, mounted as a file).
            state.store_mode = "node-local"
            token = state.paths.root / "transfer-token"
            token.touch(mode=0o600)
            token.write_text(secrets.token_urlsafe(32))
            agent_args = ["--transfer-token-file", str(token)]
        state.save()
        install_checkpoint_config(state, store)
        for node in state.real_nodes:
            agent = Component(
                f"agent-{node.name}",
                [sys.executable, "-m", "queue_controller.cli", "agent", "--node", node.name,
                 "--kubeconfig", state.kubeconfig, "--store", str(store), *agent_args],
                functools.partial(_log_says, state.paths.logs / f"agent-{node.name}.log", AGENT_READY),
            )
            _start(agent, state, timeout, die_with_parent, say, cgroup=f"{node.cgroup}/agent",
                   env={**os.environ, "PYTHONUNBUFFERED": "1"})


AGENT_READY = "ckq agent started"


def _log_says(path: Path, text: str) -> bool:
    try:
        return text in path.read_text(errors="replace")
    except OSError:
        return False


def install_checkpoint_config(state: ClusterState, store: Path) -> None:
    """CRDs, namespace ckq-system and ConfigMap ckq-config for the real checkpoint path."""
    from kubernetes.client import ApiextensionsV1Api

    from queue_controller import wire
    from queue_controller.api.crdgen import KINDS, crd
    from queue_controller.devcluster.runtime_image import RUNTIME_IMAGE

    with api_client(state.kubeconfig) as api:
        ext = ApiextensionsV1Api(api)
        for kind in KINDS:
            try:
                ext.create_custom_resource_definition(crd(kind))
            except ApiException as exc:
                if exc.status != 409:
                    raise DevClusterError(
                        f"installing the CRD of {kind.KIND} failed: {exc.status} {exc.reason}"
                    ) from None
        install_admission_policy(api)
        core = client.CoreV1Api(api)
        try:
            core.create_namespace({"metadata": {"name": wire.CONFIG_NAMESPACE}})
        except ApiException as exc:
            if exc.status != 409:
                raise
        data = {
            wire.CONFIG_RUNTIME_IMAGE: RUNTIME_IMAGE,
            wire.CONFIG_STORE_HOST_PATH: str(store),
            wire.CONFIG_DELETE_GRACE: "30",
            wire.CONFIG_STORE_MODE: state.store_mode,
        }
        if state.store_mode == wire.STORE_NODE_LOCAL:
            # One port for every agent: each binds its own node's address (a bridge on this host).
            data[wire.CONFIG_STORE_TRANSFER_PORT] = str(wire.DEFAULT_STORE_TRANSFER_PORT)
        body = {"metadata": {"name": wire.CONFIG_MAP, "namespace": wire.CONFIG_NAMESPACE,
                             "labels": {"app.kubernetes.io/managed-by": "ckq-dev"}},
                "data": data}
        try:
            core.create_namespaced_config_map(wire.CONFIG_NAMESPACE, body)
        except ApiException as exc:
            if exc.status != 409:
                raise
            core.replace_namespaced_config_map(wire.CONFIG_MAP, wire.CONFIG_NAMESPACE, body)


def install_admission_policy(api: client.ApiClient) -> None:
    """Create or update the ValidatingAdmissionPolicy and its binding (`api/admission.py`), as
    `kubectl apply -f crds/` does: the pod-template checks the CRDs' own schema cannot make."""
    from queue_controller.api import admission

    reg = client.AdmissionregistrationV1Api(api)
    calls = {
        "ValidatingAdmissionPolicy": (reg.create_validating_admission_policy, reg.read_validating_admission_policy,
                                      reg.replace_validating_admission_policy),
        "ValidatingAdmissionPolicyBinding": (reg.create_validating_admission_policy_binding,
                                             reg.read_validating_admission_policy_binding,
                                             reg.replace_validating_admission_policy_binding),
    }
    for body in admission.objects():
        create, read, replace = calls[body["kind"]]
        try:
            create(body)
        except ApiException as exc:
            if exc.status != 409:
                raise DevClusterError(f"installing the {body['kind']} {body['metadata']['name']} failed: "
                                      f"{exc.status} {exc.reason}") from None
            name = body["metadata"]["name"]
            body = {**body, "metadata": {**body["metadata"],
                                         "resourceVersion": read(name).metadata.resource_version}}
            replace(name, body)


def _healthy(state: ClusterState) -> bool:
    if not state.ready or not all(processes.is_alive(p) for p in state.processes):
        return False
    try:
        return apiserver_ready(state.paths, state.ports["apiserver"])
    except OSError:
        return False


def _clear_stale(state: ClusterState, paths: ClusterPaths, say: Say) -> None:
    alive = [p for p in state.processes if processes.is_alive(p)]
    if state.ready and alive:
        dead = [p for p in state.processes if not processes.is_alive(p)]
        detail = "\n".join(_died_message(p) for p in dead) or "the API server is not ready"
        raise DevClusterError(
            f"cluster '{state.name}' is running but unhealthy:\n{detail}\n"
            f"Run `ckq dev down --name {state.name}` and `up` again."
        )
    # Left over from a crash, a kill or a reboot: stop whatever of it still runs and start afresh.
    say(f"removing stale state of cluster '{state.name}' ({len(alive)} leftover process(es))")
    _stop_all(state)


def down(name: str, *, root: Path | None = None) -> ClusterState | None:
    """Stop exactly the processes `up` recorded and remove the state. None if there was no cluster."""
    paths = paths_for(name, root)
    with locked(paths):
        state = ClusterState.load(paths)
        if state is not None:
            _stop_all(state)
        if paths.root.exists():
            shutil.rmtree(paths.root)
        return state


def status(name: str, *, root: Path | None = None) -> tuple[ClusterState | None, list[ComponentStatus]]:
    state = ClusterState.load(paths_for(name, root))
    if state is None:
        return None, []
    return state, [ComponentStatus(p.name, p.pid, processes.is_alive(p), p.log) for p in state.processes]


def load(name: str, *, root: Path | None = None) -> ClusterState:
    state = ClusterState.load(paths_for(name, root))
    if state is None:
        raise DevClusterError(f"no cluster named '{name}' (start one with `ckq dev up --name {name}`)")
    return state


def import_image(state: ClusterState, archive: Path) -> list[str]:
    """Load an image archive into every real node of a running cluster; the names it carries."""
    if not state.real_nodes:
        raise DevClusterError(
            f"cluster '{state.name}' has no real nodes (kwok nodes run no containers); "
            f"start one with `ckq dev up --name {state.name} --real-nodes 1`"
        )
    rt = realnode.cached_runtime()
    if rt is None:
        raise DevClusterError("the real-node runtime is not provisioned: run `ckq dev build`")
    refs = local_images.archive_refs(archive)
    for node in state.real_nodes:
        realnode.import_image(node, rt, archive)
    return refs

"""Cluster fixtures (issue 3): one real local control plane per test session.

`kube_cluster` starts etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok with
fake GPU nodes (TEST_NODE_GROUPS) in a temporary directory, exports KUBECONFIG while the session
runs, and stops exactly those processes at the end. With KUBECONFIG already set it uses that
cluster instead and starts nothing. Binaries are built when missing (run `ckq dev build` first:
a cold build takes longer than one test's timeout); the tier skips only when Go itself is absent.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from queue_controller import devcluster as dc
from queue_controller.devcluster.binaries import go_available
from queue_controller.devcluster.nodes import NodeGroup
from queue_controller.devcluster.state import ClusterPaths, ClusterState

# Two GPU flavors and a CPU-only one, so placement and flavor tests have something to choose from.
TEST_NODE_GROUPS = (
    NodeGroup(name="h100", count=4, gpus=8, product="NVIDIA-H100-80GB-HBM3", cpu="64", memory="512Gi"),
    NodeGroup(name="a100", count=2, gpus=8, product="NVIDIA-A100-SXM4-80GB", cpu="64", memory="512Gi"),
    NodeGroup(name="cpu", count=1, gpus=0, cpu="32", memory="128Gi"),
)
# Overridable so that several checkouts on one machine can each run the tiers at once.
TEST_CLUSTER_NAME = os.environ.get("CKQ_TEST_CLUSTER", "pytest")


def _say(config: pytest.Config, line: str) -> None:
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(f"[kube_cluster] {line}")
    else:
        print(f"[kube_cluster] {line}", file=sys.stderr)


def _external_handle(kubeconfig: str) -> dc.ClusterHandle:
    first = kubeconfig.split(os.pathsep)[0]
    # A kubeconfig written by `ckq dev up` sits next to its state: kwok helpers then work too.
    state = ClusterState.load(ClusterPaths(Path(first).parent))
    if state is not None:
        return dc.ClusterHandle(state.name, first, Path(state.bin_dir), managed=True)
    bin_dir = dc.cached_bin_dir() if not os.environ.get(dc.BIN_DIR_ENV) else Path(os.environ[dc.BIN_DIR_ENV])
    return dc.ClusterHandle("external", first, bin_dir, managed=False)


def _binaries(config: pytest.Config) -> Path:
    try:
        cached = dc.cached_bin_dir()
        if cached is not None:
            return cached
        if not go_available():
            reason = (
                "SKIPPING the real-cluster tier: no control plane binaries and no Go toolchain to build "
                f"them. Install Go >= 1.26 (https://go.dev/dl/) or set {dc.BIN_DIR_ENV}."
            )
            _say(config, reason)
            pytest.skip(reason)
        _say(config, "building control plane binaries from Go modules (cold: tens of minutes)...")
        return dc.ensure_binaries()
    except dc.DevClusterError as exc:
        pytest.fail(f"cannot get control plane binaries: {exc}", pytrace=False)


@pytest.fixture(scope="session")
def kube_cluster(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dc.ClusterHandle]:
    """A running cluster: `.kubeconfig`, `.bin_dir`, `.kubectl(...)`, `.set_node_ready(...)`, ..."""
    config = request.config
    external = os.environ.get("KUBECONFIG")
    if external:
        handle = _external_handle(external)
        _say(config, f"using the cluster of KUBECONFIG={external} (managed by ckq dev: {handle.managed})")
        yield handle
        return

    bin_dir = _binaries(config)
    # Short path under /tmp: it shows up in every component's command line and log.
    root = Path(tempfile.mkdtemp(prefix="ckq-test-"))
    t0 = time.monotonic()
    try:
        state, _ = dc.up(
            TEST_CLUSTER_NAME,
            list(TEST_NODE_GROUPS),
            root=root,
            die_with_parent=True,
            build=False,
            say=lambda line: _say(config, line),
        )
    except dc.DevClusterError as exc:
        shutil.rmtree(root, ignore_errors=True)
        pytest.fail(f"the test cluster did not come up: {exc}", pytrace=False)
    _say(config, f"cluster up in {time.monotonic() - t0:.1f}s: KUBECONFIG={state.kubeconfig}")
    handle = dc.ClusterHandle(state.name, state.kubeconfig, bin_dir, managed=True)
    old = os.environ.get("KUBECONFIG")
    os.environ["KUBECONFIG"] = state.kubeconfig
    try:
        yield handle
    finally:
        if old is None:
            os.environ.pop("KUBECONFIG", None)
        else:
            os.environ["KUBECONFIG"] = old
        # Keep the component logs for post-mortems; the rest goes with the cluster.
        logs = tmp_path_factory.getbasetemp() / "kube-cluster-logs"
        shutil.copytree(state.paths.logs, logs, dirs_exist_ok=True)
        dc.down(TEST_CLUSTER_NAME, root=root)
        shutil.rmtree(root, ignore_errors=True)
        _say(config, f"cluster stopped; component logs kept in {logs}")

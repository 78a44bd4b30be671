"""Real-node fixture (issue 9): one cluster per test session with real worker nodes beside kwok ones.

`real_cluster` starts a control plane with REAL_NODES real nodes (kubelet + containerd + runc, pod
network, local images) and one small kwok group, so tests can run real processes and mix both kinds.
It never skips silently: a machine that cannot host real nodes fails the tier, naming what is
missing (`ckq dev up --real-nodes` runs the same preflight).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from queue_controller import devcluster as dc
from queue_controller.devcluster.nodes import NodeGroup
from queue_controller.devcluster.state import ClusterState
from tests.plugins.cluster import _binaries, _say

# Overridable so that several checkouts on one machine can each run the tier at once.
REAL_CLUSTER_NAME = os.environ.get("CKQ_TEST_REAL_CLUSTER", "pytest-real")
# The node-local-store cluster (a name of its own: both may run in one session). Names stay short: they
# appear in unix socket paths.
REAL_LOCAL_CLUSTER_NAME = os.environ.get("CKQ_TEST_REAL_LOCAL_CLUSTER", REAL_CLUSTER_NAME[:5] + "l")
REAL_NODES = 2
REAL_KWOK_GROUPS = (NodeGroup(name="h100", count=2, gpus=8, cpu="64", memory="512Gi"),)


REAL_FLAVOR = "real"  # the ResourceFlavor of the real nodes (their label ckq.io/node-kind=real)


def ensure_real_flavor(kube: Any) -> None:
    """Create the real nodes' ResourceFlavor unless it exists (`kube`: tests.plugins.controller.Kube)."""
    from kubernetes.client.exceptions import ApiException

    body = {"apiVersion": "ckq.io/v1alpha1", "kind": "ResourceFlavor", "metadata": {"name": REAL_FLAVOR},
            "spec": {"nodeLabels": {"ckq.io/node-kind": "real"}}}
    try:
        kube.create("resourceflavors", body)
    except ApiException as exc:
        if exc.status != 409:
            raise


@dataclass(frozen=True)
class RealCluster:
    """The running cluster: its recorded state (real nodes, paths) and a kubectl/API handle."""

    state: ClusterState
    handle: dc.ClusterHandle


def _real_cluster(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, name: str,
                  node_local_store: bool = False) -> Iterator[RealCluster]:
    config = request.config
    _binaries(config)
    root = Path(tempfile.mkdtemp(prefix="ckq-real-"))
    t0 = time.monotonic()
    try:
        state, _ = dc.up(
            name,
            list(REAL_KWOK_GROUPS),
            root=root,
            die_with_parent=True,
            build=True,  # provisions containerd/runc/CNI and the local images when missing
            real_nodes=REAL_NODES,
            timeout=180,
            say=lambda line: _say(config, line),
            node_local_store=node_local_store,
        )
    except dc.DevClusterError as exc:
        shutil.rmtree(root, ignore_errors=True)
        pytest.fail(f"the real-node test cluster did not come up: {exc}", pytrace=False)
    _say(config, f"real-node cluster up in {time.monotonic() - t0:.1f}s: KUBECONFIG={state.kubeconfig}")
    try:
        yield RealCluster(state, dc.ClusterHandle(state.name, state.kubeconfig, Path(state.bin_dir), managed=True))
    finally:
        logs = tmp_path_factory.getbasetemp() / ("real-local-cluster-logs" if node_local_store else "real-cluster-logs")
        shutil.copytree(state.paths.logs, logs, dirs_exist_ok=True)
        dc.down(name, root=root)
        shutil.rmtree(root, ignore_errors=True)
        _say(config, f"real-node cluster stopped; component logs kept in {logs}")


@pytest.fixture(scope="session")
def real_cluster(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealCluster]:
    yield from _real_cluster(request, tmp_path_factory, REAL_CLUSTER_NAME)


@pytest.fixture(scope="session")
def real_cluster_local(request: pytest.FixtureRequest,
                       tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealCluster]:
    """Like `real_cluster`, but the real nodes share no checkpoint store (storeMode: node-local): each
    keeps its images in store/<node>/, and a restore on the other node is staged by the agents."""
    yield from _real_cluster(request, tmp_path_factory, REAL_LOCAL_CLUSTER_NAME, node_local_store=True)

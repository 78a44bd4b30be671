"""The control plane's command lines: what the dev cluster's options turn into."""

from __future__ import annotations

from pathlib import Path

import pytest

from queue_controller.devcluster.components import PORT_NAMES, components
from queue_controller.devcluster.state import paths_for

pytestmark = pytest.mark.unit


def argv(tmp_path: Path, **kw: object) -> dict[str, list[str]]:
    ports = {name: 20000 + i for i, name in enumerate(PORT_NAMES)}
    paths = paths_for("t", tmp_path)
    return {c.name: c.argv for c in components(Path("/bin-dir"), paths, ports, "t", **kw)}  # type: ignore[arg-type]


def test_the_audit_log_is_never_rotated(tmp_path: Path) -> None:
    """--audit-log-maxsize=0 rotates at 100 MB (the log library's default), which a 15,000-job run
    passes: the bench then read only the last file's requests."""
    flags = [a for a in argv(tmp_path, audit_log=True)["kube-apiserver"] if a.startswith("--audit-log-maxsize=")]
    assert flags and int(flags[0].split("=")[1]) >= 1 << 20  # MB: a terabyte


def test_the_pod_gc_threshold_reaches_the_controller_manager_only_when_set(tmp_path: Path) -> None:
    assert "--terminated-pod-gc-threshold=2000" in argv(tmp_path, pod_gc_threshold=2000)["kube-controller-manager"]
    assert not any(a.startswith("--terminated-pod-gc-threshold") for a in argv(tmp_path)["kube-controller-manager"])


def test_a_pod_gc_threshold_below_one_is_refused_before_anything_starts(tmp_path: Path) -> None:
    from queue_controller.devcluster.cluster import NodeGroup, up
    from queue_controller.devcluster.errors import DevClusterError

    with pytest.raises(DevClusterError, match="pod_gc_threshold 0 must be at least 1"):
        up("t", [NodeGroup(name="cpu", count=1, gpus=0, cpu="1", memory="1Gi", pods=10)], root=tmp_path,
           pod_gc_threshold=0)
    assert not (tmp_path / "t").exists()

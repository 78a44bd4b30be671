"""Where one named cluster keeps its files, and the record (state.json) of what was started."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from queue_controller.devcluster.errors import DevClusterError
from queue_controller.devcluster.nodes import NodeGroup
from queue_controller.devcluster.processes import ProcessRecord
from queue_controller.devcluster.realnode import RealNode

STATE_DIR_ENV = "CKQ_STATE_DIR"
_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$")


def state_root() -> Path:
    env = os.environ.get(STATE_DIR_ENV)
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "ckq" / "dev"


def check_name(name: str) -> str:
    if not _NAME_RE.match(name):
        raise DevClusterError(f"cluster name '{name}' must be lower-case letters, digits and '-' (at most 40)")
    return name


@dataclass
class ClusterPaths:
    """The file layout of one cluster's state directory."""

    root: Path

    @property
    def state_file(self) -> Path:
        return self.root / "state.json"

    @property
    def kubeconfig(self) -> Path:
        return self.root / "kubeconfig"

    @property
    def pki(self) -> Path:
        return self.root / "pki"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def etcd_data(self) -> Path:
        return self.root / "etcd-data"

    @property
    def configs(self) -> Path:
        return self.root / "config"

    def component_kubeconfig(self, component: str) -> Path:
        return self.configs / f"{component}.kubeconfig"


def paths_for(name: str, root: Path | None = None) -> ClusterPaths:
    return ClusterPaths((root or state_root()) / check_name(name))


@dataclass
class ClusterState:
    """What `up` started, so `down` and `status` act on exactly those processes."""

    name: str
    root: str
    bin_dir: str
    server: str
    ports: dict[str, int]
    node_groups: list[NodeGroup]
    processes: list[ProcessRecord] = field(default_factory=list)
    ready: bool = False  # True once `up` finished; a crash mid-`up` leaves False
    real_nodes: list[RealNode] = field(default_factory=list)
    ip_forward_before: str = ""  # what net.ipv4.ip_forward was before real nodes turned it on
    store: str = ""  # the checkpoint store (host directory) of the real nodes; removed by `down`
    store_mode: str = "shared"  # wire.STORE_MODES: node-local keeps each node's images in store/<node>/

    @property
    def paths(self) -> ClusterPaths:
        return ClusterPaths(Path(self.root))

    @property
    def kubeconfig(self) -> str:
        return str(self.paths.kubeconfig)

    def save(self) -> None:
        data: dict[str, Any] = {
            "name": self.name,
            "root": self.root,
            "bin_dir": self.bin_dir,
            "server": self.server,
            "ports": self.ports,
            "node_groups": [g.to_dict() for g in self.node_groups],
            "processes": [p.to_dict() for p in self.processes],
            "ready": self.ready,
            "real_nodes": [n.to_dict() for n in self.real_nodes],
            "ip_forward_before": self.ip_forward_before,
            "store": self.store,
            "store_mode": self.store_mode,
        }
        tmp = self.paths.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2))
        tmp.replace(self.paths.state_file)  # atomic: a reader never sees half a file

    @classmethod
    def load(cls, paths: ClusterPaths) -> ClusterState | None:
        try:
            data = json.loads(paths.state_file.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise DevClusterError(
                f"unreadable cluster state {paths.state_file}: {exc}; remove {paths.root} once no component runs"
            ) from None
        return cls(
            name=data["name"],
            root=data["root"],
            bin_dir=data["bin_dir"],
            server=data["server"],
            ports={k: int(v) for k, v in data["ports"].items()},
            node_groups=[NodeGroup.from_dict(g) for g in data["node_groups"]],
            processes=[ProcessRecord.from_dict(p) for p in data["processes"]],
            ready=bool(data.get("ready")),
            real_nodes=[RealNode.from_dict(n) for n in data.get("real_nodes", [])],
            ip_forward_before=str(data.get("ip_forward_before", "")),
            store=str(data.get("store", "")),
            store_mode=str(data.get("store_mode", "shared")),
        )


@contextlib.contextmanager
def locked(paths: ClusterPaths) -> Iterator[None]:
    """Serialize `up`/`down` of one cluster name (the lock file lives beside its directory)."""
    paths.root.parent.mkdir(parents=True, exist_ok=True)
    lock_path = paths.root.parent / f".{paths.root.name}.lock"
    with lock_path.open("w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DevClusterError(
                f"another `ckq dev` command is working on cluster '{paths.root.name}'; wait for it to finish"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def list_clusters(root: Path | None = None) -> list[str]:
    base = root or state_root()
    if not base.is_dir():
        return []
    return sorted(p.name for p in base.iterdir() if (p / "state.json").is_file())

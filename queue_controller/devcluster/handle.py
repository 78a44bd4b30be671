"""A handle on a running cluster for tests and demos: kubeconfig, kubectl and failure helpers."""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubernetes import client

from queue_controller.devcluster.constants import FLAVOR_LABEL
from queue_controller.devcluster.errors import DevClusterError
from queue_controller.devcluster.nodes import delete_node, set_node_ready


@dataclass
class ClusterHandle:
    """`managed` is True for a ckq dev cluster (kwok nodes, failure helpers work); False for any
    other cluster found through KUBECONFIG."""

    name: str
    kubeconfig: str
    bin_dir: Path | None
    managed: bool

    @property
    def kubectl_path(self) -> str:
        if self.bin_dir is not None and (self.bin_dir / "kubectl").exists():
            return str(self.bin_dir / "kubectl")
        return "kubectl"

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run kubectl against this cluster; on failure the error names the command and its stderr."""
        argv = [self.kubectl_path, f"--kubeconfig={self.kubeconfig}", *args]
        proc = subprocess.run(argv, input=input, capture_output=True, text=True, timeout=timeout, check=False)
        if check and proc.returncode != 0:
            raise DevClusterError(f"`kubectl {' '.join(args)}` failed ({proc.returncode}): {proc.stderr.strip()}")
        return proc

    def kubectl_json(self, *args: str) -> Any:
        return json.loads(self.kubectl(*args, "-o", "json").stdout)

    def apply(self, manifest: str) -> None:
        self.kubectl("apply", "-f", "-", input=manifest)

    def api_client(self) -> client.ApiClient:
        """A fresh client for this cluster; the caller closes it (or uses it in a `with`)."""
        from queue_controller.devcluster.kube import new_api_client

        return new_api_client(self.kubeconfig)

    def node_names(self, flavor: str | None = None) -> list[str]:
        selector = [f"--selector={FLAVOR_LABEL}={flavor}"] if flavor else []
        data = self.kubectl_json("get", "nodes", *selector)
        return sorted(item["metadata"]["name"] for item in data["items"])

    def set_node_ready(self, name: str, ready: bool, *, wait: float = 30.0) -> None:
        self._require_managed("set_node_ready")
        set_node_ready(self.kubeconfig, name, ready, wait=wait)

    def delete_node(self, name: str) -> None:
        self._require_managed("delete_node")
        delete_node(self.kubeconfig, name)

    def env(self) -> dict[str, str]:
        """os.environ plus KUBECONFIG (and kubectl on PATH) for subprocesses."""
        env = dict(os.environ, KUBECONFIG=self.kubeconfig)
        if self.bin_dir is not None:
            env["PATH"] = f"{self.bin_dir}{os.pathsep}{env.get('PATH', '')}"
        return env

    def _require_managed(self, what: str) -> None:
        if not self.managed:
            raise DevClusterError(f"{what} needs a ckq dev cluster with kwok nodes, not {self.kubeconfig}")

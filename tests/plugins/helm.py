"""The `helm` fixture: the helm executable, built from Go modules like the cluster binaries
(hack/build-helm.sh, `ckq dev build --helm`), and `render`, the chart's objects for some values.

The tier skips (loudly) only when helm is not built and Go itself is absent.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from queue_controller import devcluster as dc
from queue_controller.devcluster.binaries import go_available

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "ckq"


@pytest.fixture(scope="session")
def helm(request: pytest.FixtureRequest) -> Path:
    try:
        cached = dc.cached_helm()
        if cached is not None:
            return cached
        if not go_available():
            reason = "SKIPPING the Helm chart tests: helm is not built and there is no Go toolchain to build it"
            reporter = request.config.pluginmanager.get_plugin("terminalreporter")
            if reporter is not None:
                reporter.write_line(f"[helm] {reason}")
            pytest.skip(reason)
        return dc.ensure_helm(quiet=True)
    except dc.DevClusterError as exc:
        pytest.fail(f"cannot get helm: {exc}", pytrace=False)


def flatten(values: dict[str, Any], prefix: str = "") -> list[str]:
    """`--set-json` arguments for nested values: each leaf as JSON, so types survive (no string guessing)."""
    out = []
    for key, value in values.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out += flatten(value, path + ".")
        else:
            out += ["--set-json", f"{path}={json.dumps(value)}"]
    return out


def helm_run(helm: Path, *args: str) -> str:
    proc = subprocess.run([str(helm), *args], capture_output=True, text=True, check=False, timeout=120)
    assert proc.returncode == 0, f"helm {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}{proc.stdout}"
    return proc.stdout


def render(helm: Path, values: dict[str, Any] | None = None, release: str = "ckq", namespace: str = "ckq-system",
           crds: bool = False, chart: Path = CHART) -> list[dict[str, Any]]:
    """The objects `helm template` renders (with the chart's CRDs when `crds`)."""
    args = ["template", release, str(chart), "--namespace", namespace, *flatten(values or {})]
    if crds:
        args.append("--include-crds")
    return [d for d in yaml.safe_load_all(helm_run(helm, *args)) if d]

"""The engine is pure: importing it pulls in no Kubernetes client, no kopf, and none of the adapters."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.unit

IMPURE = ("kubernetes", "kopf", "queue_controller.api", "queue_controller.operator", "queue_controller.checkpoint",
          "queue_controller.runtime", "queue_controller.sim", "queue_controller.devcluster", "queue_controller.cli")


def test_importing_the_engine_loads_nothing_impure() -> None:
    code = ("import sys, queue_controller.engine; "
            f"print(sorted(m for m in sys.modules if m.split('.')[0] in {IMPURE!r} or m.startswith({IMPURE!r})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"

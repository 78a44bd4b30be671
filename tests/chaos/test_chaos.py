"""The chaos tier (issue 14): each fault of tests/chaos/trials.py, over a few fixed seeds, on the session's
dev cluster (kwok nodes, Simulated checkpoints), and each of tests/chaos/real_trials.py on the session's
real nodes (real CRIU checkpoints of real processes). A failure names its seed in the test id and the
message; `CKQ_CHAOS_SEED=<seed> pytest tests/chaos -k <fault>` replays that seed's plan. `bench/chaos.py`
runs the same trials many times."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.chaos.real_trials import NODE_LOCAL_FAULTS, REAL_FAULTS, run_real_trial
from tests.chaos.trials import FAULTS, run_trial
from tests.plugins.controller import Kube
from tests.plugins.realnodes import RealCluster, ensure_real_flavor

pytestmark = pytest.mark.chaos

CI_SEEDS = (1,)  # the seeded sample every run takes; bench/chaos.py soaks more seeds


def seeds() -> list[int]:
    one = os.environ.get("CKQ_CHAOS_SEED")
    return [int(one)] if one else list(CI_SEEDS)


@pytest.mark.parametrize("seed", seeds(), ids=lambda s: f"seed={s}")
@pytest.mark.parametrize("fault", FAULTS)
def test_chaos_trial(kube: Kube, fault: str, seed: int, tmp_path: Path) -> None:
    result = run_trial(kube, fault, seed, tmp_path)
    print(result.report())
    assert result.passed, result.report()


@pytest.mark.parametrize("seed", seeds(), ids=lambda s: f"seed={s}")
@pytest.mark.parametrize("fault", REAL_FAULTS)
def test_real_chaos_trial(request: pytest.FixtureRequest, fault: str, seed: int, tmp_path: Path) -> None:
    """The real checkpoint path's faults (tests/chaos/real_trials.py) on the session's real nodes (those
    with node-local stores for the staging fault)."""
    real_cluster: RealCluster = request.getfixturevalue(
        "real_cluster_local" if fault in NODE_LOCAL_FAULTS else "real_cluster")
    kube = Kube(real_cluster.state.kubeconfig)
    ensure_real_flavor(kube)
    result = run_real_trial(kube, real_cluster.state, fault, seed, tmp_path)
    print(result.report())
    assert result.passed, result.report()

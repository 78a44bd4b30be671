"""Chaos soak: many seeded trials per fault, the counts that docs/reliability.md reports (issue 14).

Runs the chaos tier's own trials (tests/chaos/trials.py) — the same job mix, faults and invariants —
over seeds 1..N for each fault, on a dev cluster of its own (kwok nodes: the test tier's node groups),
or on the cluster of $KUBECONFIG when set (a `ckq dev up` cluster: the API server fault restarts its
kube-apiserver in place). The real checkpoint path's faults (tests/chaos/real_trials.py: `agent-kill`,
`ckq-run-kill`, `agent-kill-staging`) run on clusters of their own with 2 real nodes (node-local stores
for the staging fault), started when one of them is asked for.

    python bench/chaos.py [--trials 20] [--faults controller-kill,leader-failover,...] [--first-seed 1]

A trial takes 40-80 s on a 2-core machine: the default (20 trials x 10 faults) runs about 3.5 hours.
Prints one line per trial (a failing one with its violations and the command that replays it), then a
table of trials / passed / failed per fault with the failing seeds and the failover times, and as its
last line one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kubernetes.client.rest import ApiException  # noqa: E402

from queue_controller import devcluster as dc  # noqa: E402
from tests.chaos.real_trials import NODE_LOCAL_FAULTS, REAL_FAULTS, run_real_trial  # noqa: E402
from tests.chaos.trials import FAULTS, TrialResult, run_trial  # noqa: E402
from tests.plugins.cluster import TEST_NODE_GROUPS  # noqa: E402
from tests.plugins.controller import GROUP, VERSION, Kube  # noqa: E402
from tests.plugins.realnodes import ensure_real_flavor  # noqa: E402

CLUSTER = "ckq-chaos"
REAL_CLUSTER = os.environ.get("CKQ_CHAOS_REAL_CLUSTER", "chaosr")  # short: it appears in unix socket paths
ALL_FAULTS = FAULTS + REAL_FAULTS


def prepare(kube: Kube) -> None:
    """What the tier's `kube` fixture does: the CRDs and a flavor per node group."""
    kube.apply_crds()
    for group in TEST_NODE_GROUPS:
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ResourceFlavor", "metadata": {"name": group.name},
                "spec": {"nodeLabels": {"ckq.io/flavor": group.name}}}
        try:
            kube.create("resourceflavors", body)
        except ApiException as e:
            if e.status != 409:
                raise


def table(results: dict[str, list[TrialResult]]) -> str:
    rows = [f"{'fault':<20} {'trials':>6} {'passed':>6} {'failed':>6}  failing seeds / failover s (median, max)"]
    for fault, rs in results.items():
        failed = [r.seed for r in rs if not r.passed]
        extra = ", ".join(map(str, failed)) or "-"
        failovers = [f for r in rs for f in r.failovers_s]
        if failovers:
            extra += f"   failover {statistics.median(failovers):.1f} / {max(failovers):.1f} s ({len(failovers)})"
        rows.append(f"{fault:<20} {len(rs):>6} {len(rs) - len(failed):>6} {len(failed):>6}  {extra}")
    return "\n".join(rows)


def record(fault: str, seed: int, r: TrialResult, logs: Path, keep: bool,
           results: dict[str, list[TrialResult]]) -> None:
    results[fault].append(r)
    line = f"{fault:<20} seed={seed:<4} {'ok  ' if r.passed else 'FAIL'} {r.seconds:5.0f}s"
    if r.failovers_s:
        line += f"  failover {', '.join(f'{f:.1f}s' for f in r.failovers_s)}"
    print(line, flush=True)
    if not r.passed:
        print("  " + r.report().replace("\n", "\n  "), flush=True)
        test = "test_real_chaos_trial" if fault in REAL_FAULTS else "test_chaos_trial"
        print(f"  replay: CKQ_CHAOS_SEED={seed} pytest 'tests/chaos/test_chaos.py::{test}"
              f"[{fault}-seed={seed}]'; logs in {logs}", flush=True)
    elif not keep:
        shutil.rmtree(logs, ignore_errors=True)


def soak(work: Path, faults: list[str], args: argparse.Namespace, results: dict[str, list[TrialResult]]) -> None:
    external = os.environ.get("KUBECONFIG")
    root = work / "cluster"
    if external:
        kubeconfig = external.split(os.pathsep)[0]
    else:
        t0 = time.monotonic()
        state, _ = dc.up(CLUSTER, list(TEST_NODE_GROUPS), root=root, die_with_parent=True, build=False)
        kubeconfig = state.kubeconfig
        os.environ["KUBECONFIG"] = kubeconfig
        print(f"cluster up in {time.monotonic() - t0:.0f}s")
    try:
        kube = Kube(kubeconfig)
        prepare(kube)
        for fault in faults:
            for seed in range(args.first_seed, args.first_seed + args.trials):
                logs = work / f"{fault}-{seed}"
                record(fault, seed, run_trial(kube, fault, seed, logs), logs, args.keep_logs, results)
    finally:
        if not external:
            dc.down(CLUSTER, root=root)


def soak_real(work: Path, faults: list[str], args: argparse.Namespace,
              results: dict[str, list[TrialResult]]) -> None:
    """The real checkpoint path's trials, on a cluster of 2 real nodes of its own: a shared store, and for
    the staging fault one whose nodes keep their own stores (node-local)."""
    from queue_controller.devcluster.nodes import NodeGroup

    for node_local in (False, True):
        group = [f for f in faults if (f in NODE_LOCAL_FAULTS) == node_local]
        if not group:
            continue
        name = REAL_CLUSTER + ("l" if node_local else "")
        root = work / name
        t0 = time.monotonic()
        state, _ = dc.up(name, [NodeGroup(name="h100", count=1, gpus=8, cpu="64", memory="512Gi")], root=root,
                         die_with_parent=True, build=True, real_nodes=2, timeout=180, node_local_store=node_local)
        print(f"real-node cluster up in {time.monotonic() - t0:.0f}s ({state.store_mode} store)")
        try:
            kube = Kube(state.kubeconfig)
            ensure_real_flavor(kube)
            for fault in group:
                for seed in range(args.first_seed, args.first_seed + args.trials):
                    logs = work / f"{fault}-{seed}"
                    record(fault, seed, run_real_trial(kube, state, fault, seed, logs), logs, args.keep_logs,
                           results)
        finally:
            dc.down(name, root=root)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=20, help="trials per fault (seeds first-seed..)")
    ap.add_argument("--faults", default=",".join(ALL_FAULTS), help=f"comma-separated, of {', '.join(ALL_FAULTS)}")
    ap.add_argument("--first-seed", type=int, default=1)
    ap.add_argument("--keep-logs", action="store_true", help="keep every trial's controller logs")
    args = ap.parse_args()
    faults = [f for f in args.faults.split(",") if f]
    unknown = sorted(set(faults) - set(ALL_FAULTS))
    if unknown:
        ap.error(f"unknown fault(s) {', '.join(unknown)}; known: {', '.join(ALL_FAULTS)}")

    work = Path(tempfile.mkdtemp(prefix="ckq-chaos-"))
    results: dict[str, list[TrialResult]] = {f: [] for f in faults}
    started = time.monotonic()
    kwok_faults = [f for f in faults if f in FAULTS]
    real_faults = [f for f in faults if f in REAL_FAULTS]
    if kwok_faults:
        soak(work, kwok_faults, args, results)
    if real_faults:
        soak_real(work, real_faults, args, results)
    print()
    print(table(results))
    summary = {
        "trials_per_fault": args.trials, "first_seed": args.first_seed,
        "seconds": round(time.monotonic() - started),
        "faults": {f: {"trials": len(rs), "passed": sum(r.passed for r in rs),
                       "failed": sum(not r.passed for r in rs),
                       "failing_seeds": [r.seed for r in rs if not r.passed],
                       "failovers_s": [x for r in rs for x in r.failovers_s]}
                   for f, rs in results.items()},
    }
    print(json.dumps(summary))
    sys.exit(1 if any(not r.passed for rs in results.values() for r in rs) else 0)


if __name__ == "__main__":
    main()

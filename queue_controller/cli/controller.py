"""`ckq controller`: run the queue controller against the current kubeconfig."""

from __future__ import annotations

import logging
import os
import sys

import typer

from queue_controller.policies import PolicyError, load_policy


def controller(
    policy: str = typer.Option("iass", help="Policy profile: fifo, kueue, easy, iass, fair, or a path to a YAML file."),
    kubeconfig: str | None = typer.Option(None, envvar="KUBECONFIG", help="Kubeconfig file (default: in-cluster "
                                          "service account, then ~/.kube/config)."),
    namespace: list[str] = typer.Option([], "--namespace", "-n", help="Only these namespaces (repeatable); "
                                        "default: cluster-wide."),
    metrics_port: int = typer.Option(9090, min=0, max=65535, help="Prometheus metrics port (0: off)."),
    liveness_port: int = typer.Option(8080, min=0, max=65535, help="Probe port: /healthz (liveness) and /readyz "
                                      "(readiness) (0: off)."),
    stuck_after_seconds: float = typer.Option(120.0, min=1.0, help="/healthz fails when work has waited this long "
                                              "without a scheduling cycle completing."),
    peering: str | None = typer.Option(None, help="kopf peering name: only one replica of a peering is active. "
                                       "Default: standalone."),
    leader_election: bool = typer.Option(False, "--leader-election/--no-leader-election",
                                         help="Run as one of several replicas: only the holder of the Lease "
                                         "ckq-system/ckq-controller decides (the Helm chart turns it on)."),
    checkpoint_bandwidth_mib: float = typer.Option(2048.0, min=1.0, help="Simulated backend: write bandwidth "
                                                   "per pod (MiB/s) that models checkpoint duration."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging."),
) -> None:
    """Run the controller: queue, admit, preempt by checkpoint, backfill, checkpoint periodically, resume."""
    try:
        pol = load_policy(policy)
    except PolicyError as e:
        raise typer.BadParameter(str(e), param_hint="--policy") from None
    import kopf

    # kopf owns the log setup; it logs every handled event at INFO, so it runs quiet unless -v.
    kopf.configure(debug=verbose, quiet=not verbose)
    logging.getLogger("ckq").setLevel(logging.DEBUG if verbose else logging.INFO)
    from queue_controller.operator.main import StartupError, run

    profile = os.environ.get("CKQ_PROFILE")  # a path: write a cProfile of the whole run there at exit
    if profile:
        import atexit
        import cProfile
        import signal

        prof = cProfile.Profile()
        prof.enable()
        atexit.register(lambda: (prof.disable(), prof.dump_stats(profile)))
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        run(pol, kubeconfig=kubeconfig, namespaces=list(namespace) or None, metrics_port=metrics_port or None,
            liveness_port=liveness_port or None, peering=peering,
            checkpoint_bandwidth=checkpoint_bandwidth_mib * 2**20, stuck_after_s=stuck_after_seconds,
            leader_election=leader_election)
    except FileNotFoundError as e:
        raise typer.BadParameter(f"kubeconfig not found: {e.filename}", param_hint="--kubeconfig") from None
    except StartupError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None

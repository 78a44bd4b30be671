"""`ckq agent --node NAME`: the node agent (one per real node; a DaemonSet in a cluster)."""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path

import typer


def agent(
    node: str = typer.Option(..., "--node", envvar="NODE_NAME", help="This node's name (the pods it serves "
                             "are those with spec.nodeName = NODE)."),
    kubeconfig: str | None = typer.Option(None, envvar="KUBECONFIG", help="Kubeconfig file (default: in-cluster "
                                          "service account, then ~/.kube/config)."),
    store: str | None = typer.Option(None, "--store", help="The checkpoint store as this process sees it "
                                     "(default: storeHostPath of ConfigMap ckq-system/ckq-config). Artifact uris "
                                     "always use storeHostPath when the ConfigMap sets it."),
    workers: int = typer.Option(4, min=1, max=64, help="Checkpoints processed at once."),
    dump_workers: int = typer.Option(8, min=1, max=256, help="Containers dumped at once."),
    dump_timeout: float = typer.Option(1800.0, min=1.0, help="Seconds one container's dump may take."),
    resync: float = typer.Option(15.0, min=0.5, help="Seconds between re-checks of in-flight Checkpoints."),
    barrier_timeout: float = typer.Option(120.0, min=1.0, help="Seconds a checkpoint waits, from its first "
                                          "freeze, for every container of the job to be frozen before it fails."),
    commit_hold: float = typer.Option(300.0, min=1.0, help="Seconds a dumped container stays frozen waiting "
                                      "for the checkpoint to complete; then ckq-run continues it by itself."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging."),
) -> None:
    """Dump this node's containers for in-flight Checkpoints through ckq-run and record the artifacts."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not verbose:
        for noisy in ("kubernetes", "urllib3"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    log = logging.getLogger("ckq.agent")

    from queue_controller.agent.agent import Agent, AgentSettings
    from queue_controller.agent.dump import Dumper
    from queue_controller.agent.kube import StartupError, preflight
    from queue_controller.store import FilesystemStore, StoreError

    try:
        pre = preflight(kubeconfig, node)
    except StartupError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    local = store or pre.store_host_path
    if not local:
        typer.echo("error: no checkpoint store: ConfigMap ckq-system/ckq-config has no storeHostPath "
                   "(is this a cluster made by `ckq dev up --real-nodes`?) and --store is not given", err=True)
        raise typer.Exit(2)
    path = Path(local)
    if not path.is_absolute() or not path.is_dir():
        typer.echo(f"error: the checkpoint store {local} is not an existing directory on this node", err=True)
        raise typer.Exit(2)
    if not os.access(path, os.R_OK | os.W_OK | os.X_OK):
        typer.echo(f"error: the checkpoint store {local} is not writable by this process", err=True)
        raise typer.Exit(2)
    try:
        fs = FilesystemStore(path, uri_root=pre.store_host_path or local)
    except StoreError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None

    the_agent = Agent(pre.kube, Dumper(fs, timeout=dump_timeout),
                      AgentSettings(node=node, workers=workers, dump_workers=dump_workers, resync_seconds=resync,
                                    barrier_timeout=barrier_timeout, commit_hold=commit_hold))

    def stop(signum: int, _frame: object) -> None:
        log.info("ckq agent stopping (%s)", signal.Signals(signum).name)
        the_agent.stop.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    the_agent.start()
    while not the_agent.stop.is_set() and not the_agent.wait_synced(timeout=0.5):
        pass
    if not the_agent.stop.is_set():
        log.info("ckq agent started (node %s, API %s, store %s%s)", node, pre.host, fs.root,
                 f", uris under {fs.uri_root}" if fs.uri_root != str(fs.root) else "")
    while not the_agent.stop.wait(1.0):
        pass
    the_agent.shutdown()
    pre.kube.close()

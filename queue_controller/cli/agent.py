"""`ckq agent --node NAME`: the node agent (one per real node; a DaemonSet in a cluster)."""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path
from typing import NoReturn

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
    transfer_token_file: str | None = typer.Option(
        None, "--transfer-token-file", envvar="CKQ_TRANSFER_TOKEN_FILE",
        help="storeMode node-local: the file holding the agents' shared image-transfer token (a Secret)."),
    transfer_address: str | None = typer.Option(
        None, "--transfer-address", help="storeMode node-local: the address to serve images on (default: this "
        "node's InternalIP; the port is the ConfigMap's storeTransferPort)."),
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

    from queue_controller import wire
    from queue_controller.agent.agent import Agent, AgentSettings
    from queue_controller.agent.dump import Dumper
    from queue_controller.agent.kube import StartupError, preflight
    from queue_controller.agent.stage import Stager, Transfer, internal_ip
    from queue_controller.store import FilesystemStore, StoreError
    from queue_controller.store.transfer import TransferServer

    def fail(message: str) -> NoReturn:
        typer.echo(f"error: {message}", err=True)
        raise typer.Exit(2)

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
    mode = (pre.config.get(wire.CONFIG_STORE_MODE) or wire.STORE_SHARED).strip()
    if mode not in wire.STORE_MODES:
        fail(f"ConfigMap {wire.CONFIG_NAMESPACE}/{wire.CONFIG_MAP}: {wire.CONFIG_STORE_MODE} {mode!r} is not one of "
             f"{', '.join(wire.STORE_MODES)}")
    node_local = mode == wire.STORE_NODE_LOCAL
    if node_local:  # this node's own images: <store>/<node>/ (artifact uris still name the store root)
        path = Path(wire.node_store_root(str(path), node))
        path.mkdir(mode=0o700, exist_ok=True)
    try:
        fs = FilesystemStore(path, uri_root=pre.store_host_path or local)
    except StoreError as e:
        fail(str(e))

    the_agent = Agent(pre.kube, Dumper(fs, timeout=dump_timeout),
                      AgentSettings(node=node, workers=workers, dump_workers=dump_workers, resync_seconds=resync,
                                    barrier_timeout=barrier_timeout, commit_hold=commit_hold))
    server = None
    if node_local:
        raw_port = pre.config.get(wire.CONFIG_STORE_TRANSFER_PORT) or str(wire.DEFAULT_STORE_TRANSFER_PORT)
        if not raw_port.isdigit() or not 0 < int(raw_port) < 65536:
            fail(f"ConfigMap {wire.CONFIG_NAMESPACE}/{wire.CONFIG_MAP}: {wire.CONFIG_STORE_TRANSFER_PORT} {raw_port!r} "
                 "is not a port number")
        if not transfer_token_file:
            fail(f"{wire.CONFIG_STORE_MODE} is {wire.STORE_NODE_LOCAL}: the agents exchange images with a shared "
                 "token; give its file with --transfer-token-file (or CKQ_TRANSFER_TOKEN_FILE)")
        try:
            token = Path(transfer_token_file).read_text().strip()
        except OSError as e:
            fail(f"cannot read the transfer token {transfer_token_file}: {e.strerror}")
        if len(token) < 16:
            fail(f"the transfer token in {transfer_token_file} is shorter than 16 characters")
        address = transfer_address or internal_ip(pre.node)
        if not address:
            fail(f"node {node} has no InternalIP to serve images on; give --transfer-address")
        try:
            server = TransferServer(fs, token, address, int(raw_port))
        except OSError as e:
            fail(f"cannot serve images on {address}:{raw_port}: {e.strerror}")
        server.start()
        the_agent.stager = Stager(pre.kube, fs, node, Transfer(port=int(raw_port), token=token),
                                  the_agent.checkpoint_of, recorded=the_agent.uri_recorded)

    def stop(signum: int, _frame: object) -> None:
        log.info("ckq agent stopping (%s)", signal.Signals(signum).name)
        the_agent.stop.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    the_agent.start()
    while not the_agent.stop.is_set() and not the_agent.wait_synced(timeout=0.5):
        pass
    if not the_agent.stop.is_set():
        log.info("ckq agent started (node %s, API %s, store %s%s%s)", node, pre.host, fs.root,
                 f", uris under {fs.uri_root}" if fs.uri_root != str(fs.root) else "",
                 f", node-local: serving images on {server.address}" if server is not None else "")
    while not the_agent.stop.wait(1.0):
        pass
    the_agent.shutdown()
    if server is not None:
        server.shutdown()
    pre.kube.close()

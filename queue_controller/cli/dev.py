"""`ckq dev`: a local real Kubernetes control plane with kwok GPU nodes (see docs/dev-cluster.md)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, ParamSpec, TypeVar

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from queue_controller import devcluster as dc
from queue_controller.devcluster.nodes import NodeGroup, flavor_from_product, parse_node_group

app = typer.Typer(help="A local real Kubernetes control plane with kwok GPU nodes.", no_args_is_help=True)

# soft_wrap: paths and commands are printed whole, to be copied, even when piped. markup=False:
# log lines such as "[+]poststarthook" must print as they are; styles are given as Text.
out = Console(highlight=False, soft_wrap=True, markup=False)
err = Console(stderr=True, highlight=False, soft_wrap=True, markup=False)


def _styled(style: str, head: str, rest: str = "") -> Text:
    return Text(head, style=style) + Text(rest)


P = ParamSpec("P")
R = TypeVar("R")

NameOpt = Annotated[str, typer.Option("--name", "-n", help="Cluster name; several can run side by side.")]


def _friendly(fn: Callable[P, R]) -> Callable[P, R]:
    """Turn DevClusterError into a one-paragraph message and exit status 1 (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except dc.DevClusterError as exc:
            err.print(_styled("bold red", "error: ", str(exc)))
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            err.print("interrupted")
            raise typer.Exit(130) from None

    return wrapper


@app.command()
@_friendly
def build(
    force: Annotated[bool, typer.Option(help="Rebuild even when cached.")] = False,
    real_nodes: Annotated[
        bool, typer.Option(help="Also provision what real nodes need: containerd, runc, CNI, local images.")
    ] = True,
    helm: Annotated[bool, typer.Option(help="Also build helm from Go modules (for helm/ckq and its tests).")] = False,
) -> None:
    """Build (or reuse) etcd, kube-*, kubelet, kubectl and kwok from Go modules; print their directory.

    With --helm it also builds helm (hack/build-helm.sh) and prints its path on stderr.

    With --real-nodes (the default) it also unpacks Debian's containerd, runc and CNI plugins into the
    cache and builds the local images (ckq.local/pause, ckq.local/python:3, ckq.local/runtime): all that `ckq dev up
    --real-nodes N` needs, so that `up` itself downloads nothing.
    """
    cached = None if force else dc.cached_bin_dir()
    bin_dir = cached or dc.ensure_binaries(force=force)
    if real_nodes:
        say = lambda line: err.print(line)  # noqa: E731  # stdout carries only the directory
        rt = dc.ensure_runtime(log=say)
        images = dc.local_images(log=say)
        for image in dc.all_images(log=say):
            err.print(f"image {image.ref}: {image.archive}")
        err.print(f"real-node containerd seed (images preloaded): {dc.seed_root(rt, images)}")
    if helm:
        err.print(f"helm: {dc.ensure_helm(force=force)}")
    typer.echo(str(bin_dir))


def _simple_group(
    nodes: int | None,
    gpus: int | None,
    product: str | None,
    cpu: str | None,
    memory: str | None,
    flavor: str | None,
) -> NodeGroup:
    defaults = NodeGroup(name="default")
    gpus = defaults.gpus if gpus is None else gpus
    product = product or defaults.product
    return NodeGroup(
        name=flavor or flavor_from_product(product, gpus),
        count=defaults.count if nodes is None else nodes,
        gpus=gpus,
        product=product,
        cpu=cpu or defaults.cpu,
        memory=memory or defaults.memory,
    )


_SIMPLE_FLAGS = {
    "nodes": "--nodes",
    "gpus": "--gpus-per-node",
    "product": "--gpu-product",
    "cpu": "--cpu",
    "memory": "--memory",
    "flavor": "--flavor",
}


def _node_groups(node_group: list[str] | None, simple: dict[str, object]) -> list[NodeGroup]:
    if simple.get("nodes") == 0 and not node_group:
        return []  # real nodes only
    given = [_SIMPLE_FLAGS[k] for k, v in simple.items() if v is not None]
    if node_group:
        if given:
            raise typer.BadParameter(
                f"use either --node-group or {', '.join(given)}, not both", param_hint="--node-group"
            )
        groups = []
        for spec in node_group:
            try:
                groups.append(parse_node_group(spec))
            except ValueError as exc:
                raise typer.BadParameter(f"{spec!r}: {exc}", param_hint="--node-group") from None
        return groups
    try:
        return [_simple_group(**simple)]  # type: ignore[arg-type]
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


@app.command()
@_friendly
def up(
    name: NameOpt = dc.DEFAULT_CLUSTER_NAME,
    nodes: Annotated[int | None, typer.Option(help="Number of fake (kwok) nodes (default: 4; 0 for none).")] = None,
    real_nodes: Annotated[
        int,
        typer.Option(
            help="Real worker nodes real-0, real-1, ... (kubelet + containerd + runc) that run real containers, "
            "beside the kwok nodes. Needs root.",
            min=0,
        ),
    ] = 0,
    gpus_per_node: Annotated[int | None, typer.Option(help="nvidia.com/gpu per node (default: 8).")] = None,
    gpu_product: Annotated[
        str | None, typer.Option(help="nvidia.com/gpu.product label (default: NVIDIA-H100-80GB-HBM3).")
    ] = None,
    cpu: Annotated[str | None, typer.Option(help="CPU per node (default: 64).")] = None,
    memory: Annotated[str | None, typer.Option(help="Memory per node (default: 512Gi).")] = None,
    flavor: Annotated[
        str | None,
        typer.Option(help=f"{dc.FLAVOR_LABEL} label and node name prefix (default: from the product, e.g. h100)."),
    ] = None,
    node_group: Annotated[
        list[str] | None,
        typer.Option(
            help="A node group, repeatable, instead of the flags above: "
            "name=h100,count=4,gpus=8,product=NVIDIA-H100-80GB-HBM3,cpu=64,memory=512Gi (optional: pods=110,"
            "arch=amd64,label.KEY=VALUE)."
        ),
    ] = None,
    port: Annotated[int | None, typer.Option(help="API server port (default: a free one).")] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for each step.", min=5)] = 90.0,
    build: Annotated[bool, typer.Option(help="Build the binaries when missing (else fail).")] = True,
    audit_log: Annotated[
        bool, typer.Option(help="The API server logs every request's metadata to logs/audit.log (JSON lines).")
    ] = False,
    node_local_store: Annotated[
        bool, typer.Option(help="The real nodes keep their checkpoint images in stores of their own (ConfigMap "
                           "storeMode: node-local); a restore on another node has the agents stage them first.")
    ] = False,
) -> None:
    """Start the cluster (or report it running): etcd, kube-apiserver, KCM, scheduler, kwok, nodes."""
    groups = _node_groups(
        node_group,
        {
            "nodes": nodes,
            "gpus": gpus_per_node,
            "product": gpu_product,
            "cpu": cpu,
            "memory": memory,
            "flavor": flavor,
        },
    )
    if not groups and not real_nodes:
        raise typer.BadParameter(
            "node count 0 leaves the cluster without nodes: add --real-nodes N", param_hint="--nodes"
        )
    state, started = dc.up(
        name,
        groups,
        api_port=port,
        timeout=timeout,
        build=build,
        say=lambda line: out.print(line),
        real_nodes=real_nodes,
        audit_log=audit_log,
        node_local_store=node_local_store,
    )
    if not started:
        out.print(f"Cluster '{name}' is already up.")
        if [g.to_dict() for g in groups] != [g.to_dict() for g in state.node_groups]:
            err.print("note: it keeps its existing nodes; run `ckq dev down` first to change them.")
    else:
        out.print(f"Cluster '{name}' is up.")
    _print_usage(state)


def _print_usage(state: dc.ClusterState) -> None:
    out.print(f"  API server: {state.server}")
    for g in state.node_groups:
        out.print(f"  nodes: {g.describe()}")
    for n in state.real_nodes:
        out.print(f"  real node: {n.name} at {n.ip} (pods {n.subnet}; images {', '.join(dc.PRELOADED_IMAGES)})")
    out.print("Use it:")
    out.print(f"  export KUBECONFIG={state.kubeconfig}")
    out.print(f"  export PATH={state.bin_dir}:$PATH   # kubectl")
    out.print(f"  kubectl get nodes -L {dc.FLAVOR_LABEL},{dc.GPU_PRODUCT_LABEL}")
    out.print(f"Logs: {Path(state.root) / 'logs'}/<component>.log")
    flag = "" if state.name == dc.DEFAULT_CLUSTER_NAME else f" --name {state.name}"
    out.print(f"Stop: ckq dev down{flag}")


@app.command()
@_friendly
def down(name: NameOpt = dc.DEFAULT_CLUSTER_NAME) -> None:
    """Stop the processes `up` started (by recorded pid) and remove the cluster's state."""
    state = dc.down(name)
    if state is None:
        out.print(f"No cluster named '{name}'; nothing to stop.")
    else:
        out.print(f"Cluster '{name}' stopped ({len(state.processes)} processes) and its state removed.")


@app.command()
@_friendly
def status(name: NameOpt = dc.DEFAULT_CLUSTER_NAME) -> None:
    """Show components, their pids and logs, and nodes. Exit status 1 unless all is healthy."""
    state, comps = dc.status(name)
    if state is None:
        out.print(
            f"No cluster named '{name}'. Start one with: ckq dev up"
            + ("" if name == dc.DEFAULT_CLUSTER_NAME else f" --name {name}")
        )
        raise typer.Exit(1)
    table = Table(title=f"cluster '{name}' ({state.server})")
    for col in ("component", "pid", "state", "log"):
        table.add_column(col)
    for c in comps:
        table.add_row(
            c.name, str(c.pid), Text("running", "green") if c.alive else Text("dead", "red"), Path(c.log).name
        )
    out.print(table)
    out.print(f"logs: {Path(state.root) / 'logs'}")
    healthy = state.ready and all(c.alive for c in comps)
    for c in comps:
        if not c.alive:
            err.print(_styled("red", f"{c.name} is not running", f"; last lines of {c.log}:\n{c.log_tail()}"))
    if not state.ready:
        err.print("the cluster never finished starting (an `up` was interrupted?): run `ckq dev down`")
    if healthy:
        healthy = _print_nodes(state)
    raise typer.Exit(0 if healthy else 1)


def _print_nodes(state: dc.ClusterState) -> bool:
    from kubernetes import client

    from queue_controller.devcluster.kube import api_client
    from queue_controller.devcluster.nodes import node_is_ready

    try:
        with api_client(state.kubeconfig) as api:
            items = client.CoreV1Api(api).list_node(_request_timeout=5).items
    except Exception as exc:  # any API failure is reported as such; status must not crash
        err.print(_styled("red", "API server not answering: ", str(exc)))
        return False
    ready = sum(1 for n in items if node_is_ready(n))
    gpus = sum(int(((n.status and n.status.allocatable) or {}).get(dc.GPU_RESOURCE, 0)) for n in items)
    out.print(f"nodes: {ready}/{len(items)} Ready, {gpus} {dc.GPU_RESOURCE} allocatable")
    out.print(f"kubeconfig: {state.kubeconfig}")
    return True


@app.command()
@_friendly
def kubeconfig(name: NameOpt = dc.DEFAULT_CLUSTER_NAME) -> None:
    """Print the path of the cluster's kubeconfig: export KUBECONFIG=$(ckq dev kubeconfig)."""
    typer.echo(dc.load(name).kubeconfig)


@app.command()
@_friendly
def node(
    node_name: Annotated[str, typer.Argument(metavar="NODE", help="Node to act on, e.g. h100-0.")],
    name: NameOpt = dc.DEFAULT_CLUSTER_NAME,
    ready: Annotated[
        bool | None,
        typer.Option("--ready/--not-ready", help="Make the node Ready, or NotReady (simulated failure)."),
    ] = None,
    delete: Annotated[bool, typer.Option("--delete", help="Remove the node (machine gone).")] = False,
) -> None:
    """Simulate node failure: make a fake node NotReady, Ready again, or delete it."""
    if (ready is None) == (not delete):
        raise typer.BadParameter("give exactly one of --ready, --not-ready, --delete")
    kubeconfig_path = dc.load(name).kubeconfig
    if delete:
        dc.delete_node(kubeconfig_path, node_name)
        out.print(f"node {node_name} deleted")
    else:
        dc.set_node_ready(kubeconfig_path, node_name, bool(ready))
        out.print(f"node {node_name} is {'Ready' if ready else 'NotReady'}")


image_app = typer.Typer(help="Images on the real nodes (no registry: images are imported).", no_args_is_help=True)
app.add_typer(image_app, name="image")


@image_app.command("list")
@_friendly
def image_list() -> None:
    """The images ckq builds (building what is missing): reference and OCI archive, one per line."""
    for image in dc.all_images(log=lambda line: err.print(line)):
        out.print(f"{image.ref}\t{image.archive}")


@image_app.command("import")
@_friendly
def image_import(
    archive: Annotated[
        Path, typer.Argument(help="An OCI or docker image archive (.tar).", exists=True, dir_okay=False)
    ],
    name: NameOpt = dc.DEFAULT_CLUSTER_NAME,
) -> None:
    """Load an image archive into every real node of the cluster (use it with imagePullPolicy: IfNotPresent)."""
    state = dc.load(name)
    refs = dc.import_image(state, archive)
    out.print(f"imported {', '.join(refs) or archive.name} into {len(state.real_nodes)} real node(s)")

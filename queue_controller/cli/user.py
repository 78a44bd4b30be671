"""The user's commands, in the spirit of kueuectl: see the queue, find out why a job waits, and act on it.

    ckq get jobs|queues [-n NS | -A]     ckq describe job NAME      ckq pending CLUSTERQUEUE
    ckq suspend|resume JOB               ckq checkpoint JOB [--leave-running]      ckq top queues

The same commands are `kubectl ckq …` through the `kubectl-ckq` executable (a kubectl plugin is any
`kubectl-<name>` on PATH), which runs this module's `kubectl_app`. Every command takes `--kubeconfig`,
`--context` and, where it reads namespaced objects, `-n/--namespace` (default: the context's namespace)
and `-A/--all-namespaces`; listings take `-o table|json|yaml`.

Reading and writing is `cli/client.py`, the views and positions `cli/views.py`, drawing `cli/render.py`;
this module only wires them. A failure is one line on stderr naming the object, and exit status 1.
"""

from __future__ import annotations

import functools
import sys
import time
from collections.abc import Callable, Mapping
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console

from queue_controller.api import Checkpoint, CheckpointSpec, ObjectMeta
from queue_controller.api.common import API_VERSION, OwnerReference
from queue_controller.api.job import CheckpointableJob
from queue_controller.cli import render, views
from queue_controller.cli.client import (
    CHECKPOINTS,
    CLUSTER_QUEUES,
    JOBS,
    LOCAL_QUEUES,
    Client,
    Forbidden,
    Target,
    UserError,
)
from queue_controller.wire import ACTIVE_PHASES, ATTEMPT_LABEL, JOB_LABEL

F = TypeVar("F", bound=Callable[..., Any])
PIPE_WIDTH = 250

# ---- the options every command shares --------------------------------------------------------------

Kubeconfig = Annotated[str | None, typer.Option("--kubeconfig", help="Kubeconfig file (default: KUBECONFIG, "
                                                "then ~/.kube/config, then the in-cluster service account).")]
Context = Annotated[str | None, typer.Option("--context", help="Kubeconfig context (default: the current one).")]
Namespace = Annotated[str | None, typer.Option("--namespace", "-n",
                                               help="Namespace (default: the context's namespace, else default).")]
AllNamespaces = Annotated[bool, typer.Option("--all-namespaces", "-A", help="Every namespace.")]
Output = Annotated[render.Format, typer.Option("--output", "-o", help="table, json or yaml.")]


def _fail_cleanly(fn: F) -> F:
    """A `UserError` is one line on stderr and exit 1, never a traceback."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except UserError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(1) from None
    return wrapper  # type: ignore[return-value]


def _client(kubeconfig: str | None, context: str | None, namespace: str | None = None,
            all_namespaces: bool = False) -> Client:
    if namespace and all_namespaces:
        raise UserError("-n/--namespace and -A/--all-namespaces exclude each other")
    return Client(Target(kubeconfig, context, namespace, all_namespaces))


def _split(job: str, client: Client) -> tuple[str, str]:
    """`NAME` in the command's namespace, or `NAMESPACE/NAME`."""
    if "/" in job:
        ns, name = job.split("/", 1)
        return ns, name
    return client.namespace, job


def _queue_entries(client: Client, jobs: list[dict[str, Any]] | None = None) -> dict[str, views.QueueEntry]:
    """Positions and reasons of every waiting job, from every job, LocalQueue and ClusterQueue."""
    jobs = client.objects(JOBS) if jobs is None else jobs
    waiting = [j for j in jobs if views.is_waiting(j)]
    pcs = client.priority_classes() if any((j.get("spec") or {}).get("priorityClassName") for j in waiting) else {}
    labels = client.namespace_labels({str(j["metadata"].get("namespace")) for j in waiting})
    return views.queue_entries(jobs, client.objects(LOCAL_QUEUES), client.objects(CLUSTER_QUEUES), labels, pcs)


def _entries_or_none(client: Client, all_jobs: list[dict[str, Any]] | None) -> dict[str, views.QueueEntry] | None:
    """Positions need every namespace's jobs; without the right to list them, positions are unknown."""
    try:
        return _queue_entries(client, all_jobs)
    except Forbidden as e:
        typer.echo(f"warning: positions unknown ({e})", err=True)
        return None


def _console() -> Console:
    # Piped output is not folded at rich's 80-column default: grep and less see one row per line.
    return Console(highlight=False, width=None if sys.stdout.isatty() else PIPE_WIDTH)


# ---- ckq get ---------------------------------------------------------------------------------------

get_app = typer.Typer(help="List jobs or queues.", no_args_is_help=True)


@_fail_cleanly
def get_jobs(kubeconfig: Kubeconfig = None, context: Context = None, namespace: Namespace = None,
             all_namespaces: AllNamespaces = False, output: Output = render.Format.TABLE) -> None:
    """Jobs with their queue, phase, priority, position in the ClusterQueue, progress and checkpoints."""
    client = _client(kubeconfig, context, namespace, all_namespaces)
    all_jobs = None
    if all_namespaces:
        all_jobs = client.objects(JOBS)
        shown = all_jobs
    else:
        shown = client.objects(JOBS, client.namespace)
    entries = _entries_or_none(client, all_jobs) if any(views.is_waiting(j) for j in shown) else {}
    now = time.time()
    render.emit(_console(), views.job_rows(shown, entries, now, all_namespaces), output, render.jobs_table, now)


@_fail_cleanly
def get_queues(kubeconfig: Kubeconfig = None, context: Context = None, namespace: Namespace = None,
               all_namespaces: AllNamespaces = False, output: Output = render.Format.TABLE) -> None:
    """ClusterQueues and the LocalQueues of the namespace: pending, admitted, suspended, usage vs quota."""
    client = _client(kubeconfig, context, namespace, all_namespaces)
    lqs = client.objects(LOCAL_QUEUES, None if all_namespaces else client.namespace)
    now = time.time()
    render.emit(_console(), views.queues_view(client.objects(CLUSTER_QUEUES), lqs), output, render.queues_table, now)


for _name, _fn, _hidden in (("jobs", get_jobs, False), ("job", get_jobs, True), ("cjob", get_jobs, True),
                            ("queues", get_queues, False), ("queue", get_queues, True), ("cq", get_queues, True)):
    get_app.command(_name, hidden=_hidden)(_fn)


# ---- ckq describe ----------------------------------------------------------------------------------

describe_app = typer.Typer(help="Show one object in detail.", no_args_is_help=True)


@_fail_cleanly
def describe_job(name: Annotated[str, typer.Argument(help="The job: NAME or NAMESPACE/NAME.")],
                 kubeconfig: Kubeconfig = None, context: Context = None, namespace: Namespace = None,
                 output: Output = render.Format.TABLE) -> None:
    """A job's state, conditions, admission (queue, flavors, nodes), checkpoint history, and why it waits."""
    client = _client(kubeconfig, context, namespace)
    ns, job_name = _split(name, client)
    job = client.get(JOBS, job_name, ns)
    entries = _entries_or_none(client, None) if views.is_waiting(job) else {}
    view = views.describe_view(job, client.objects(CHECKPOINTS, ns), entries, client.job_events(ns, job_name),
                               time.time())
    render.emit(_console(), view, output, render.describe_text, time.time())


describe_app.command("job")(describe_job)
describe_app.command("cjob", hidden=True)(describe_job)


# ---- ckq pending -----------------------------------------------------------------------------------

@_fail_cleanly
def pending(cluster_queue: Annotated[str, typer.Argument(metavar="CLUSTERQUEUE", help="The ClusterQueue.")],
            kubeconfig: Kubeconfig = None, context: Context = None, output: Output = render.Format.TABLE) -> None:
    """A ClusterQueue's pending jobs in the order it will admit them, each with why it waits."""
    client = _client(kubeconfig, context)
    cq = client.get(CLUSTER_QUEUES, cluster_queue)
    jobs = client.objects(JOBS)
    view = views.pending_view(cq, jobs, _queue_entries(client, jobs))
    render.emit(_console(), view, output, render.pending_table, time.time())


# ---- ckq suspend / resume / checkpoint -------------------------------------------------------------

def _set_suspend(job: str, kubeconfig: str | None, context: str | None, namespace: str | None, value: bool) -> None:
    client = _client(kubeconfig, context, namespace)
    ns, name = _split(job, client)
    current = client.get(JOBS, name, ns)
    if bool((current.get("spec") or {}).get("suspend")) == value:
        typer.echo(f"job {ns}/{name} is already {'suspended' if value else 'not suspended'}")
        return
    client.patch_job(ns, name, {"spec": {"suspend": value}})
    if value and (current.get("status") or {}).get("phase") in ACTIVE_PHASES:
        typer.echo(f"job {ns}/{name} suspended: it is checkpointed (stopped, if not checkpointable) and "
                   "releases its resources")
    elif value:
        typer.echo(f"job {ns}/{name} suspended: it leaves the queue until resumed")
    else:
        typer.echo(f"job {ns}/{name} resumed: it queues again (from its last checkpoint, if it has one)")


@_fail_cleanly
def suspend(job: Annotated[str, typer.Argument(help="The job: NAME or NAMESPACE/NAME.")],
            kubeconfig: Kubeconfig = None, context: Context = None, namespace: Namespace = None) -> None:
    """Suspend a job (spec.suspend=true): a running one is checkpointed and gives its resources back."""
    _set_suspend(job, kubeconfig, context, namespace, True)


@_fail_cleanly
def resume(job: Annotated[str, typer.Argument(help="The job: NAME or NAMESPACE/NAME.")],
           kubeconfig: Kubeconfig = None, context: Context = None, namespace: Namespace = None) -> None:
    """Resume a suspended job (spec.suspend=false): it queues again and restores from its checkpoint."""
    _set_suspend(job, kubeconfig, context, namespace, False)


def checkpoint_body(job: Mapping[str, Any], leave_running: bool) -> dict[str, Any]:
    """A user's Checkpoint of `job`: reason User, owned by the job (garbage-collected with it) and labelled
    as the controller labels its own, so `kubectl get ckpt -l ckq.io/job-name=…` finds it. The API server
    picks the name's suffix; the controller begins it on its next cycle."""
    meta = job.get("metadata") or {}
    name = str(meta["name"])
    owner = OwnerReference(api_version=API_VERSION, kind=CheckpointableJob.KIND, name=name, uid=str(meta["uid"]),
                           controller=True, block_owner_deletion=True)
    attempt = int((job.get("status") or {}).get("attempt") or 0)
    return Checkpoint(
        metadata=ObjectMeta(generate_name=f"{name[:200]}-user-", namespace=meta.get("namespace"),
                            labels={JOB_LABEL: name, ATTEMPT_LABEL: str(attempt)}, owner_references=[owner]),
        spec=CheckpointSpec(job_name=name, reason="User", leave_running=leave_running),
    ).to_wire()


@_fail_cleanly
def checkpoint(job: Annotated[str, typer.Argument(help="The job: NAME or NAMESPACE/NAME.")],
               leave_running: Annotated[bool, typer.Option("--leave-running", help="Keep the job running after "
                                                           "the dump (default: it stops and is suspended).")] = False,
               kubeconfig: Kubeconfig = None, context: Context = None, namespace: Namespace = None) -> None:
    """Checkpoint a running job now (a Checkpoint with reason User); prints the Checkpoint's name."""
    client = _client(kubeconfig, context, namespace)
    ns, name = _split(job, client)
    current = client.get(JOBS, name, ns)
    refusal = views.can_checkpoint(current)
    if refusal is not None:
        raise UserError(refusal)
    created = client.create_checkpoint(ns, checkpoint_body(current, leave_running))
    after = "keeps running" if leave_running else "is suspended when it completes (`ckq resume` to run it again)"
    typer.echo(f"checkpoint {ns}/{created['metadata']['name']} created: the job {after}")


# ---- ckq top ---------------------------------------------------------------------------------------

top_app = typer.Typer(help="Resource usage.", no_args_is_help=True)


@_fail_cleanly
def top_queues(kubeconfig: Kubeconfig = None, context: Context = None, output: Output = render.Format.TABLE) -> None:
    """Per ClusterQueue, flavor and resource: usage against nominal quota, borrowed, lent, limits."""
    client = _client(kubeconfig, context)
    now = time.time()
    render.emit(_console(), views.top_view(client.objects(CLUSTER_QUEUES)), output, render.top_table, now)


top_app.command("queues")(top_queues)
top_app.command("cq", hidden=True)(top_queues)


# ---- registration ----------------------------------------------------------------------------------

def register(app: typer.Typer) -> None:
    """Add the user commands to `app` (the `ckq` app, or the kubectl plugin's)."""
    app.add_typer(get_app, name="get")
    app.add_typer(describe_app, name="describe")
    app.command(name="pending")(pending)
    app.command(name="suspend")(suspend)
    app.command(name="resume")(resume)
    app.command(name="checkpoint")(checkpoint)
    app.add_typer(top_app, name="top")


kubectl_app = typer.Typer(
    name="kubectl ckq",
    help="ckq's user commands as a kubectl plugin: jobs, queues, pending order, suspend/resume, checkpoints.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
)
register(kubectl_app)


def kubectl_main() -> None:
    """`kubectl-ckq`: kubectl runs it for `kubectl ckq …`."""
    kubectl_app(prog_name="kubectl ckq")

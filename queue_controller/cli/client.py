"""The user commands' one door to the API server: what `ckq get|describe|pending|top|suspend|resume|
checkpoint` read and write, and nothing else.

Everything comes back as plain dicts (the objects as the API server sends them), so the views and
tables (`cli/views.py`, `cli/render.py`) are tested without a cluster. Every failure becomes a
`UserError` whose one-line message names the object, the namespace or the server and kubeconfig, the
way kubectl words it; the commands print it and exit non-zero, never with a stack trace.

Synchronous and short-lived (one command, a handful of requests), so it uses the official client's
generic `CustomObjectsApi` rather than the controller's async writer.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from kubernetes import client as k8s_client
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from queue_controller.api.common import GROUP, VERSION

JOBS, CHECKPOINTS, LOCAL_QUEUES, CLUSTER_QUEUES = "checkpointablejobs", "checkpoints", "localqueues", "clusterqueues"
# What each plural is called in a message (kubectl's singular names).
_SINGULAR = {JOBS: "job", CHECKPOINTS: "checkpoint", LOCAL_QUEUES: "LocalQueue", CLUSTER_QUEUES: "ClusterQueue"}
REQUEST_TIMEOUT_S = 15.0


class UserError(Exception):
    """A failure a user can act on, as one line (no traceback)."""


class Forbidden(UserError):
    """The API server refused the request for this user (401/403): RBAC, or bad credentials."""


@dataclass(frozen=True, slots=True)
class Target:
    """Where the commands talk to: `--kubeconfig` / `--context` and the namespace flags."""

    kubeconfig: str | None = None
    context: str | None = None
    namespace: str | None = None
    all_namespaces: bool = False


def _kubeconfig_files(kubeconfig: str | None) -> str:
    """The kubeconfig as a message names it (an explicit flag, else KUBECONFIG, else the default)."""
    return kubeconfig or os.environ.get("KUBECONFIG") or "~/.kube/config"


class Client:
    """Reads and writes the ckq.io objects, namespaces, PriorityClasses and Events for one command."""

    def __init__(self, target: Target) -> None:
        self.target = target
        cfg = k8s_client.Configuration()
        self.source = _kubeconfig_files(target.kubeconfig)
        self.in_cluster = False
        default_ns = "default"
        try:
            k8s_config.load_kube_config(  # type: ignore[no-untyped-call]  # the kubernetes package is untyped
                config_file=target.kubeconfig, context=target.context, client_configuration=cfg)
            _, active = k8s_config.list_kube_config_contexts(config_file=target.kubeconfig)  # type: ignore[no-untyped-call]
            if target.context:
                contexts, _ = k8s_config.list_kube_config_contexts(config_file=target.kubeconfig)  # type: ignore[no-untyped-call]
                active = next((c for c in contexts if c.get("name") == target.context), active)
            default_ns = ((active or {}).get("context") or {}).get("namespace") or "default"
        except (k8s_config.ConfigException, FileNotFoundError, TypeError, OSError) as e:
            if target.kubeconfig or target.context or os.environ.get("KUBECONFIG"):
                raise UserError(f"cannot load kubeconfig {self.source}"
                                + (f" (context {target.context!r})" if target.context else "") + f": {e}") from None
            try:
                k8s_config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
            except k8s_config.ConfigException:
                raise UserError(f"no kubeconfig at {self.source} and not running in a cluster: pass "
                                "--kubeconfig or set KUBECONFIG") from None
            self.in_cluster = True
            self.source = "the in-cluster service account"
            default_ns = _in_cluster_namespace()
        # A dead server is reported at once, in one line: no urllib3 retries, and none of its warnings.
        cfg.retries = 0
        logging.getLogger("urllib3").setLevel(logging.ERROR)
        self.server = str(cfg.host)
        self.namespace = target.namespace or default_ns
        self.api = k8s_client.ApiClient(cfg)
        self.custom = k8s_client.CustomObjectsApi(self.api)
        self.core = k8s_client.CoreV1Api(self.api)
        self.scheduling = k8s_client.SchedulingV1Api(self.api)

    # ---- error translation ------------------------------------------------------------------------

    @contextmanager
    def _call(self, what: str, missing: str | None = None) -> Iterator[None]:
        """Turn the client's exceptions into one `UserError` line. `what`: the request in words (for a
        refusal); `missing`: the message when the object is not found."""
        try:
            yield
        except ApiException as e:
            raise (Forbidden if e.status in (401, 403) else UserError)(self._api_message(e, what, missing)) from None
        except (HTTPError, OSError) as e:
            raise UserError(f"cannot reach the API server {self.server} (kubeconfig {self.source}"
                            + (f", context {self.target.context}" if self.target.context else "")
                            + f"): {_root_cause(e)}") from None

    def _api_message(self, e: ApiException, what: str, missing: str | None) -> str:
        if e.status == 404:
            details = _body(e).get("details") or {}
            if missing is not None and details.get("name"):
                return missing
            if missing is not None and not details:
                # No details: the resource type itself is unknown, i.e. the CRDs are not installed.
                return f"the {GROUP} CRDs are not installed on {self.server} (kubectl apply -f crds/)"
            return missing or f"not found: {what}"
        if e.status in (401, 403):
            return f"forbidden: cannot {what} ({_body(e).get('message') or e.reason})"
        return f"cannot {what}: {_body(e).get('message') or e.reason} (HTTP {e.status})"

    # ---- reads ------------------------------------------------------------------------------------

    def objects(self, plural: str, namespace: str | None = None) -> list[dict[str, Any]]:
        """Objects of a ckq.io kind: in `namespace`, or everywhere (None), or cluster-scoped ones."""
        where = f"in namespace {namespace}" if namespace else "in all namespaces"
        with self._call(f"list {plural} {where}", missing=""):
            if plural == CLUSTER_QUEUES:
                out = self.custom.list_cluster_custom_object(GROUP, VERSION, plural,
                                                             _request_timeout=REQUEST_TIMEOUT_S)
            elif namespace:
                out = self.custom.list_namespaced_custom_object(GROUP, VERSION, namespace, plural,
                                                                _request_timeout=REQUEST_TIMEOUT_S)
            else:
                out = self.custom.list_cluster_custom_object(GROUP, VERSION, plural,
                                                             _request_timeout=REQUEST_TIMEOUT_S)
        return list(_as_dict(out).get("items") or [])

    def get(self, plural: str, name: str, namespace: str | None = None) -> dict[str, Any]:
        """One object; `UserError("job team-a/x not found")` when it does not exist."""
        kind = _SINGULAR[plural]
        missing = f"{kind} {namespace}/{name} not found" if namespace else f'no {kind} "{name}"'
        with self._call(f"get {kind} {namespace + '/' if namespace else ''}{name}", missing):
            if namespace:
                out = self.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, plural, name,
                                                               _request_timeout=REQUEST_TIMEOUT_S)
            else:
                out = self.custom.get_cluster_custom_object(GROUP, VERSION, plural, name,
                                                            _request_timeout=REQUEST_TIMEOUT_S)
        return _as_dict(out)

    def namespace_labels(self, names: set[str]) -> dict[str, dict[str, str]]:
        """Labels of each namespace; one we may not read gets only its `kubernetes.io/metadata.name`,
        which the API server sets on every namespace (the controller's fallback too)."""
        out: dict[str, dict[str, str]] = {}
        if len(names) > 1:  # one list beats a get per namespace, where the user may list them
            try:
                with self._call("list namespaces"):
                    listed = self.core.list_namespace(_request_timeout=REQUEST_TIMEOUT_S).items
                for ns in listed:
                    if ns.metadata is not None and ns.metadata.name in names:
                        out[str(ns.metadata.name)] = dict(ns.metadata.labels or {})
            except UserError:
                pass
        for name in sorted(names - set(out)):
            try:
                with self._call(f"get namespace {name}"):
                    ns = self.core.read_namespace(name, _request_timeout=REQUEST_TIMEOUT_S)
                out[name] = dict((ns.metadata.labels if ns.metadata else None) or {})
            except UserError:
                out[name] = {"kubernetes.io/metadata.name": name}
        return out

    def priority_classes(self) -> dict[str, int] | None:
        """PriorityClass name -> value; None when the user may not list them."""
        try:
            with self._call("list priorityclasses"):
                items = self.scheduling.list_priority_class(_request_timeout=REQUEST_TIMEOUT_S).items
        except UserError:
            return None
        return {str(pc.metadata.name): int(pc.value or 0) for pc in items if pc.metadata is not None}

    def job_events(self, namespace: str, name: str) -> list[dict[str, Any]]:
        """The Events the controller recorded on a job (best effort: [] when not readable)."""
        selector = f"involvedObject.name={name},involvedObject.kind=CheckpointableJob"
        try:
            with self._call(f"list events in namespace {namespace}"):
                items = self.core.list_namespaced_event(namespace, field_selector=selector,
                                                        _request_timeout=REQUEST_TIMEOUT_S).items
        except UserError:
            return []
        return [_as_dict(self.api.sanitize_for_serialization(e)) for e in items]  # type: ignore[no-untyped-call]

    # ---- writes -----------------------------------------------------------------------------------

    def patch_job(self, namespace: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        with self._call(f"patch job {namespace}/{name}", f"job {namespace}/{name} not found"):
            out = self.custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, JOBS, name, body,
                                                             _request_timeout=REQUEST_TIMEOUT_S)
        return _as_dict(out)

    def create_checkpoint(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        job = (body.get("spec") or {}).get("jobName")
        with self._call(f"create a checkpoint of job {namespace}/{job}", f"job {namespace}/{job} not found"):
            out = self.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, CHECKPOINTS, body,
                                                              _request_timeout=REQUEST_TIMEOUT_S)
        return _as_dict(out)


def _as_dict(value: object) -> dict[str, Any]:
    """A response body as a dict (the generic client returns JSON objects, typed as `object`)."""
    return dict(value) if isinstance(value, dict) else {}


def _in_cluster_namespace() -> str:
    try:
        with open("/var/run/secrets/kubernetes.io/serviceaccount/namespace") as f:
            return f.read().strip() or "default"
    except OSError:
        return "default"


def _body(e: ApiException) -> dict[str, Any]:
    import json

    try:
        body = json.loads(e.body or "{}")
    except (TypeError, ValueError):
        return {}
    return body if isinstance(body, dict) else {}


def _root_cause(e: BaseException) -> str:
    """The innermost reason of a urllib3 failure ("Connection refused"), not its retry wrapper."""
    seen = e
    while True:
        inner = getattr(seen, "reason", None) or seen.__cause__ or seen.__context__
        if not isinstance(inner, BaseException) or inner is seen:
            break
        seen = inner
    text = str(seen)
    # urllib3 prefixes its own object repr: keep the part after the last ": ".
    return text.rsplit("]", 1)[-1].split(": ", 1)[-1].strip() or type(seen).__name__

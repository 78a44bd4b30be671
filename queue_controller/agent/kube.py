"""The node agent's API server access: the `kubernetes` client, synchronous, raw JSON dicts.

`KubeApi` is the real one; the agent only uses the `AgentKube` protocol, so tests pass a fake. Errors
are sorted into Conflict (409: read again and re-apply), NotFound (404), Transient (connection
failures, timeouts, 429 and 5xx: retry with backoff) and anything else (a refusal: give up, say why).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from queue_controller import wire
from queue_controller.api.checkpoint import Checkpoint
from queue_controller.api.common import GROUP, VERSION

Obj = dict[str, Any]
Event = tuple[str, Obj]  # (ADDED | MODIFIED | DELETED | BOOKMARK, object)


class Conflict(Exception):
    """409: the object changed since it was read."""


class NotFound(Exception):
    """404."""


class Gone(Exception):
    """410: the watch's resourceVersion is too old; list again."""


class Transient(Exception):
    """The API server is unreachable or overloaded for now; retry later."""


class AgentKube(Protocol):
    def list_checkpoints(self) -> tuple[list[Obj], str]: ...
    def watch_checkpoints(self, resource_version: str, timeout: int) -> Iterator[Event]: ...
    def list_node_pods(self, node: str) -> tuple[list[Obj], str]: ...
    def watch_node_pods(self, node: str, resource_version: str, timeout: int) -> Iterator[Event]: ...
    def list_job_pods(self, namespace: str, job: str) -> list[Obj]: ...
    def get_checkpoint(self, namespace: str, name: str) -> Obj: ...
    def replace_checkpoint_status(self, namespace: str, name: str, body: Obj) -> Obj: ...
    def get_node(self, name: str) -> Obj: ...
    def create_event(self, namespace: str, body: Obj) -> Obj: ...


def node_pods_selector(node: str) -> tuple[str, str]:
    """(field selector, label selector) of the controller's pods on one node."""
    return f"spec.nodeName={node}", f"{wire.MANAGED_LABEL}=true"


class KubeApi:
    """AgentKube over the `kubernetes` package (thread-safe: one ApiClient, urllib3's pool)."""

    def __init__(self, cfg: Any) -> None:
        from kubernetes import client as k8s

        cfg.retries = False  # we retry ourselves, with backoff and one log line
        self.api = k8s.ApiClient(cfg)
        self.core = k8s.CoreV1Api(self.api)
        self.custom = k8s.CustomObjectsApi(self.api)
        self._api_exception = k8s.ApiException

    def close(self) -> None:
        self.api.close()  # type: ignore[no-untyped-call]

    # ---- error mapping ----------------------------------------------------------------------------
    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except self._api_exception as exc:
            raise self._map(exc) from None
        except Exception as exc:  # urllib3 and socket errors: the server is not reachable now
            if _is_transport(exc):
                raise Transient(f"{type(exc).__name__}: {exc}") from None
            raise

    def _map(self, exc: Any) -> Exception:
        status = int(getattr(exc, "status", 0) or 0)
        reason = getattr(exc, "reason", "") or ""
        detail = _message(getattr(exc, "body", None)) or reason
        if status == 409:
            return Conflict(detail)
        if status == 404:
            return NotFound(detail)
        if status == 410:
            return Gone(detail)
        if status == 0 or status == 429 or status >= 500:
            return Transient(f"{status or ''} {detail}".strip())
        return RuntimeError(f"the API server refused the request ({status} {detail})")

    def _json(self, fn: Any, *args: Any, **kwargs: Any) -> Obj:
        resp = self._call(fn, *args, _preload_content=False, _request_timeout=30, **kwargs)
        data: Obj = json.loads(resp.data)
        return data

    def _watch(self, fn: Any, resource_version: str, timeout: int, **kwargs: Any) -> Iterator[Event]:
        from kubernetes import watch

        w = watch.Watch()  # type: ignore[no-untyped-call]
        try:
            stream = w.stream(  # type: ignore[no-untyped-call]
                fn, resource_version=resource_version, timeout_seconds=timeout, allow_watch_bookmarks=True,
                _request_timeout=timeout + 30, **kwargs)
            while True:
                try:
                    event = next(stream)
                except StopIteration:
                    return
                except self._api_exception as exc:
                    raise self._map(exc) from None
                except Exception as exc:
                    if _is_transport(exc):
                        raise Transient(f"watch: {type(exc).__name__}: {exc}") from None
                    raise
                if not isinstance(event, dict):
                    continue
                yield str(event.get("type")), event.get("raw_object") or {}
        finally:
            w.stop()  # type: ignore[no-untyped-call]

    # ---- AgentKube --------------------------------------------------------------------------------
    def list_checkpoints(self) -> tuple[list[Obj], str]:
        data = self._json(self.custom.list_cluster_custom_object, GROUP, VERSION, Checkpoint.PLURAL)
        return list(data.get("items") or []), str((data.get("metadata") or {}).get("resourceVersion") or "")

    def watch_checkpoints(self, resource_version: str, timeout: int) -> Iterator[Event]:
        return self._watch(self.custom.list_cluster_custom_object, resource_version, timeout,
                           group=GROUP, version=VERSION, plural=Checkpoint.PLURAL)

    def list_node_pods(self, node: str) -> tuple[list[Obj], str]:
        field, label = node_pods_selector(node)
        data = self._json(self.core.list_pod_for_all_namespaces, field_selector=field, label_selector=label)
        return list(data.get("items") or []), str((data.get("metadata") or {}).get("resourceVersion") or "")

    def watch_node_pods(self, node: str, resource_version: str, timeout: int) -> Iterator[Event]:
        field, label = node_pods_selector(node)
        return self._watch(self.core.list_pod_for_all_namespaces, resource_version, timeout,
                           field_selector=field, label_selector=label)

    def list_job_pods(self, namespace: str, job: str) -> list[Obj]:
        data = self._json(self.core.list_namespaced_pod, namespace,
                          label_selector=f"{wire.JOB_LABEL}={job},{wire.MANAGED_LABEL}=true")
        return list(data.get("items") or [])

    def get_checkpoint(self, namespace: str, name: str) -> Obj:
        return self._json(self.custom.get_namespaced_custom_object, GROUP, VERSION, namespace, Checkpoint.PLURAL,
                          name)

    def replace_checkpoint_status(self, namespace: str, name: str, body: Obj) -> Obj:
        return self._json(self.custom.replace_namespaced_custom_object_status, GROUP, VERSION, namespace,
                          Checkpoint.PLURAL, name, body)

    def get_node(self, name: str) -> Obj:
        return self._json(self.core.read_node, name)

    def get_config_map(self, namespace: str, name: str) -> Obj:
        return self._json(self.core.read_namespaced_config_map, name, namespace)

    def create_event(self, namespace: str, body: Obj) -> Obj:
        return self._json(self.core.create_namespaced_event, namespace, body)


def _message(body: Any) -> str:
    if not body:
        return ""
    try:
        data = json.loads(body)
    except (TypeError, ValueError):
        return str(body)[:300]
    return str(data.get("message") or "")[:300] if isinstance(data, dict) else ""


def _is_transport(exc: BaseException) -> bool:
    import urllib3.exceptions

    return isinstance(exc, urllib3.exceptions.HTTPError | OSError | TimeoutError)


class StartupError(RuntimeError):
    """The agent cannot start; the message is the one line the user sees."""


@dataclass
class Preflight:
    kube: KubeApi
    host: str
    store_host_path: str | None  # the ConfigMap's storeHostPath, None without the ConfigMap
    config: dict[str, str] = field(default_factory=dict)  # the ConfigMap's data ({} without it)
    node: Obj = field(default_factory=dict)  # this node, as read at start


def preflight(kubeconfig: str | None, node: str) -> Preflight:
    """Configuration, API server, CRDs, this node and the cluster's ckq-config, checked in that order."""
    from kubernetes import client as k8s
    from kubernetes.config import ConfigException

    from queue_controller.operator.kube import load_configuration

    try:
        cfg = load_configuration(kubeconfig)
    except (ConfigException, FileNotFoundError, TypeError) as exc:
        raise StartupError(f"no usable Kubernetes configuration ({exc}): pass --kubeconfig, set KUBECONFIG, "
                           "or run in a pod with a service account") from None
    kube = KubeApi(cfg)
    try:
        try:
            k8s.VersionApi(kube.api).get_code(_request_timeout=10)
        except Exception as exc:
            raise StartupError(f"cannot reach the API server at {cfg.host}: {exc}") from None
        try:
            kube._json(kube.custom.list_cluster_custom_object, GROUP, VERSION, Checkpoint.PLURAL, limit=1)
        except NotFound:
            raise StartupError("the ckq.io CRDs are not installed in this cluster: kubectl apply -f crds/") from None
        except Exception as exc:
            raise StartupError(f"cannot list Checkpoints ({exc}): check the agent's RBAC") from None
        try:
            node_obj = kube.get_node(node)
        except NotFound:
            raise StartupError(f"node {node!r} does not exist in this cluster (--node)") from None
        except Exception as exc:
            raise StartupError(f"cannot read node {node!r} ({exc}): check the agent's RBAC") from None
        try:
            cm = kube.get_config_map(wire.CONFIG_NAMESPACE, wire.CONFIG_MAP)
            config = {str(k): str(v) for k, v in (cm.get("data") or {}).items()}
            store = (config.get(wire.CONFIG_STORE_HOST_PATH) or "").strip() or None
        except NotFound:
            store, config = None, {}
        except Exception as exc:
            raise StartupError(f"cannot read ConfigMap {wire.CONFIG_NAMESPACE}/{wire.CONFIG_MAP} ({exc}): "
                               "check the agent's RBAC") from None
    except BaseException:
        kube.close()
        raise
    return Preflight(kube=kube, host=str(cfg.host), store_host_path=store, config=config, node=node_obj)

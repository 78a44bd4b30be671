"""The controller's writer: raw JSON over one aiohttp session, configured from the kubeconfig (or the
in-cluster service account) by the official `kubernetes` library.

Why not the generated clients: the scheduling loop only sends small JSON documents (pods, merge patches
of status) and reads none of the responses' models; skipping model (de)serialisation keeps a write cheap
and the controller's memory small (see docs/controller.md).
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config

from queue_controller.api.common import GROUP, VERSION, KubeObject
from queue_controller.operator.metrics import API_REQUESTS

RETRY_DELAYS = (0.2, 0.5, 1.0, 2.0, 4.0, 8.0)
LIST_PAGE = 500  # objects per page of a LIST (client-go's pager uses 500 too)


class ApiError(Exception):
    def __init__(self, status: int, reason: str, body: Mapping[str, Any] | None = None) -> None:
        self.status = status
        self.reason = reason
        self.body = dict(body or {})
        self.retry_after: float | None = None
        message = self.body.get("message") or reason
        super().__init__(f"{status} {message}")

    @property
    def message(self) -> str:
        return str(self.body.get("message") or self.reason)


def load_configuration(kubeconfig: str | None = None, context: str | None = None) -> k8s_client.Configuration:
    cfg = k8s_client.Configuration()
    try:
        k8s_config.load_kube_config(  # type: ignore[no-untyped-call]  # the kubernetes package is untyped
            config_file=kubeconfig, context=context, client_configuration=cfg)
    except (k8s_config.ConfigException, FileNotFoundError, TypeError):
        if kubeconfig:
            raise
        k8s_config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
    return cfg


class Kube:
    """Thin async REST client. Counts requests so benchmarks can report API calls per admission."""

    def __init__(self, cfg: k8s_client.Configuration) -> None:
        self.host = cfg.host.rstrip("/")
        ctx = ssl.create_default_context(cafile=cfg.ssl_ca_cert) if cfg.ssl_ca_cert else ssl.create_default_context()
        if cfg.cert_file and cfg.key_file:
            ctx.load_cert_chain(cfg.cert_file, cfg.key_file)
        if not cfg.verify_ssl:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        self._ssl = ctx
        self._headers = {"Accept": "application/json"}
        token = cfg.api_key.get("authorization") or cfg.api_key.get("BearerToken")
        if token:
            prefix = cfg.api_key_prefix.get("authorization", "")
            self._headers["Authorization"] = f"{prefix} {token}".strip()
        self._session: aiohttp.ClientSession | None = None
        self.requests = 0

    async def _sess(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self._ssl, limit=64),
                timeout=aiohttp.ClientTimeout(total=60),
                headers=self._headers,
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def request(self, method: str, path: str, body: Any = None, content_type: str = "application/json",
                      params: Mapping[str, str] | None = None) -> dict[str, Any]:
        """One API call, retried with backoff on throttling (429), server errors and dropped connections,
        as client-go does; any other error is raised as ApiError."""
        delays = RETRY_DELAYS
        for attempt in range(len(delays) + 1):
            try:
                return await self._request_once(method, path, body, content_type, params)
            except ApiError as e:
                if e.status not in (429, 500, 502, 503, 504) or attempt == len(delays):
                    raise
                retry_after = e.retry_after
            except (aiohttp.ClientConnectionError, TimeoutError):
                if attempt == len(delays):
                    raise
                retry_after = None
            await asyncio.sleep(retry_after if retry_after is not None else delays[attempt])
        raise AssertionError("unreachable")

    async def _request_once(self, method: str, path: str, body: Any, content_type: str,
                            params: Mapping[str, str] | None) -> dict[str, Any]:
        sess = await self._sess()
        self.requests += 1
        API_REQUESTS.labels(method).inc()
        data = None if body is None else json.dumps(body)
        headers = {"Content-Type": content_type} if data is not None else {}
        async with sess.request(method, self.host + path, data=data, headers=headers, params=params) as resp:
            text = await resp.text()
            payload: dict[str, Any] = {}
            if text:
                try:
                    payload = json.loads(text)
                except ValueError:
                    payload = {"message": text[:500]}
            if resp.status >= 400:
                err = ApiError(resp.status, resp.reason or "", payload)
                ra = resp.headers.get("Retry-After")
                err.retry_after = min(float(ra), 10.0) if ra and ra.isdigit() else None
                raise err
            return payload

    # ---- paths ------------------------------------------------------------------------------------

    @staticmethod
    def path(kind: type[KubeObject], namespace: str | None = None, name: str | None = None,
             subresource: str | None = None) -> str:
        """The path of a ckq.io kind's collection or object, from the model's PLURAL."""
        return _path(f"/apis/{GROUP}/{VERSION}", kind.PLURAL, namespace, name, subresource)

    @staticmethod
    def core_path(plural: str, namespace: str | None = None, name: str | None = None) -> str:
        """The path of a core/v1 collection or object (pods, events, nodes)."""
        return _path("/api/v1", plural, namespace, name, None)

    async def list_pages(self, path: str, limit: int | None = None) -> AsyncIterator[dict[str, Any]]:
        """A LIST in pages of `limit` objects (`limit` / `continue`, one consistent snapshot): at 15,000
        jobs one unpaged LIST is ~120 MB of JSON, decoded whole at once, and it set the controller's peak
        memory. Each page carries the list's `resourceVersion`."""
        limit = limit or LIST_PAGE
        params: dict[str, str] = {"limit": str(limit)}
        while True:
            page = await self.request("GET", path, params=params)
            yield page
            token = (page.get("metadata") or {}).get("continue")
            if not token:
                return
            params = {"limit": str(limit), "continue": token}

    async def merge_patch(self, path: str, patch: Mapping[str, Any]) -> dict[str, Any]:
        return await self.request("PATCH", path, patch, "application/merge-patch+json")

    async def patch_status(self, kind: type[KubeObject], namespace: str | None, name: str,
                           status: Mapping[str, Any]) -> dict[str, Any]:
        """Merge `status` into the object's status subresource (a None value deletes a field)."""
        return await self.merge_patch(self.path(kind, namespace, name, "status"), {"status": status})

    async def create(self, path: str, body: Mapping[str, Any]) -> dict[str, Any] | None:
        """POST; an object that already exists is not an error (idempotent actuators) and gives None."""
        try:
            return await self.request("POST", path, body)
        except ApiError as e:
            if e.status == 409:
                return None
            raise

    async def delete(self, path: str, grace_seconds: int | None = None) -> None:
        """DELETE; an object already gone is not an error."""
        body = None if grace_seconds is None else {"gracePeriodSeconds": grace_seconds,
                                                    "propagationPolicy": "Background"}
        try:
            await self.request("DELETE", path, body)
        except ApiError as e:
            if e.status != 404:
                raise


def _path(prefix: str, plural: str, namespace: str | None, name: str | None, subresource: str | None) -> str:
    path = prefix
    if namespace:
        path += f"/namespaces/{namespace}"
    path += f"/{plural}"
    if name:
        path += f"/{name}"
    if subresource:
        path += f"/{subresource}"
    return path

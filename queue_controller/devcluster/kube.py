"""Kubernetes API clients bound to one kubeconfig file (never the process-wide default config)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from kubernetes import client, config


def new_api_client(kubeconfig: str) -> client.ApiClient:
    api: client.ApiClient = config.new_client_from_config(config_file=kubeconfig)  # type: ignore[no-untyped-call]
    return api


@contextlib.contextmanager
def api_client(kubeconfig: str) -> Iterator[client.ApiClient]:
    api = new_api_client(kubeconfig)
    try:
        yield api
    finally:
        api.close()  # type: ignore[no-untyped-call]

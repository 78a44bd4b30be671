"""`ckq controller` refuses to start with one clear sentence, not a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from queue_controller.cli import app

pytestmark = pytest.mark.unit


def test_unreachable_api_server_is_a_clear_error(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "config"
    kubeconfig.write_text("""apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:1", insecure-skip-tls-verify: true}}]
users: [{name: u, user: {token: t}}]
contexts: [{name: x, context: {cluster: c, user: u}}]
current-context: x
""")
    result = CliRunner().invoke(app, ["controller", "--kubeconfig", str(kubeconfig), "--metrics-port", "0",
                                      "--liveness-port", "0"])
    assert result.exit_code == 2
    assert "cannot reach the API server at https://127.0.0.1:1" in result.output
    assert "Traceback" not in result.output


def test_missing_kubeconfig_and_unknown_policy_are_clear_errors(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["controller", "--kubeconfig", str(tmp_path / "nope")])
    assert result.exit_code == 2 and "Traceback" not in result.output
    bad = CliRunner().invoke(app, ["controller", "--policy", "nonsense"])
    assert bad.exit_code == 2 and "unknown policy 'nonsense'" in bad.output


def test_kopf_logs_in_with_the_configuration_the_controller_loaded() -> None:
    """`--kubeconfig F` applies to kopf's watches too, not only to the controller's own writes."""
    from kubernetes.client import Configuration

    from queue_controller.operator.main import connection_info

    cfg = Configuration()
    cfg.host = "https://127.0.0.1:6443"
    cfg.ssl_ca_cert, cfg.cert_file, cfg.key_file = "/tmp/ca.crt", "/tmp/c.crt", "/tmp/c.key"
    info = connection_info(cfg)
    assert (info.server, info.ca_path, info.certificate_path, info.private_key_path, info.insecure, info.token) == (
        "https://127.0.0.1:6443", "/tmp/ca.crt", "/tmp/c.crt", "/tmp/c.key", False, None)
    cfg = Configuration()
    cfg.host = "https://kubernetes.default.svc"
    cfg.api_key = {"authorization": "Bearer abc.def"}
    cfg.verify_ssl = False
    info = connection_info(cfg)
    assert (info.scheme, info.token, info.insecure, info.certificate_path) == ("Bearer", "abc.def", True, None)


def test_kopf_logs_in_with_a_token_kubeconfig_and_in_cluster(tmp_path: Path) -> None:
    """A token from a kubeconfig (a ServiceAccount's, as the Helm tests use) or from the in-cluster
    service account reaches kopf: the kubernetes client keeps it under "BearerToken", and kopf once
    watched anonymously (403 on /api) because only "authorization" was read."""
    import yaml
    from kubernetes.client import Configuration

    from queue_controller.operator.kube import load_configuration
    from queue_controller.operator.main import connection_info

    path = tmp_path / "sa.kubeconfig"
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "sa",
        "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:6443", "insecure-skip-tls-verify": True}}],
        "users": [{"name": "sa", "user": {"token": "tok.en"}}],
        "contexts": [{"name": "sa", "context": {"cluster": "c", "user": "sa"}}]}))
    info = connection_info(load_configuration(str(path)))
    assert (info.scheme, info.token) == ("Bearer", "tok.en")
    cfg = Configuration()
    cfg.host = "https://kubernetes.default.svc"
    cfg.api_key = {"authorization": "abc"}
    cfg.api_key_prefix = {"authorization": "Bearer"}
    assert (connection_info(cfg).scheme, connection_info(cfg).token) == ("Bearer", "abc")

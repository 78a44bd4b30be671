"""Command lines and health probes of the five components, in start order."""

from __future__ import annotations

import json
import ssl
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from queue_controller.devcluster.constants import KWOK_NODE_ANNOTATION, KWOK_NODE_ANNOTATION_VALUE
from queue_controller.devcluster.pki import FRONT_PROXY_CLIENT
from queue_controller.devcluster.state import ClusterPaths

SERVICE_CIDR = "10.96.0.0/16"
SERVICE_IP = "10.96.0.1"  # first address of SERVICE_CIDR: the `kubernetes` Service
POD_CIDR = "10.244.0.0/16"
# Loopback: nothing outside this machine should reach a dev cluster. The API server insists on an
# advertise address (it finds none on hosts without a default route), so it is always given.
ADVERTISE_IP = "127.0.0.1"
PORT_NAMES = ("etcd", "etcd-peer", "apiserver", "kube-controller-manager", "kube-scheduler", "kwok")
_HEALTH_PATHS = "/healthz,/readyz,/livez,/metrics"

# The optional audit log (`up(audit_log=True)`): one JSON line per finished request, at Metadata level
# (who, user agent, verb, resource, subresource, status; no bodies), so a bench can tell which client
# sent what. Off by default: it costs the API server CPU and disk.
AUDIT_POLICY = """\
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived, ResponseStarted]
rules:
- level: Metadata
"""


@dataclass(frozen=True)
class Component:
    name: str
    argv: list[str]
    healthy: Callable[[], bool]


def _get(url: str, ctx: ssl.SSLContext | None = None) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=2, context=ctx) as resp:  # local URLs only
        return resp.status, resp.read()


def _insecure() -> ssl.SSLContext:
    # KCM and the scheduler serve self-signed certs; only their health endpoint is read.
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def admin_tls(paths: ClusterPaths) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(paths.pki / "ca.crt"))
    ctx.load_cert_chain(str(paths.pki / "admin.crt"), str(paths.pki / "admin.key"))
    return ctx


def apiserver_ready(paths: ClusterPaths, port: int) -> bool:
    status, body = _get(f"https://127.0.0.1:{port}/readyz", admin_tls(paths))
    return status == 200 and body.strip() == b"ok"


def _etcd_healthy(port: int) -> bool:
    status, body = _get(f"http://127.0.0.1:{port}/health")
    return status == 200 and json.loads(body).get("health") == "true"


def _https_ok(port: int) -> bool:
    return _get(f"https://127.0.0.1:{port}/healthz", _insecure())[0] == 200


def _http_ok(port: int) -> bool:
    return _get(f"http://127.0.0.1:{port}/healthz")[0] == 200


AUDIT_LOG_MAX_MB = 1 << 20  # 1 TiB: no run comes near it


def audit_flags(paths: ClusterPaths) -> list[str]:
    """The API server's audit flags: the policy in config/, the log in logs/audit.log, written as it goes."""
    return [
        f"--audit-policy-file={paths.configs / 'audit-policy.yaml'}",
        f"--audit-log-path={paths.logs / 'audit.log'}",
        "--audit-log-format=json",
        "--audit-log-mode=blocking",  # each line is written before its response: a count read later is complete
        # Never rotated, so the bench reads one file. 0 is not "unlimited": the log library then rotates
        # at its default of 100 MB, which a 15,000-job run passes (its counts per client were partial).
        f"--audit-log-maxsize={AUDIT_LOG_MAX_MB}",
    ]


def components(
    bin_dir: Path, paths: ClusterPaths, ports: dict[str, int], cluster: str, *, audit_log: bool = False,
    pod_gc_threshold: int | None = None,
) -> list[Component]:
    """The control plane's processes. `pod_gc_threshold`: kube-controller-manager's
    --terminated-pod-gc-threshold (how many finished pods the cluster keeps; None: its default, 12,500)."""
    b = bin_dir
    pki = paths.pki
    etcd, peer, api = ports["etcd"], ports["etcd-peer"], ports["apiserver"]

    def kubeconfig_flags(comp: str) -> list[str]:
        kc = str(paths.component_kubeconfig(comp))
        # Delegated authn/authz for their own /metrics etc.; without them they log errors.
        return [f"--kubeconfig={kc}", f"--authentication-kubeconfig={kc}", f"--authorization-kubeconfig={kc}"]

    return [
        Component(
            "etcd",
            [
                str(b / "etcd"),
                "--name=ckq",
                f"--data-dir={paths.etcd_data}",
                f"--listen-client-urls=http://127.0.0.1:{etcd}",
                f"--advertise-client-urls=http://127.0.0.1:{etcd}",
                f"--listen-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-cluster=ckq=http://127.0.0.1:{peer}",
                "--initial-cluster-state=new",
                "--unsafe-no-fsync=true",  # a throwaway cluster: speed over durability
                "--log-level=warn",
            ],
            lambda: _etcd_healthy(etcd),
        ),
        Component(
            "kube-apiserver",
            [
                str(b / "kube-apiserver"),
                f"--etcd-servers=http://127.0.0.1:{etcd}",
                "--bind-address=127.0.0.1",
                f"--secure-port={api}",
                f"--advertise-address={ADVERTISE_IP}",
                "--endpoint-reconciler-type=none",  # a loopback advertise address is not a valid Endpoint
                f"--tls-cert-file={pki / 'apiserver.crt'}",
                f"--tls-private-key-file={pki / 'apiserver.key'}",
                f"--client-ca-file={pki / 'ca.crt'}",
                f"--service-account-key-file={pki / 'sa.pub'}",
                f"--service-account-signing-key-file={pki / 'sa.key'}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--authorization-mode=Node,RBAC",
                # No --enable-admission-plugins: the defaults include ValidatingAdmissionPolicy (GA since
                # 1.30), which enforces api/admission.py's policy (tests/integration/test_admission_policy.py).
                "--allow-privileged=true",
                "--profiling=false",
                f"--cert-dir={pki / 'apiserver-generated'}",
                f"--requestheader-client-ca-file={pki / 'front-proxy-ca.crt'}",
                f"--requestheader-allowed-names={FRONT_PROXY_CLIENT}",
                "--requestheader-username-headers=X-Remote-User",
                "--requestheader-group-headers=X-Remote-Group",
                "--requestheader-extra-headers-prefix=X-Remote-Extra-",
                f"--proxy-client-cert-file={pki / 'front-proxy-client.crt'}",
                f"--proxy-client-key-file={pki / 'front-proxy-client.key'}",
                # Real nodes' kubelets (logs, exec, port-forward): reach them by InternalIP (their
                # Hostname does not resolve) and authenticate with a client cert.
                f"--kubelet-client-certificate={pki / 'apiserver-kubelet-client.crt'}",
                f"--kubelet-client-key={pki / 'apiserver-kubelet-client.key'}",
                "--kubelet-preferred-address-types=InternalIP,Hostname",
                *(audit_flags(paths) if audit_log else []),
            ],
            lambda: apiserver_ready(paths, api),
        ),
        Component(
            "kube-controller-manager",
            [
                str(b / "kube-controller-manager"),
                *kubeconfig_flags("kube-controller-manager"),
                "--bind-address=127.0.0.1",
                f"--secure-port={ports['kube-controller-manager']}",
                f"--cert-dir={pki / 'kube-controller-manager-serving'}",
                f"--root-ca-file={pki / 'ca.crt'}",
                f"--service-account-private-key-file={pki / 'sa.key'}",
                "--use-service-account-credentials=true",
                "--leader-elect=false",
                f"--authorization-always-allow-paths={_HEALTH_PATHS}",
                f"--cluster-name={cluster}",
                "--kube-api-qps=100",
                "--kube-api-burst=200",
                *([f"--terminated-pod-gc-threshold={pod_gc_threshold}"] if pod_gc_threshold is not None else []),
            ],
            lambda: _https_ok(ports["kube-controller-manager"]),
        ),
        Component(
            "kube-scheduler",
            [
                str(b / "kube-scheduler"),
                *kubeconfig_flags("kube-scheduler"),
                "--bind-address=127.0.0.1",
                f"--secure-port={ports['kube-scheduler']}",
                f"--cert-dir={pki / 'kube-scheduler-serving'}",
                "--leader-elect=false",
                f"--authorization-always-allow-paths={_HEALTH_PATHS}",
            ],
            lambda: _https_ok(ports["kube-scheduler"]),
        ),
        Component(
            "kwok",
            [
                str(b / "kwok"),
                f"--kubeconfig={paths.component_kubeconfig('kwok')}",
                "--manage-all-nodes=false",
                f"--manage-nodes-with-annotation-selector={KWOK_NODE_ANNOTATION}={KWOK_NODE_ANNOTATION_VALUE}",
                f"--config={paths.configs / 'kwok-stages.yaml'}",
                f"--server-address=127.0.0.1:{ports['kwok']}",  # health endpoint; a free port per cluster
                "--node-lease-duration-seconds=40",
                f"--cidr={POD_CIDR}",
            ],
            lambda: _http_ok(ports["kwok"]),
        ),
    ]

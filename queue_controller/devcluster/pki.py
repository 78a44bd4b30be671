"""Certificates and keys for one cluster: a CA, the API server's serving cert, client certs, SA keys.

ECDSA P-256 throughout: every component accepts it and it is generated in milliseconds.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_VALIDITY = dt.timedelta(days=365)
# Names a client inside the cluster would use for the API server (service IP is the range's first).
_API_DNS = (
    "localhost",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
)


@dataclass(frozen=True)
class Client:
    """A client identity: user name (CN) and groups (O), as the API server reads x509 certs."""

    file_stem: str
    user: str
    groups: tuple[str, ...] = ()


# Each component gets the identity its bootstrap RBAC role expects; kwok, a test fake that patches
# node and pod status everywhere, and the admin are cluster admins.
CLIENTS = (
    Client("admin", "ckq-admin", ("system:masters",)),
    Client("kube-controller-manager", "system:kube-controller-manager"),
    Client("kube-scheduler", "system:kube-scheduler"),
    Client("kwok", "kwok-controller", ("system:masters",)),
)


FRONT_PROXY_CLIENT = "front-proxy-client"
# The API server's identity towards kubelets (logs, exec, port-forward, checkpoint). In
# system:masters so the kubelets' webhook authorization (a SubjectAccessReview) always allows it.
KUBELET_CLIENT = Client("apiserver-kubelet-client", "kube-apiserver-kubelet-client", ("system:masters",))


def node_client(node: str) -> Client:
    """A kubelet's identity: the Node authorizer and NodeRestriction match it to its Node object."""
    return Client(f"kubelet-{node}", f"system:node:{node}", ("system:nodes",))


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    path.chmod(0o600)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _builder(subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + _VALIDITY)
    )


def _leaf(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_name: x509.Name,
    subject: x509.Name,
    usage: x509.ObjectIdentifier,
    sans: list[x509.GeneralName] | None = None,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = _key()
    builder = (
        _builder(subject, ca_name, key.public_key())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_encipherment=False,
                content_commitment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return key, builder.sign(ca_key, hashes.SHA256())


def _write_ca(pki_dir: Path, stem: str, common_name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Name]:
    ca_key = _key()
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    ca = (
        _builder(ca_name, ca_name, ca_key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_encipherment=False,
                content_commitment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    _write_key(pki_dir / f"{stem}.key", ca_key)
    _write_cert(pki_dir / f"{stem}.crt", ca)
    return ca_key, ca_name


def _write_client(pki_dir: Path, ca_key: ec.EllipticCurvePrivateKey, ca_name: x509.Name, client: Client) -> None:
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, g) for g in client.groups]
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, client.user))
    key, cert = _leaf(ca_key, ca_name, x509.Name(attrs), ExtendedKeyUsageOID.CLIENT_AUTH)
    _write_key(pki_dir / f"{client.file_stem}.key", key)
    _write_cert(pki_dir / f"{client.file_stem}.crt", cert)


def issue_client(pki_dir: Path, client: Client) -> tuple[Path, Path]:
    """Sign a client certificate for `client` with the cluster's CA (after write_pki); (crt, key)."""
    ca_key = serialization.load_pem_private_key((pki_dir / "ca.key").read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    ca_name = x509.load_pem_x509_certificate((pki_dir / "ca.crt").read_bytes()).subject
    _write_client(pki_dir, ca_key, ca_name, client)
    return pki_dir / f"{client.file_stem}.crt", pki_dir / f"{client.file_stem}.key"


def write_pki(pki_dir: Path, *, service_ip: str, advertise_ip: str) -> None:
    """Create ca, apiserver, <client>, front-proxy-ca, front-proxy-client (.crt/.key) and sa.{key,pub}."""
    pki_dir.mkdir(parents=True, exist_ok=True)
    pki_dir.chmod(0o700)
    ca_key, ca_name = _write_ca(pki_dir, "ca", "ckq-dev-ca")

    ips = sorted({"127.0.0.1", service_ip, advertise_ip})
    sans: list[x509.GeneralName] = [x509.DNSName(d) for d in _API_DNS]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")])
    key, cert = _leaf(ca_key, ca_name, subject, ExtendedKeyUsageOID.SERVER_AUTH, sans)
    _write_key(pki_dir / "apiserver.key", key)
    _write_cert(pki_dir / "apiserver.crt", cert)

    for client in (*CLIENTS, KUBELET_CLIENT):
        _write_client(pki_dir, ca_key, ca_name, client)

    # Request-header (front proxy) CA: lets KCM/scheduler delegate authentication without errors and
    # lets aggregated API servers (metrics-server, ...) be installed.
    fp_key, fp_name = _write_ca(pki_dir, "front-proxy-ca", "ckq-dev-front-proxy-ca")
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, FRONT_PROXY_CLIENT)])
    key, cert = _leaf(fp_key, fp_name, subject, ExtendedKeyUsageOID.CLIENT_AUTH)
    _write_key(pki_dir / "front-proxy-client.key", key)
    _write_cert(pki_dir / "front-proxy-client.crt", cert)

    # Service-account token signing pair: the API server verifies with .pub, KCM and it sign with .key.
    sa_key = _key()
    _write_key(pki_dir / "sa.key", sa_key)
    (pki_dir / "sa.pub").write_bytes(
        sa_key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )

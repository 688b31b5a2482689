"""The control plane's certificates and keys: one CA, a serving certificate, client
certificates per component, and the service-account signing key pair.

Keys are ECDSA P-256 (fast to make, accepted by every component). Everything is written as
PEM files, private keys with mode 0600, into a folder the control plane owns and removes.
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

logger = logging.getLogger(__name__)

#: Certificates outlive any local control plane by far; nothing here is long-lived.
VALIDITY = datetime.timedelta(days=7)
#: First address of the service range, which the apiserver takes for `kubernetes.default`.
API_SERVICE_IP = "10.96.0.1"


@dataclass(frozen=True)
class CertificateFiles:
    """A certificate and its private key on disk."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class ClusterPki:
    """All files the control plane components are pointed at."""

    ca: CertificateFiles
    apiserver: CertificateFiles
    admin: CertificateFiles
    controller_manager: CertificateFiles
    scheduler: CertificateFiles
    service_account_key: Path
    service_account_public_key: Path


def create_pki(directory: Path) -> ClusterPki:
    """Make a fresh CA and every certificate the control plane needs, under ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = _sign(
        subject=_name("clusterbook-local-ca"),
        public_key=ca_key.public_key(),
        issuer_key=ca_key,
        issuer_name=None,
        is_ca=True,
    )
    ca = _write(directory, "ca", ca_cert, ca_key)

    def issue(
        stem: str, common_name: str, *, group: str | None = None, server: bool = False
    ) -> CertificateFiles:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _sign(
            subject=_name(common_name, group),
            public_key=key.public_key(),
            issuer_key=ca_key,
            issuer_name=ca_cert.subject,
            server=server,
        )
        return _write(directory, stem, cert, key)

    sa_key = ec.generate_private_key(ec.SECP256R1())
    sa_private = directory / "service-account.key"
    sa_public = directory / "service-account.pub"
    _write_private_key(sa_private, sa_key)
    sa_public.write_bytes(
        sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )

    pki = ClusterPki(
        ca=ca,
        apiserver=issue("apiserver", "kube-apiserver", server=True),
        admin=issue("admin", "clusterbook-admin", group="system:masters"),
        controller_manager=issue("controller-manager", "system:kube-controller-manager"),
        scheduler=issue("scheduler", "system:kube-scheduler"),
        service_account_key=sa_private,
        service_account_public_key=sa_public,
    )
    logger.debug("PKI written to %s", directory)
    return pki


def _name(common_name: str, group: str | None = None) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if group:
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, group))
    return x509.Name(attributes)


def _sign(
    *,
    subject: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    issuer_key: ec.EllipticCurvePrivateKey,
    issuer_name: x509.Name | None,
    is_ca: bool = False,
    server: bool = False,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name or subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
    )

    if is_ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        builder = builder.add_extension(
            x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False
        )
    else:
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_encipherment=False,
                key_cert_sign=False,
                crl_sign=False,
                content_commitment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )

    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.DNSName("kubernetes"),
                    x509.DNSName("kubernetes.default"),
                    x509.DNSName("kubernetes.default.svc"),
                    x509.DNSName("kubernetes.default.svc.cluster.local"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    x509.IPAddress(ipaddress.ip_address(API_SERVICE_IP)),
                ]
            ),
            critical=False,
        )
    return builder.sign(issuer_key, hashes.SHA256())


def _write(
    directory: Path, stem: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey
) -> CertificateFiles:
    files = CertificateFiles(cert=directory / f"{stem}.crt", key=directory / f"{stem}.key")
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_private_key(files.key, key)
    return files


def _write_private_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(pem)

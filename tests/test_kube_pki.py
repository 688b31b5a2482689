"""The control plane's PKI: a chain the components accept, identities RBAC understands."""

from __future__ import annotations

import ipaddress
import stat
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from clusterbook.kube.pki import create_pki


def _load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_every_certificate_is_signed_by_the_ca(tmp_path: Path) -> None:
    pki = create_pki(tmp_path)
    ca = _load(pki.ca.cert)

    for files in (pki.apiserver, pki.admin, pki.controller_manager, pki.scheduler):
        cert = _load(files.cert)
        cert.verify_directly_issued_by(ca)
        key = serialization.load_pem_private_key(files.key.read_bytes(), password=None)
        assert key.public_key() == cert.public_key()


def test_serving_certificate_covers_loopback_and_service_names(tmp_path: Path) -> None:
    cert = _load(create_pki(tmp_path).apiserver.cert)
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value

    assert ipaddress.ip_address("127.0.0.1") in names.get_values_for_type(x509.IPAddress)
    assert {"localhost", "kubernetes.default.svc"} <= set(names.get_values_for_type(x509.DNSName))
    usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in usages


def test_admin_is_in_system_masters_and_keys_are_private(tmp_path: Path) -> None:
    pki = create_pki(tmp_path)
    admin = _load(pki.admin.cert)

    groups = admin.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    assert [group.value for group in groups] == ["system:masters"]
    for key in (pki.ca.key, pki.admin.key, pki.service_account_key):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600

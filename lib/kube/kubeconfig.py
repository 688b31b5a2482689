"""Kubeconfig files for the local control plane: one per client identity.

The certificate data is embedded, so a kubeconfig is a single self-contained file that both
kubectl and the official Python client accept. It holds a private key: written with mode
0600, never logged.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path

import yaml

from clusterbook.kube.pki import CertificateFiles


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode("ascii")


def write_kubeconfig(
    path: Path,
    *,
    server: str,
    ca_cert: Path,
    client: CertificateFiles,
    user: str,
    cluster: str = "clusterbook-local",
) -> Path:
    """Write a kubeconfig for ``user`` (authenticated by ``client``) and return its path."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": cluster,
                "cluster": {"server": server, "certificate-authority-data": _b64(ca_cert)},
            }
        ],
        "users": [
            {
                "name": user,
                "user": {
                    "client-certificate-data": _b64(client.cert),
                    "client-key-data": _b64(client.key),
                },
            }
        ],
        "contexts": [{"name": f"{user}@{cluster}", "context": {"cluster": cluster, "user": user}}],
        "current-context": f"{user}@{cluster}",
        "preferences": {},
    }
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        yaml.safe_dump(config, handle, sort_keys=False)
    return path

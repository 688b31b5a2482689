"""The cluster's SSH key pair.

Either a new ED25519 key is made here and its public half imported as the key pair (the
private half is written, mode 0600, into the cluster's state folder), or the user's own
OpenSSH public key is imported. Either way only a public key travels to AWS: the private key
is never in a request or a response that wire-level (DEBUG) logging could show, and it is
never logged, printed or recorded. Only its path is passed on.

A second run finds the key pair again by the cluster tag and reuses it; a second run that
names a different public key than the pair holds is refused rather than silently keeping the
old one.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from clusterbook.aws.errors import translate_aws_errors
from clusterbook.aws.tags import cluster_filter, tag_specifications
from clusterbook.errors import UserInputError

logger = logging.getLogger(__name__)

PRIVATE_KEY_FILE = "id_ed25519"


@dataclass(frozen=True)
class KeyInfo:
    name: str
    key_pair_id: str
    fingerprint: str
    #: Where the private key is; empty when the user imported their own public key.
    private_key_path: str
    public_key: str
    imported: bool


def key_pair_name(cluster: str) -> str:
    return f"clusterbook-{cluster}"


def private_key_path(cluster_dir: Path) -> Path:
    return cluster_dir / PRIVATE_KEY_FILE


def ensure_key_pair(
    ec2: Any, *, cluster: str, cluster_dir: Path, public_key: str, tags: dict[str, str]
) -> KeyInfo:
    """The cluster's key pair: found by tag, else imported (``public_key``) or created."""
    key_path = private_key_path(cluster_dir)
    with translate_aws_errors(f"find the key pair of {cluster}"):
        found = ec2.describe_key_pairs(Filters=[cluster_filter(cluster)], IncludePublicKey=True)[
            "KeyPairs"
        ]

    if found:
        pair = found[0]
        imported = not key_path.exists()
        if imported and not public_key:
            raise UserInputError(
                f"key pair {pair['KeyName']} of cluster {cluster} exists in AWS, but its "
                f"private key is not at {key_path}",
                hint="run 04_teardown for this cluster (it deletes the key pair), or pass "
                "public_key to use a key of your own",
            )
        held = pair.get("PublicKey", "")
        if public_key and held and _key_body(held) != _key_body(public_key):
            raise UserInputError(
                f"key pair {pair['KeyName']} of cluster {cluster} holds another public key "
                "than the public_key given",
                hint="run 04_teardown for this cluster first to change its key, or leave "
                "public_key empty to keep the current one",
            )
        logger.info("reusing key pair %s", pair["KeyName"])
        return KeyInfo(
            name=pair["KeyName"],
            key_pair_id=pair.get("KeyPairId", ""),
            fingerprint=pair.get("KeyFingerprint", ""),
            private_key_path="" if imported else str(key_path),
            public_key=public_key or read_public_key(key_path),
            imported=imported,
        )

    if public_key:
        return import_key_pair(ec2, cluster=cluster, public_key=public_key, tags=tags)
    return create_key_pair(ec2, cluster=cluster, key_path=key_path, tags=tags)


def _key_body(public_key: str) -> tuple[str, ...]:
    """Type and base64 body of an OpenSSH public key (its comment does not matter)."""
    return tuple(public_key.split()[:2])


def import_key_pair(ec2: Any, *, cluster: str, public_key: str, tags: dict[str, str]) -> KeyInfo:
    name = key_pair_name(cluster)
    with translate_aws_errors(f"import the public key as key pair {name}"):
        pair = ec2.import_key_pair(
            KeyName=name,
            PublicKeyMaterial=public_key.encode(),
            TagSpecifications=tag_specifications("key-pair", tags),
        )
    logger.info("imported public key as key pair %s", name)
    return KeyInfo(
        name=name,
        key_pair_id=pair.get("KeyPairId", ""),
        fingerprint=pair.get("KeyFingerprint", ""),
        private_key_path="",
        public_key=public_key,
        imported=True,
    )


def create_key_pair(ec2: Any, *, cluster: str, key_path: Path, tags: dict[str, str]) -> KeyInfo:
    """A new ED25519 key: private half to ``key_path`` (0600), public half imported."""
    private_key = Ed25519PrivateKey.generate()
    material = private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    ).decode()
    public_key = public_key_of(material) + f" clusterbook-{cluster}"

    write_private_key(key_path, material)
    key_path.with_suffix(".pub").write_text(public_key + "\n")
    info = import_key_pair(ec2, cluster=cluster, public_key=public_key, tags=tags)
    logger.info("new ED25519 key; private key at %s (mode 0600)", key_path)
    return KeyInfo(
        name=info.name,
        key_pair_id=info.key_pair_id,
        fingerprint=info.fingerprint,
        private_key_path=str(key_path),
        public_key=public_key,
        imported=False,
    )


def write_private_key(path: Path, material: str) -> None:
    """Write the key readable by its owner only, never visible with wider permissions."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    temporary = path.with_name(path.name + ".tmp")
    temporary.unlink(missing_ok=True)
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(material if material.endswith("\n") else material + "\n")
    os.replace(temporary, path)


def public_key_of(private_key: str) -> str:
    key = serialization.load_ssh_private_key(private_key.encode(), password=None)
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
    )


def read_public_key(private_key_file: Path) -> str:
    public_file = private_key_file.with_suffix(".pub")
    if public_file.exists():
        return public_file.read_text().strip()
    return public_key_of(private_key_file.read_text())


def remove_local_key(cluster_dir: Path) -> list[str]:
    """Delete the private and public key files; returns the paths removed."""
    removed = []
    key_path = private_key_path(cluster_dir)
    for path in (key_path, key_path.with_suffix(".pub")):
        if path.exists():
            path.unlink()
            removed.append(str(path))
    return removed

"""Where a node's SSH host keys come from, so connections verify them instead of trusting
whatever answers first.

- On AWS: the instance's console output. Ubuntu's cloud-init prints the host's public keys
  between ``-----BEGIN SSH HOST KEY KEYS-----`` and ``-----END SSH HOST KEY KEYS-----`` at
  first boot, and ``GetConsoleOutput`` returns them.
- In the sandbox (``settings.sandbox``): the sandbox publishes each host's public keys in
  ``<state dir>/sandbox/host-keys/<instance id>.pub`` when it creates the host.

Either way the keys arrive through a channel other than the SSH connection itself.

Known shortcoming: on AWS the console output appears only some minutes after boot, and is
empty until then; ``fetch_host_keys`` then raises a retryable ``HostError`` and the caller
waits and asks again.
"""

from __future__ import annotations

import base64
import binascii
import logging
from typing import Any

import paramiko

from clusterbook.errors import HostError
from clusterbook.settings import Settings

logger = logging.getLogger(__name__)

BEGIN_MARKER = "-----BEGIN SSH HOST KEY KEYS-----"
END_MARKER = "-----END SSH HOST KEY KEYS-----"


def parse_public_keys(text: str) -> list[paramiko.PKey]:
    """Every ``<type> <base64> [comment]`` line of ``text`` that paramiko understands."""
    keys = []
    for line in text.splitlines():
        words = line.strip().split()
        if len(words) < 2:
            continue
        try:
            blob = base64.b64decode(words[1], validate=True)
            keys.append(paramiko.PKey.from_type_string(words[0], blob))
        except (binascii.Error, paramiko.SSHException, ValueError):
            continue
    return keys


def keys_from_console_output(output: str) -> list[paramiko.PKey]:
    """The host keys cloud-init printed in an instance's console output (may be none)."""
    start = output.rfind(BEGIN_MARKER)
    end = output.find(END_MARKER, start)
    if start < 0 or end < 0:
        return []
    return parse_public_keys(output[start + len(BEGIN_MARKER) : end])


def fetch_host_keys(
    settings: Settings, instance_id: str, *, ec2: Any = None
) -> list[paramiko.PKey]:
    """The host keys of an instance, from the sandbox's publication or EC2's console output."""
    if settings.sandbox:
        from clusterbook.sandbox.hosts import published_host_keys_path

        path = published_host_keys_path(settings.state_dir / "sandbox", instance_id)
        keys = parse_public_keys(path.read_text()) if path.is_file() else []
        source = str(path)
    else:
        keys = keys_from_console_output(_console_output(settings, instance_id, ec2=ec2))
        source = "its console output"

    if not keys:
        raise HostError(
            f"no SSH host keys of {instance_id} found in {source}",
            host=instance_id,
            hint="a new instance publishes its host keys shortly after boot; try again soon",
        )
    logger.debug("host keys of %s: %s", instance_id, ", ".join(k.get_name() for k in keys))
    return keys


def _console_output(settings: Settings, instance_id: str, *, ec2: Any) -> str:
    from botocore.exceptions import BotoCoreError, ClientError

    if ec2 is None:
        from clusterbook.aws.session import make_clients

        ec2 = make_clients(settings).ec2
    try:
        # botocore decodes the base64 console text for us.
        return ec2.get_console_output(InstanceId=instance_id, Latest=True).get("Output") or ""
    except (BotoCoreError, ClientError) as exc:
        raise HostError(
            f"could not read the console output of {instance_id} for its host keys: {exc}",
            host=instance_id,
        ) from exc

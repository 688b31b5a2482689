"""SSH to inventory nodes with Fabric: as ``ubuntu``, with the cluster's key, host keys checked.

A ``NodeConnection`` wraps one Fabric connection to one node. Host keys come from
``hostkeys.fetch_host_keys`` (console output on AWS, the sandbox's publication locally) and
nothing else: no ``~/.ssh/known_hosts``, no ``~/.ssh/config``, no agent, and an unknown or
changed host key is refused. The address follows ``settings.ssh_address``:

- ``public``: the node's public IP;
- ``private``: its private IP (the sandbox, or a machine inside the VPC);
- ``bastion``: its private IP, through ``settings.ssh_bastion`` (``[user@]host[:port]``).

Every failure becomes a ``HostError`` carrying the host, the command, its exit status and
the tail of its stderr. Command output is logged at DEBUG only.
"""

from __future__ import annotations

import logging
import shlex
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Self

import paramiko
from fabric import Config, Connection
from invoke.exceptions import CommandTimedOut

from clusterbook.aws.inventory import Inventory, Node
from clusterbook.errors import ConfigError, HostError
from clusterbook.nodes.hostkeys import fetch_host_keys
from clusterbook.settings import Settings

logger = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 15.0
CONNECT_ATTEMPTS = 3
COMMAND_TIMEOUT_S = 600.0
STDERR_TAIL_LINES = 15
MAX_PARALLEL = 32


@dataclass(frozen=True)
class CommandResult:
    """What a command printed and how it ended on one node."""

    node: str
    command: str
    stdout: str
    stderr: str
    exit_status: int

    @property
    def ok(self) -> bool:
        return self.exit_status == 0


def node_address(settings: Settings, node: Node) -> str:
    """The address to connect to, following ``settings.ssh_address``."""
    address = node.public_ip if settings.ssh_address == "public" else node.private_ip
    if not address:
        kind = "public" if settings.ssh_address == "public" else "private"
        raise HostError(
            f"node {node.name} ({node.instance_id}) has no {kind} IP address",
            host=node.name,
            hint="use ssh_address=private or bastion for nodes without a public address"
            if kind == "public"
            else None,
        )
    return address


class NodeConnection:
    """One verified SSH connection to one node. Use as a context manager."""

    def __init__(
        self,
        settings: Settings,
        node: Node,
        *,
        key_path: Path,
        user: str = "ubuntu",
        host_keys: list[paramiko.PKey] | None = None,
    ) -> None:
        self.node = node
        self.address = node_address(settings, node)
        keys = host_keys if host_keys is not None else fetch_host_keys(settings, node.instance_id)
        gateway = (
            _bastion(settings, key_path=key_path) if settings.ssh_address == "bastion" else None
        )
        self.connection = Connection(
            host=self.address,
            user=user,
            port=22,
            config=Config(ssh_config=paramiko.SSHConfig()),
            gateway=gateway,
            connect_timeout=CONNECT_TIMEOUT_S,
            connect_kwargs={
                "key_filename": [str(key_path)],
                "look_for_keys": False,
                "allow_agent": False,
            },
        )
        client = self.connection.client
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        client._system_host_keys.clear()
        for key in keys:
            client.get_host_keys().add(self.address, key.get_name(), key)

    def run(
        self,
        command: str,
        *,
        sudo: bool = False,
        check: bool = True,
        timeout_s: float = COMMAND_TIMEOUT_S,
    ) -> CommandResult:
        """Run ``command`` (through ``sudo -n`` when asked); raise HostError if it fails."""
        wire = f"sudo -n -- sh -c {shlex.quote(command)}" if sudo else command
        logger.debug("%s$ %s", self.node.name, command)
        try:
            self._open()
            result = self.connection.run(
                wire, hide=True, warn=True, in_stream=False, timeout=timeout_s
            )
        except CommandTimedOut as exc:
            raise self._error(f"timed out after {timeout_s:.0f} s", command) from exc
        except paramiko.BadHostKeyException as exc:
            raise self._error(
                "presented a host key that does not match the published one; refusing to "
                "connect (a different machine may answer at this address)",
                command,
            ) from exc
        except paramiko.SSHException as exc:
            raise self._error(f"SSH failed: {exc}", command) from exc
        except (OSError, EOFError) as exc:
            raise self._error(f"could not be reached at {self.address}: {exc}", command) from exc

        outcome = CommandResult(
            node=self.node.name,
            command=command,
            stdout=result.stdout,
            stderr=result.stderr,
            exit_status=result.exited,
        )
        logger.debug("%s: exit %d\n%s", self.node.name, outcome.exit_status, outcome.stdout)
        if check and not outcome.ok:
            raise HostError(
                f"`{command}` failed on {self.node.name} with exit status {outcome.exit_status}",
                host=self.node.name,
                command=command,
                exit_status=outcome.exit_status,
                stderr_tail=_tail(outcome.stderr),
            )
        return outcome

    def close(self) -> None:
        self.connection.close()

    def _open(self) -> None:
        """Connect, retrying a few times: a freshly booted or busy host may drop a handshake.

        A host key mismatch is never retried.
        """
        for attempt in range(1, CONNECT_ATTEMPTS + 1):
            if self.connection.is_connected:
                return
            try:
                self.connection.open()
                return
            except paramiko.BadHostKeyException:
                raise
            except (paramiko.SSHException, OSError, EOFError) as exc:
                if attempt == CONNECT_ATTEMPTS:
                    raise
                logger.debug("%s: connect attempt %d failed (%s)", self.node.name, attempt, exc)
                self.connection.close()
                time.sleep(attempt)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _error(self, what: str, command: str) -> HostError:
        return HostError(
            f"{self.node.name} ({self.address}) {what}",
            host=self.node.name,
            command=command,
        )


def connect_inventory(
    settings: Settings, inventory: Inventory, *, nodes: Iterable[Node] | None = None
) -> list[NodeConnection]:
    """Connections to the inventory's nodes (all, or ``nodes``), with the cluster's key."""
    if not inventory.key_path:
        raise ConfigError(
            f"cluster {inventory.cluster} was provisioned with an imported key; clusterbook "
            "has no private key for it",
            hint="provision with a key clusterbook creates, or place the key and set key_path",
        )
    chosen = list(nodes) if nodes is not None else inventory.nodes
    return [
        NodeConnection(settings, node, key_path=Path(inventory.key_path), user=inventory.ssh_user)
        for node in chosen
    ]


def run_on_nodes(
    connections: list[NodeConnection],
    command: str,
    *,
    sudo: bool = False,
    timeout_s: float = COMMAND_TIMEOUT_S,
) -> list[CommandResult]:
    """Run one command on every node at once; if any fails, raise one HostError naming all."""

    def run_one(connection: NodeConnection) -> CommandResult | HostError:
        try:
            return connection.run(command, sudo=sudo, timeout_s=timeout_s)
        except HostError as exc:
            return exc

    workers = max(1, min(MAX_PARALLEL, len(connections)))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        outcomes = list(pool.map(run_one, connections))

    failures = [o for o in outcomes if isinstance(o, HostError)]
    if failures:
        first = failures[0]
        names = ", ".join(str(f.host) for f in failures)
        raise HostError(
            f"`{command}` failed on {len(failures)} of {len(connections)} nodes ({names}); "
            f"first: {first.message}",
            host=first.host,
            command=command,
            exit_status=first.exit_status,
            stderr_tail=first.stderr_tail,
        )
    return [o for o in outcomes if isinstance(o, CommandResult)]


def _bastion(settings: Settings, *, key_path: Path) -> Connection:
    if not settings.ssh_bastion:
        raise ConfigError("ssh_address is bastion but ssh_bastion is not set")
    user, _, rest = settings.ssh_bastion.rpartition("@")
    host, _, port = rest.partition(":")
    # Known shortcoming: the bastion's own host key is checked against ~/.ssh/known_hosts
    # (the operator's usual trust), not against a published key.
    bastion = Connection(
        host=host,
        user=user or None,
        port=int(port) if port else 22,
        connect_timeout=CONNECT_TIMEOUT_S,
        connect_kwargs={"key_filename": [str(key_path)]},
    )
    bastion.client.set_missing_host_key_policy(paramiko.RejectPolicy())
    return bastion


def _tail(text: str) -> str:
    return "\n".join(text.strip().splitlines()[-STDERR_TAIL_LINES:])

"""SSH to inventory nodes: verified host keys, address choice, errors with context.

The sandbox supplies real hosts (module-scoped: up once, two nodes provisioned by the
product's own code)."""

from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path
from typing import Any

import paramiko
import pytest

from clusterbook.aws.inventory import Node
from clusterbook.errors import HostError
from clusterbook.nodes.ssh import NodeConnection, connect_inventory, node_address, run_on_nodes
from clusterbook.settings import Settings

NODE = Node(
    name="demo-worker-1",
    role="worker",
    instance_id="i-0abc",
    private_ip="10.213.0.9",
    public_ip="",
    private_dns="ip-10-213-0-9.ec2.internal",
    ssh_address="10.213.0.9",
    availability_zone="us-east-1a",
    state="running",
)


def test_address_follows_the_settings(tmp_path: Path) -> None:
    private = Settings(state_dir=tmp_path, ssh_address="private", requester="t")
    public = Settings(state_dir=tmp_path, ssh_address="public", requester="t")

    assert node_address(private, NODE) == "10.213.0.9"
    assert node_address(public, dataclasses.replace(NODE, public_ip="3.3.3.3")) == "3.3.3.3"
    with pytest.raises(HostError, match="has no public IP address"):
        node_address(public, NODE)


def test_command_failure_carries_host_command_status_and_stderr(
    sandbox: Any, sandbox_cluster: Any
) -> None:
    [connection, *_] = connect_inventory(sandbox.settings, sandbox_cluster)

    with connection, pytest.raises(HostError) as caught:
        connection.run("echo one >&2; echo two >&2; exit 3")

    error = caught.value
    assert error.host == connection.node.name
    assert error.exit_status == 3
    assert error.command == "echo one >&2; echo two >&2; exit 3"
    assert error.stderr_tail == "one\ntwo"


def test_run_on_nodes_reports_every_failing_node(sandbox: Any, sandbox_cluster: Any) -> None:
    connections = connect_inventory(sandbox.settings, sandbox_cluster)

    results = run_on_nodes(connections, "cat /etc/hostname", sudo=True)
    assert sorted(r.stdout.strip() for r in results) == sorted(
        n.private_dns for n in sandbox_cluster.nodes
    )
    with pytest.raises(HostError, match="failed on 2 of 2 nodes"):
        run_on_nodes(connections, "test -e /nonexistent")
    for connection in connections:
        connection.close()


def test_a_host_key_other_than_the_published_one_is_refused(
    sandbox: Any, sandbox_cluster: Any, tmp_path: Path
) -> None:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "other")],
        check=True,
    )
    impostor = paramiko.Ed25519Key.from_private_key_file(str(tmp_path / "other"))
    node = sandbox_cluster.nodes[0]
    connection = NodeConnection(
        sandbox.settings,
        node,
        key_path=Path(sandbox_cluster.key_path),
        host_keys=[paramiko.PKey.from_type_string(impostor.get_name(), impostor.asbytes())],
    )

    with connection, pytest.raises(HostError, match="does not match the published one"):
        connection.run("true")


def test_a_wrong_client_key_is_an_ssh_error_not_a_hang(
    sandbox: Any, sandbox_cluster: Any, tmp_path: Path
) -> None:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "stranger")],
        check=True,
    )
    connection = NodeConnection(
        sandbox.settings, sandbox_cluster.nodes[0], key_path=tmp_path / "stranger"
    )

    with connection, pytest.raises(HostError, match="SSH failed"):
        connection.run("true")

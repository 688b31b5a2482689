"""Sandbox hosts seen from the product: a cluster provisioned through the sandbox EC2 gives
real machines that Fabric reaches as ``ubuntu`` with the cluster key, host keys checked."""

from __future__ import annotations

import json
from typing import Any

import pytest

from clusterbook.nodes.ssh import NodeConnection, connect_inventory, run_on_nodes


@pytest.fixture(scope="module")
def connections(sandbox: Any, sandbox_cluster: Any) -> Any:
    opened = connect_inventory(sandbox.settings, sandbox_cluster)
    yield opened
    for connection in opened:
        connection.close()


def test_provision_yields_two_hosts_at_their_inventory_addresses(
    sandbox: Any, sandbox_cluster: Any
) -> None:
    from clusterbook.sandbox.lifecycle import sandbox_status

    hosts = {h.instance_id: h for h in sandbox_status(sandbox.settings).hosts}

    assert len(sandbox_cluster.nodes) == 2
    for node in sandbox_cluster.nodes:
        assert hosts[node.instance_id].state == "running"
        assert hosts[node.instance_id].private_ip == node.private_ip
        assert node.ssh_address == node.private_ip


def test_hosts_run_systemd_and_sshd(connections: list[NodeConnection]) -> None:
    for result in run_on_nodes(connections, "systemctl is-system-running --wait"):
        assert result.stdout.strip() == "running", result.stdout

    for connection in connections:
        journal = connection.run("journalctl -u ssh -n 5 --no-pager").stdout
        assert "Server listening on" in journal or "Accepted publickey" in journal, journal


def test_each_host_has_its_instance_address_and_name(
    connections: list[NodeConnection],
) -> None:
    for connection in connections:
        addresses = json.loads(connection.run("ip -j addr").stdout)
        local = [a["local"] for link in addresses for a in link.get("addr_info", [])]
        assert connection.node.private_ip in local
        assert connection.run("hostname").stdout.strip() == connection.node.private_dns


def test_host_a_reaches_host_b_on_port_22(connections: list[NodeConnection]) -> None:
    first, second = connections

    banner = first.run(
        f"exec 3<>/dev/tcp/{second.node.private_ip}/22; head -c 8 <&3", timeout_s=10
    ).stdout

    assert banner.startswith("SSH-2.0")


def test_ubuntu_has_passwordless_sudo_and_writable_cgroups(
    connections: list[NodeConnection],
) -> None:
    connection = connections[0]

    assert connection.run("id -u", sudo=True).stdout.strip() == "0"
    connection.run("mkdir /sys/fs/cgroup/pids/clusterbook-test", sudo=True)
    connection.run("rmdir /sys/fs/cgroup/pids/clusterbook-test", sudo=True)


def test_hosts_have_distinct_host_keys_matching_the_published_ones(
    sandbox: Any, sandbox_cluster: Any, connections: list[NodeConnection]
) -> None:
    from clusterbook.nodes.hostkeys import fetch_host_keys

    fingerprints = set()
    for connection in connections:
        published = fetch_host_keys(sandbox.settings, connection.node.instance_id)
        served = connection.connection.client.get_transport().get_remote_server_key()
        assert served.asbytes() in {key.asbytes() for key in published}
        fingerprints.add(served.fingerprint)
    assert len(fingerprints) == len(connections)

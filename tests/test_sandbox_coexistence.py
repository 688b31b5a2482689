"""Two sandboxes on one machine at once (a developer's and the test suite's, say): each has its
own network names, VPC range, moto and hosts; each provisions a host that answers SSH; and
``down`` of one leaves the other working."""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from clusterbook.aws.provision import provision_cluster
from clusterbook.aws.validate import validate_cluster_spec
from clusterbook.nodes.ssh import connect_inventory, run_on_nodes
from clusterbook.sandbox import hosts, network
from clusterbook.sandbox.lifecycle import sandbox_down, sandbox_status
from fixtures.sandbox import SandboxHandle, default_subnet_id, start_sandbox


@dataclass
class Provisioned:
    """A running sandbox and the one-node cluster provisioned into it."""

    sandbox: SandboxHandle
    inventory: Any

    @property
    def names(self) -> network.SandboxNames:
        return network.SandboxNames.for_folder(self.sandbox.status.sandbox_dir)


@pytest.fixture(scope="module")
def pair(
    sandbox_image: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[Provisioned]]:
    """Two sandboxes of two state directories, both up, each with a one-node cluster."""
    handles: list[SandboxHandle] = []
    try:
        for label in ("first", "second"):
            handles.append(start_sandbox(tmp_path_factory.mktemp(f"coexist-{label}")))
        provisioned = []
        for handle in handles:
            spec = validate_cluster_spec(
                cluster="pair", region=handle.settings.aws_region, worker_count=0
            )
            inventory = provision_cluster(handle.settings, spec, run_id="coexistence")
            provisioned.append(Provisioned(sandbox=handle, inventory=inventory))
        yield provisioned
    finally:
        for handle in handles:
            sandbox_down(handle.settings)
        for handle in handles:
            names = network.SandboxNames.for_folder(handle.status.sandbox_dir)
            assert network.list_namespaces(names) == []
            assert network.list_root_links(names) == []
            assert hosts.find_sandbox_processes(handle.status.sandbox_dir) == []


def routes_of(link: str) -> list[str]:
    return [r["dst"] for r in json.loads(network.ip_command("-j", "route", "show", "dev", link))]


def ssh_addresses(sandbox: SandboxHandle, inventory: Any) -> list[str]:
    """What ``hostname -I`` says on each node, over SSH with the cluster key (host keys
    checked against the sandbox's published ones)."""
    connections = connect_inventory(sandbox.settings, inventory)
    try:
        return [r.stdout.split()[0] for r in run_on_nodes(connections, "hostname -I")]
    finally:
        for connection in connections:
            connection.close()


def test_each_sandbox_has_its_own_names_range_and_ec2(pair: list[Provisioned]) -> None:
    first, second = pair

    assert first.names.sandbox_id != second.names.sandbox_id
    assert first.sandbox.status.endpoint_url != second.sandbox.status.endpoint_url
    first_range = ipaddress.ip_network(first.sandbox.status.cidr)
    second_range = ipaddress.ip_network(second.sandbox.status.cidr)
    assert not first_range.overlaps(second_range)
    for side in pair:
        assert network.list_root_links(side.names) == [side.names.root_link]
        assert routes_of(side.names.root_link) == [side.sandbox.status.cidr]
        assert side.names.vpc_netns in network.list_namespaces(side.names)

    first_ids = {node.instance_id for node in first.inventory.nodes}
    reservations = second.sandbox.ec2.describe_instances()["Reservations"]
    second_ids = {i["InstanceId"] for r in reservations for i in r["Instances"]}
    assert second_ids == {node.instance_id for node in second.inventory.nodes}
    assert not first_ids & second_ids


def test_each_sandbox_host_answers_ssh_at_its_own_address(pair: list[Provisioned]) -> None:
    for side in pair:
        [node] = side.inventory.nodes
        assert ipaddress.ip_address(node.private_ip) in ipaddress.ip_network(
            side.sandbox.status.cidr
        )

        assert ssh_addresses(side.sandbox, side.inventory) == [node.private_ip]


def test_down_of_one_leaves_the_other_working(pair: list[Provisioned]) -> None:
    first, second = pair

    removed = sandbox_down(first.sandbox.settings)

    assert f"daemon (pid {first.sandbox.status.pid})" in removed
    assert network.list_namespaces(first.names) == []
    assert network.list_root_links(first.names) == []
    assert hosts.find_sandbox_processes(first.sandbox.status.sandbox_dir) == []

    assert sandbox_status(second.sandbox.settings).running
    assert network.list_root_links(second.names) == [second.names.root_link]
    assert routes_of(second.names.root_link) == [second.sandbox.status.cidr]
    assert list(Path("/sys/fs/cgroup").glob(f"*/clusterbook/{second.names.sandbox_id}"))
    assert ssh_addresses(second.sandbox, second.inventory) == [
        node.private_ip for node in second.inventory.nodes
    ]

    # Its EC2 and reconciler still serve: a new instance gets a host that answers.
    reply = second.sandbox.ec2.run_instances(
        ImageId="ami-0b24a7f1e9d3c5002",
        MinCount=1,
        MaxCount=1,
        SubnetId=default_subnet_id(second.sandbox.ec2),
    )
    hosts.wait_for_ssh(reply["Instances"][0]["PrivateIpAddress"], timeout_s=60)

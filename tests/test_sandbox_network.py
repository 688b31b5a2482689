"""The sandbox VPC network: range choice, namespaces, veths, routes, and nothing left over."""

from __future__ import annotations

import ipaddress
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from clusterbook.sandbox import network
from fixtures.common import require, require_program, require_root

CIDR = "10.213.0.0/16"


@pytest.fixture
def vpc() -> Iterator[str]:
    require_root()
    require_program("ip", "iproute2")
    leftovers = network.list_namespaces() + network.list_root_links()
    require(not leftovers, f"no sandbox running (found {', '.join(leftovers)})")
    cidr = network.choose_vpc_cidr()
    network.create_vpc_network(cidr)
    yield cidr
    network.destroy_vpc_network()


def test_chosen_range_overlaps_nothing_in_use() -> None:
    require_root()
    used = network.used_networks()
    taken = next(str(n.supernet(new_prefix=16)) for n in used if n.prefixlen >= 16)
    free = network.choose_vpc_cidr((taken, CIDR, "10.214.0.0/16"))

    assert free != taken
    assert not any(ipaddress.ip_network(free).overlaps(n) for n in used)
    assert free != "172.31.0.0/16"


def test_gateway_is_outside_every_default_subnet() -> None:
    gateway = ipaddress.ip_address(network.gateway_address(CIDR))
    default_subnets = list(ipaddress.ip_network(CIDR).subnets(new_prefix=20))[:6]

    assert gateway in ipaddress.ip_network(CIDR)
    assert not any(gateway in subnet for subnet in default_subnets)


def test_root_namespace_routes_only_the_vpc_range_and_does_not_forward(vpc: str) -> None:
    routes = json.loads(network.ip_command("-j", "route", "show", "dev", network.ROOT_LINK))

    assert [r["dst"] for r in routes] == [vpc]
    forwarding = Path(f"/proc/sys/net/ipv4/conf/{network.ROOT_LINK}/forwarding").read_text()
    assert forwarding.strip() == "0"
    assert network.list_root_links() == [network.ROOT_LINK]


def test_hosts_reach_each_other_and_the_gateway_but_have_no_default_route(vpc: str) -> None:
    first = str(ipaddress.ip_network(vpc).network_address + 10)
    second = str(ipaddress.ip_network(vpc).network_address + 11)
    network.attach_host(instance_id="i-0000000000000000a", address=first, cidr=vpc)
    network.attach_host(instance_id="i-0000000000000000b", address=second, cidr=vpc)
    netns = network.host_netns("i-0000000000000000a")

    addresses = json.loads(network.ip_command("-j", "-4", "addr", "show", "eth0", netns=netns))
    assert addresses[0]["addr_info"][0]["local"] == first
    routes = json.loads(network.ip_command("-j", "route", netns=netns))
    assert all(r["dst"] != "default" for r in routes)
    for target in (second, network.gateway_address(vpc)):
        # Nothing listens on port 9: "refused" means the peer got the SYN and answered.
        probe = subprocess.run(
            [
                "ip",
                "netns",
                "exec",
                netns,
                "timeout",
                "3",
                "bash",
                "-c",
                f"echo > /dev/tcp/{target}/9",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        assert "Connection refused" in probe.stderr, probe.stderr


def test_detach_and_destroy_leave_nothing(vpc: str) -> None:
    address = str(ipaddress.ip_network(vpc).network_address + 20)
    network.attach_host(instance_id="i-0000000000000000c", address=address, cidr=vpc)
    network.detach_host("i-0000000000000000c")
    assert network.host_netns("i-0000000000000000c") not in network.list_namespaces()

    removed = network.destroy_vpc_network()

    assert f"netns {network.VPC_NETNS}" in removed
    assert network.list_namespaces() == []
    assert network.list_root_links() == []
    assert network.destroy_vpc_network() == []

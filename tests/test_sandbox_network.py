"""The sandbox VPC network: range choice, namespaces, veths, routes, and nothing left over."""

from __future__ import annotations

import ipaddress
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from clusterbook.sandbox import network
from fixtures.common import require_program, require_root

CIDR = "10.213.0.0/16"


@pytest.fixture
def names(tmp_path: Path) -> network.SandboxNames:
    return network.SandboxNames.for_folder(tmp_path / "sandbox")


@pytest.fixture
def vpc(names: network.SandboxNames) -> Iterator[str]:
    require_root()
    require_program("ip", "iproute2")
    cidr = network.choose_vpc_cidr(own_link=names.root_link)
    network.create_vpc_network(cidr, names=names)
    yield cidr
    network.destroy_vpc_network(names)


def test_names_carry_the_sandbox_id_and_fit_the_kernel_limit(tmp_path: Path) -> None:
    first = network.SandboxNames.for_folder(tmp_path / "a" / "sandbox")
    second = network.SandboxNames.for_folder(tmp_path / "b" / "sandbox")
    again = network.SandboxNames.for_folder(tmp_path / "a" / "x" / ".." / "sandbox")

    assert again == first and first.sandbox_id != second.sandbox_id
    for names in (first, second):
        assert len(names.root_link) <= 15
        assert names.root_link.startswith(f"cbsb-{names.sandbox_id}-")
        assert names.vpc_netns.startswith(f"cbsb-{names.sandbox_id}-")
        assert names.host_netns("i-0123456789abcdef0").startswith(f"cbsb-{names.sandbox_id}-")
    assert not first.vpc_netns.startswith(second.prefix)


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


def test_root_namespace_routes_only_the_vpc_range_and_does_not_forward(
    vpc: str, names: network.SandboxNames
) -> None:
    routes = json.loads(network.ip_command("-j", "route", "show", "dev", names.root_link))

    assert [r["dst"] for r in routes] == [vpc]
    forwarding = Path(f"/proc/sys/net/ipv4/conf/{names.root_link}/forwarding").read_text()
    assert forwarding.strip() == "0"
    assert network.list_root_links(names) == [names.root_link]


def test_a_second_network_gets_another_range_and_leaves_the_first_alone(
    vpc: str, names: network.SandboxNames, tmp_path: Path
) -> None:
    other = network.SandboxNames.for_folder(tmp_path / "other" / "sandbox")
    other_cidr = network.choose_vpc_cidr(own_link=other.root_link)
    network.create_vpc_network(other_cidr, names=other)
    try:
        assert not ipaddress.ip_network(other_cidr).overlaps(ipaddress.ip_network(vpc))
        assert network.list_root_links(other) == [other.root_link]
    finally:
        removed = network.destroy_vpc_network(other)

    assert f"netns {other.vpc_netns}" in removed and f"link {other.root_link}" in removed
    assert network.list_namespaces(other) == []
    assert network.list_namespaces(names) == [names.vpc_netns]
    assert network.list_root_links(names) == [names.root_link]


def test_no_free_range_left_is_a_clear_error_naming_the_sandboxes_holding_them(
    vpc: str, names: network.SandboxNames
) -> None:
    with pytest.raises(network.NetworkError, match="already in use") as caught:
        network.choose_vpc_cidr((vpc,))

    assert names.root_link in str(caught.value)


def test_hosts_reach_each_other_and_the_gateway_but_have_no_default_route(
    vpc: str, names: network.SandboxNames
) -> None:
    first = str(ipaddress.ip_network(vpc).network_address + 10)
    second = str(ipaddress.ip_network(vpc).network_address + 11)
    network.attach_host(names=names, instance_id="i-0000000000000000a", address=first, cidr=vpc)
    network.attach_host(names=names, instance_id="i-0000000000000000b", address=second, cidr=vpc)
    netns = names.host_netns("i-0000000000000000a")

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


def test_detach_and_destroy_leave_nothing(vpc: str, names: network.SandboxNames) -> None:
    address = str(ipaddress.ip_network(vpc).network_address + 20)
    network.attach_host(names=names, instance_id="i-0000000000000000c", address=address, cidr=vpc)
    network.detach_host("i-0000000000000000c", names=names)
    assert names.host_netns("i-0000000000000000c") not in network.list_namespaces(names)

    removed = network.destroy_vpc_network(names)

    assert f"netns {names.vpc_netns}" in removed
    assert network.list_namespaces(names) == []
    assert network.list_root_links(names) == []
    assert network.destroy_vpc_network(names) == []

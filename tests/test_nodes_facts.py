"""Node facts read in one SSH round trip, and the preflight findings drawn from them.

Real sandbox hosts (module-scoped sandbox, two nodes provisioned by the product's own code)
give the facts; they must match what the host really is. A failed unit makes a real problem
(systemd degraded) that must be found and then go away. The sandbox hosts also really have
ip_forward 0, no default route and no container runtime, which must be found.

What cannot be made real inside a systemd-nspawn machine is tested on constructed facts:
swap (``swapon`` on the overlay root fails with EINVAL and the machine has no loop devices;
``/proc/meminfo`` is the host's anyway), an active firewalld (not in the image, and the hosts
have no network to install it), too few CPUs or too little memory, cgroup v2.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import secrets
import subprocess
from pathlib import Path
from typing import Any

import pytest

from clusterbook.errors import HostError, UserInputError
from clusterbook.nodes.facts import (
    BRIDGE_NF_IPTABLES,
    IP_FORWARD,
    NodeAddress,
    NodeFacts,
    gather_facts,
    preflight_problems,
)
from clusterbook.nodes.ssh import NodeConnection, connect_inventory

HEALTHY = NodeFacts(
    node="demo-control-plane-1",
    hostname="ip-10-0-0-4.ec2.internal",
    os_id="ubuntu",
    os_version="24.04",
    os_name="Ubuntu 24.04.1 LTS",
    kernel="6.8.0-1015-aws",
    architecture="x86_64",
    cpus=2,
    memory_mib=7800,
    swap_mib=0,
    swap_devices=[],
    cgroup_version="v2",
    systemd_state="running",
    failed_units=[],
    firewalld_installed=False,
    firewalld_active=False,
    modules={"overlay": True, "br_netfilter": True},
    sysctls={IP_FORWARD: 1, BRIDGE_NF_IPTABLES: 1},
    addresses=[NodeAddress(interface="ens5", address="10.0.0.4", prefix_length=24, family="inet")],
    default_route=True,
    containerd_installed=True,
    containerd_active=True,
    crictl_installed=True,
)


def checks(facts: NodeFacts, role: str) -> dict[str, str]:
    return {p.check: p.message for p in preflight_problems(facts, role=role)}


def host_meminfo_mib(field: str) -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        name, _, value = line.partition(":")
        if name == field:
            return int(value.split()[0]) // 1024
    raise AssertionError(f"{field} not in /proc/meminfo")


# --- constructed facts: what the sandbox cannot make real -------------------------------


def test_a_ready_node_has_no_problems() -> None:
    assert preflight_problems(HEALTHY, role="control-plane") == []
    assert preflight_problems(HEALTHY, role="worker") == []


def test_swap_is_an_error_saying_how_to_turn_it_off() -> None:
    facts = dataclasses.replace(HEALTHY, swap_mib=2048, swap_devices=["/swap.img"])

    [problem] = preflight_problems(facts, role="worker")

    assert problem.severity == "error" and problem.check == "swap"
    assert problem.message.startswith("demo-control-plane-1: swap is on (2048 MiB)")
    assert "swapoff -a" in problem.message and "/etc/fstab" in problem.message


def test_active_firewalld_names_the_ports_of_the_role() -> None:
    facts = dataclasses.replace(HEALTHY, firewalld_installed=True, firewalld_active=True)

    control_plane = checks(facts, "control-plane")["firewall"]
    worker = checks(facts, "worker")["firewall"]

    assert "6443/tcp" in control_plane and "2379-2380/tcp" in control_plane
    assert "6443" not in worker and "30000-32767/tcp" in worker and "10250/tcp" in worker
    installed_only = dataclasses.replace(HEALTHY, firewalld_installed=True)
    assert preflight_problems(installed_only, role="worker") == []


def test_cpu_and_memory_minimums_apply_to_the_control_plane_only() -> None:
    small = dataclasses.replace(HEALTHY, cpus=1, memory_mib=1000)

    assert {"cpus", "memory"} <= set(checks(small, "control-plane"))
    assert not {"cpus", "memory"} & set(checks(small, "worker"))


def test_modules_sysctls_and_runtime_findings() -> None:
    facts = dataclasses.replace(
        HEALTHY,
        modules={"overlay": True, "br_netfilter": False},
        sysctls={IP_FORWARD: 0, BRIDGE_NF_IPTABLES: None},
        containerd_active=False,
        cgroup_version="v1",
    )

    found = checks(facts, "worker")

    assert "modprobe br_netfilter" in found["module-br_netfilter"]
    assert "module-overlay" not in found
    assert "net.ipv4.ip_forward is 0" in found["ip-forward"]
    # Without br_netfilter the bridge sysctl does not exist: the module finding covers it.
    assert "bridge-nf-call-iptables" not in found
    assert "systemctl enable --now containerd" in found["container-runtime"]
    assert found["cgroup"].startswith("demo-control-plane-1: cgroup v1")


def test_an_unknown_role_is_refused() -> None:
    with pytest.raises(UserInputError, match="unknown node role 'master'"):
        preflight_problems(HEALTHY, role="master")


# --- real sandbox hosts ----------------------------------------------------------------


@pytest.fixture(scope="module")
def connections(sandbox: Any, sandbox_cluster: Any) -> Any:
    opened = connect_inventory(sandbox.settings, sandbox_cluster)
    yield opened
    for connection in opened:
        connection.close()


def test_facts_of_booted_hosts_match_reality(sandbox_cluster: Any, connections: Any) -> None:
    facts = gather_facts(connections)

    assert [f.node for f in facts] == [n.name for n in sandbox_cluster.nodes]
    for node, fact in zip(sandbox_cluster.nodes, facts, strict=True):
        assert fact.hostname == node.private_dns
        assert node.private_ip in fact.ipv4_addresses
        assert all(a.address != "127.0.0.1" for a in fact.addresses)
        assert fact.os_id == "debian" and fact.os_version == "12"
        assert fact.systemd_state == "running" and fact.failed_units == []
        assert fact.swap_mib == 0 and fact.swap_devices == []
        # A container shares the kernel, and /proc/meminfo, with this machine.
        assert fact.kernel == os.uname().release
        assert fact.architecture == platform.machine()
        assert fact.memory_mib == host_meminfo_mib("MemTotal")
        assert fact.cpus is not None and 1 <= fact.cpus <= (os.cpu_count() or 1)
        assert fact.cgroup_version in ("v1", "v2", "hybrid")
        assert not fact.firewalld_installed and not fact.firewalld_active
        assert not fact.containerd_installed and not fact.crictl_installed
        json.dumps(fact.as_row())
        json.dumps(fact.as_dict())


def test_real_problems_of_the_sandbox_hosts_are_found(connections: Any) -> None:
    [facts, *_] = gather_facts(connections[:1])
    name = connections[0].node.name

    found = checks(facts, "control-plane")

    # The sandbox network has forwarding off and no default route, and nothing installs a
    # container runtime in the base image: all three are true of these hosts.
    assert facts.sysctls[IP_FORWARD] == 0
    assert found["ip-forward"].startswith(f"{name}: net.ipv4.ip_forward is 0")
    assert not facts.default_route and "--apiserver-advertise-address" in found["default-route"]
    assert "containerd is not installed" in found["container-runtime"]
    assert "swap" not in found and "firewall" not in found


def test_a_failed_unit_is_found_and_clearing_it_clears_the_finding(connections: Any) -> None:
    connection = connections[1]
    unit = f"clusterbook-test-broken-{secrets.token_hex(3)}.service"
    connection.run(f"systemd-run --unit={unit} --wait --quiet false", sudo=True, check=False)
    try:
        [broken] = gather_facts([connection])
        found = checks(broken, "worker")

        assert broken.systemd_state == "degraded"
        assert unit in broken.failed_units
        assert found["systemd"].startswith(f"{connection.node.name}: systemd reports 'degraded'")
        assert unit in found["systemd"] and "reset-failed" in found["systemd"]
    finally:
        connection.run(f"systemctl reset-failed {unit}", sudo=True, check=False)

    [fixed] = gather_facts([connection])
    assert fixed.systemd_state == "running"
    assert "systemd" not in checks(fixed, "worker")


def test_an_unreachable_node_is_named(
    sandbox: Any, sandbox_cluster: Any, connections: Any, tmp_path: Path
) -> None:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "stranger")],
        check=True,
    )
    node = sandbox_cluster.nodes[1]
    stranger = NodeConnection(sandbox.settings, node, key_path=tmp_path / "stranger")

    with stranger, pytest.raises(HostError) as caught:
        gather_facts([connections[0], stranger])

    assert f"1 of 2 nodes ({node.name})" in caught.value.message
    assert caught.value.host == node.name

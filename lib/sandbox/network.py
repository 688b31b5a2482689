"""The sandbox's VPC on this machine: a network namespace with a bridge, one veth per host.

Layout (``cbsb`` marks everything of ours, so a later clean-up can find it)::

    root namespace                 netns cbsb-vpc                 netns cbsb-h-<instance>
    cbsb-vpc0 (gateway/32) <-veth-> vpc0 ─┐                          (a booted host)
      route <VPC CIDR> only               br0 ── v<instance> <-veth-> eth0 <private IP>/<VPC prefix>
                                          (one port per host)

- Each host sits at exactly the private IP the sandbox EC2 gave its instance, with the VPC's
  prefix length, so every host is on-link with every other (host-to-host traffic works).
- The root namespace reaches the VPC through one veth and one route, for the VPC CIDR only.
  Its address there (the *gateway*) is the last usable address of the VPC CIDR, outside
  every default subnet, so an instance never gets it.
- No uplink and no NAT: hosts have no default route, and forwarding is switched off on the
  root side of the veth, so nothing a host sends can leave through this machine.
- The VPC CIDR is checked against every address and route of the root namespace first.

Every function here is idempotent and safe to call on a half-built or crashed network.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import logging
import subprocess
from pathlib import Path

from clusterbook.errors import ClusterbookError, MissingComponentError

logger = logging.getLogger(__name__)

PREFIX = "cbsb"
VPC_NETNS = f"{PREFIX}-vpc"
ROOT_LINK = f"{PREFIX}-vpc0"
VPC_SIDE_LINK = "vpc0"
BRIDGE = "br0"
HOST_NETNS_PREFIX = f"{PREFIX}-h-"
NETNS_DIR = Path("/run/netns")

#: VPC ranges tried in order; the first one no address or route here overlaps is used.
CANDIDATE_CIDRS = tuple(f"10.{n}.0.0/16" for n in range(213, 223)) + tuple(
    f"172.{n}.0.0/16" for n in range(24, 30)
)


class NetworkError(ClusterbookError):
    """The sandbox network could not be created or changed."""


def ip_command(*args: str, netns: str | None = None, check: bool = True) -> str:
    """Run ``ip`` (in ``netns`` when given) and return its output."""
    command = ["ip", *(["-n", netns] if netns else []), *args]
    logger.debug("running %s", " ".join(command))
    try:
        result = subprocess.run(command, capture_output=True, text=True, check=False)
    except FileNotFoundError as exc:
        raise MissingComponentError(
            "the ip command is missing", hint="apt-get install iproute2"
        ) from exc
    if check and result.returncode != 0:
        raise NetworkError(f"`{' '.join(command)}` failed: {result.stderr.strip()}")
    return result.stdout


def used_networks() -> list[ipaddress.IPv4Network]:
    """Every IPv4 network the root namespace has an address in or a route to."""
    networks = []
    for entry in json.loads(ip_command("-j", "-4", "addr") or "[]"):
        for info in entry.get("addr_info", []):
            networks.append(
                ipaddress.ip_network(f"{info['local']}/{info['prefixlen']}", strict=False)
            )
    for route in json.loads(ip_command("-j", "-4", "route", "show", "table", "all") or "[]"):
        destination = route.get("dst", "")
        if destination in ("", "default") or route.get("dev") == ROOT_LINK:
            continue
        if "/" not in destination:
            destination += "/32"
        try:
            networks.append(ipaddress.ip_network(destination, strict=False))
        except ValueError:
            continue
    return [net for net in networks if not net.is_loopback and net.version == 4]


def choose_vpc_cidr(candidates: tuple[str, ...] = CANDIDATE_CIDRS) -> str:
    """The first candidate CIDR that overlaps nothing this machine uses."""
    used = used_networks()
    for candidate in candidates:
        network = ipaddress.ip_network(candidate)
        if not any(network.overlaps(other) for other in used):
            return candidate
    raise NetworkError(
        "every candidate sandbox VPC range is already in use on this machine: "
        + ", ".join(candidates)
    )


def gateway_address(cidr: str) -> str:
    """The root namespace's address in the VPC: the last usable address of the CIDR."""
    return str(ipaddress.ip_network(cidr).broadcast_address - 1)


def list_namespaces() -> list[str]:
    """Our network namespaces (the VPC and every host), by name."""
    if not NETNS_DIR.is_dir():
        return []
    return sorted(p.name for p in NETNS_DIR.iterdir() if p.name.startswith(PREFIX + "-"))


def list_root_links() -> list[str]:
    """Our links in the root namespace (normally just the VPC's veth)."""
    links = json.loads(ip_command("-j", "link", "show") or "[]")
    return sorted(link["ifname"] for link in links if link["ifname"].startswith(PREFIX))


def create_vpc_network(cidr: str) -> None:
    """Create (or complete) the VPC namespace, its bridge and the root namespace's veth."""
    if VPC_NETNS not in list_namespaces():
        ip_command("netns", "add", VPC_NETNS)
    ip_command("link", "set", "lo", "up", netns=VPC_NETNS)
    if BRIDGE not in _links_in(VPC_NETNS):
        ip_command("link", "add", BRIDGE, "type", "bridge", netns=VPC_NETNS)
    ip_command("link", "set", BRIDGE, "up", netns=VPC_NETNS)

    if ROOT_LINK not in list_root_links():
        ip_command(
            "link",
            "add",
            ROOT_LINK,
            "type",
            "veth",
            "peer",
            "name",
            VPC_SIDE_LINK,
            "netns",
            VPC_NETNS,
        )
    _write_sysctl(f"net/ipv4/conf/{ROOT_LINK}/forwarding", "0")
    _write_sysctl(f"net/ipv6/conf/{ROOT_LINK}/disable_ipv6", "1")
    gateway = gateway_address(cidr)
    ip_command("addr", "replace", f"{gateway}/32", "dev", ROOT_LINK)
    ip_command("link", "set", ROOT_LINK, "up")
    ip_command("link", "set", VPC_SIDE_LINK, "master", BRIDGE, "up", netns=VPC_NETNS)
    ip_command("route", "replace", cidr, "dev", ROOT_LINK, "src", gateway)
    logger.info("sandbox VPC network %s up (gateway %s on %s)", cidr, gateway, ROOT_LINK)


def host_netns(instance_id: str) -> str:
    return HOST_NETNS_PREFIX + instance_id.removeprefix("i-")


def host_port(instance_id: str) -> str:
    """The host's bridge port name in the VPC namespace (15 characters at most)."""
    return "v" + instance_id.removeprefix("i-")[-13:]


def host_mac(instance_id: str) -> str:
    """A locally administered MAC address derived from the instance id."""
    digest = hashlib.sha256(instance_id.encode()).digest()
    return ":".join(f"{b:02x}" for b in (0x02, *digest[:5]))


def attach_host(*, instance_id: str, address: str, cidr: str) -> Path:
    """Give a host its own namespace with ``eth0`` at ``address`` on the VPC bridge.

    Returns the namespace path for ``systemd-nspawn --network-namespace-path``.
    """
    if ipaddress.ip_address(address) not in ipaddress.ip_network(
        cidr
    ) or address == gateway_address(cidr):
        raise NetworkError(f"{instance_id}: address {address} cannot be used in VPC {cidr}")

    netns = host_netns(instance_id)
    port = host_port(instance_id)
    detach_host(instance_id)
    ip_command("netns", "add", netns)
    ip_command(
        "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", netns, netns=VPC_NETNS
    )
    ip_command("link", "set", port, "master", BRIDGE, "up", netns=VPC_NETNS)

    # A stable MAC per instance (as an ENI keeps its MAC over stop and start), so no
    # neighbour cache in the VPC points at a veth that is gone.
    ip_command("link", "set", "eth0", "address", host_mac(instance_id), netns=netns)
    prefix = ipaddress.ip_network(cidr).prefixlen
    ip_command("addr", "add", f"{address}/{prefix}", "dev", "eth0", netns=netns)
    ip_command("link", "set", "eth0", "up", netns=netns)
    ip_command("link", "set", "lo", "up", netns=netns)
    logger.debug("host %s attached at %s (netns %s, port %s)", instance_id, address, netns, port)
    return NETNS_DIR / netns


def detach_host(instance_id: str) -> None:
    """Remove a host's namespace and bridge port, if they exist."""
    port = host_port(instance_id)
    if VPC_NETNS in list_namespaces() and port in _links_in(VPC_NETNS):
        ip_command("link", "del", port, netns=VPC_NETNS, check=False)
    netns = host_netns(instance_id)
    if netns in list_namespaces():
        ip_command("netns", "del", netns, check=False)


def destroy_vpc_network() -> list[str]:
    """Remove every namespace and root link of ours. Returns what was removed."""
    removed = []
    for link in list_root_links():
        ip_command("link", "del", link, check=False)
        removed.append(f"link {link}")
    for netns in list_namespaces():
        ip_command("netns", "del", netns, check=False)
        removed.append(f"netns {netns}")
    return removed


def _links_in(netns: str) -> list[str]:
    return [link["ifname"] for link in json.loads(ip_command("-j", "link", netns=netns) or "[]")]


def _write_sysctl(key: str, value: str) -> None:
    path = Path("/proc/sys") / key
    if path.exists():
        path.write_text(value)

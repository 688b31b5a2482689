"""The sandbox's VPC on this machine: a network namespace with a bridge, one veth per host.

Layout, for the sandbox whose id is ``<id>`` (see ``SandboxNames``)::

    root namespace             netns cbsb-<id>-vpc             netns cbsb-<id>-h-<instance>
    cbsb-<id>-gw <-veth-> vpc0 ─┐                                  (a booted host)
      gateway/32                br0 ── v<instance> <-veth-> eth0 <private IP>/<VPC prefix>
      route <VPC CIDR> only     (one port per host)

- Every name in the root namespace and every namespace name carries the sandbox's id: six hex
  digits of a hash of its (resolved) sandbox folder. So several sandboxes (a developer's and
  the test suite's, say) run side by side, and a clean-up touches only its own sandbox's
  names, never another's. ``cbsb`` marks all of them, so ``ip netns`` and ``ip link`` show
  what belongs to sandboxes. Names inside a sandbox's own namespaces (``vpc0``, ``br0``,
  ``v<instance>``, ``eth0``) need no id: each namespace has its own set of link names.
- Each sandbox has its own VPC range: the range choice skips every range routed here,
  including the ranges routed to another sandbox's root link.
- Each host sits at exactly the private IP the sandbox EC2 gave its instance, with the VPC's
  prefix length, so every host is on-link with every other (host-to-host traffic works).
- The root namespace reaches the VPC through one veth and one route, for the VPC CIDR only.
  Its address there (the *gateway*) is the last usable address of the VPC CIDR, outside
  every default subnet, so an instance never gets it.
- No uplink and no NAT: hosts have no default route, and forwarding is switched off on the
  root side of the veth, so nothing a host sends can leave through this machine.
- The VPC CIDR is checked against every address and route of the root namespace first.

Every function here is idempotent and safe to call on a half-built or crashed network.

Known shortcoming: names of sandboxes from before the per-sandbox ids (``cbsb-vpc``,
``cbsb-vpc0``, ``cbsb-h-*``) belong to no sandbox id, so no sweep removes them; their range
still counts as used. Remove such leftovers by hand (``ip netns del``, ``ip link del``).
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import logging
import subprocess
from dataclasses import dataclass
from pathlib import Path

from clusterbook.errors import ClusterbookError, MissingComponentError

logger = logging.getLogger(__name__)

PREFIX = "cbsb"
VPC_SIDE_LINK = "vpc0"
BRIDGE = "br0"
NETNS_DIR = Path("/run/netns")
#: Hex digits of the sandbox id: 16.7 million ids; a clash is refused, not shared (lifecycle).
SANDBOX_ID_LENGTH = 6
#: Longest link name the kernel takes (IFNAMSIZ is 16 bytes with the closing NUL).
MAX_LINK_NAME = 15

#: VPC ranges tried in order; the first one no address or route here overlaps is used.
CANDIDATE_CIDRS = tuple(f"10.{n}.0.0/16" for n in range(213, 223)) + tuple(
    f"172.{n}.0.0/16" for n in range(24, 30)
)


class NetworkError(ClusterbookError):
    """The sandbox network could not be created or changed."""


def sandbox_id(sandbox_dir: Path) -> str:
    """The short id of the sandbox kept in ``sandbox_dir``: a hash of its resolved path."""
    digest = hashlib.sha256(str(sandbox_dir.resolve()).encode()).hexdigest()
    return digest[:SANDBOX_ID_LENGTH]


@dataclass(frozen=True)
class SandboxNames:
    """The machine-wide names of one sandbox's network: its namespaces and its root link."""

    sandbox_id: str

    @classmethod
    def for_folder(cls, sandbox_dir: Path) -> SandboxNames:
        return cls(sandbox_id(sandbox_dir))

    @property
    def prefix(self) -> str:
        """What every name of this sandbox starts with (and no other sandbox's does)."""
        return f"{PREFIX}-{self.sandbox_id}-"

    @property
    def vpc_netns(self) -> str:
        return f"{self.prefix}vpc"

    @property
    def root_link(self) -> str:
        """The veth in the root namespace that carries the VPC's route and gateway address."""
        name = f"{self.prefix}gw"
        if len(name) > MAX_LINK_NAME:  # only if someone lengthens the id
            raise NetworkError(f"link name {name} is longer than {MAX_LINK_NAME} characters")
        return name

    def host_netns(self, instance_id: str) -> str:
        return f"{self.prefix}h-{instance_id.removeprefix('i-')}"


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


def used_networks(*, own_link: str | None = None) -> list[ipaddress.IPv4Network]:
    """Every IPv4 network the root namespace has an address in or a route to, except the
    routes through ``own_link`` (the asking sandbox's own root link, if it has one).

    Another sandbox's range counts as used: it is routed to that sandbox's root link.
    """
    networks = []
    for entry in json.loads(ip_command("-j", "-4", "addr") or "[]"):
        for info in entry.get("addr_info", []):
            networks.append(
                ipaddress.ip_network(f"{info['local']}/{info['prefixlen']}", strict=False)
            )
    for route in json.loads(ip_command("-j", "-4", "route", "show", "table", "all") or "[]"):
        destination = route.get("dst", "")
        if destination in ("", "default") or (own_link and route.get("dev") == own_link):
            continue
        if "/" not in destination:
            destination += "/32"
        try:
            networks.append(ipaddress.ip_network(destination, strict=False))
        except ValueError:
            continue
    return [net for net in networks if not net.is_loopback and net.version == 4]


def choose_vpc_cidr(
    candidates: tuple[str, ...] = CANDIDATE_CIDRS, *, own_link: str | None = None
) -> str:
    """The first candidate CIDR that overlaps nothing this machine uses (other sandboxes'
    ranges included)."""
    used = used_networks(own_link=own_link)
    for candidate in candidates:
        network = ipaddress.ip_network(candidate)
        if not any(network.overlaps(other) for other in used):
            return candidate
    others = list_root_links()
    raise NetworkError(
        "every candidate sandbox VPC range is already in use on this machine: "
        + ", ".join(candidates),
        hint=(
            f"other sandboxes hold some of them (links {', '.join(others)}): take one down "
            "with `clusterbook --state-dir DIR sandbox down`"
            if others
            else "free one of these ranges, or pass another with `sandbox up --cidr`"
        ),
    )


def gateway_address(cidr: str) -> str:
    """The root namespace's address in the VPC: the last usable address of the CIDR."""
    return str(ipaddress.ip_network(cidr).broadcast_address - 1)


def list_namespaces(names: SandboxNames | None = None) -> list[str]:
    """The network namespaces of one sandbox (its VPC and every host), by name; without
    ``names``, those of every sandbox on this machine."""
    if not NETNS_DIR.is_dir():
        return []
    prefix = names.prefix if names else PREFIX + "-"
    return sorted(p.name for p in NETNS_DIR.iterdir() if p.name.startswith(prefix))


def list_root_links(names: SandboxNames | None = None) -> list[str]:
    """The links of one sandbox in the root namespace (normally just its VPC's veth);
    without ``names``, those of every sandbox on this machine."""
    prefix = names.prefix if names else PREFIX
    links = json.loads(ip_command("-j", "link", "show") or "[]")
    return sorted(link["ifname"] for link in links if link["ifname"].startswith(prefix))


def create_vpc_network(cidr: str, *, names: SandboxNames) -> None:
    """Create (or complete) the VPC namespace, its bridge and the root namespace's veth."""
    vpc_netns, root_link = names.vpc_netns, names.root_link
    if vpc_netns not in list_namespaces(names):
        ip_command("netns", "add", vpc_netns)
    ip_command("link", "set", "lo", "up", netns=vpc_netns)
    if BRIDGE not in _links_in(vpc_netns):
        ip_command("link", "add", BRIDGE, "type", "bridge", netns=vpc_netns)
    ip_command("link", "set", BRIDGE, "up", netns=vpc_netns)

    if root_link not in list_root_links(names):
        ip_command(
            "link",
            "add",
            root_link,
            "type",
            "veth",
            "peer",
            "name",
            VPC_SIDE_LINK,
            "netns",
            vpc_netns,
        )
    _write_sysctl(f"net/ipv4/conf/{root_link}/forwarding", "0")
    _write_sysctl(f"net/ipv6/conf/{root_link}/disable_ipv6", "1")
    gateway = gateway_address(cidr)
    ip_command("addr", "replace", f"{gateway}/32", "dev", root_link)
    ip_command("link", "set", root_link, "up")
    ip_command("link", "set", VPC_SIDE_LINK, "master", BRIDGE, "up", netns=vpc_netns)
    ip_command("route", "replace", cidr, "dev", root_link, "src", gateway)
    logger.info("sandbox VPC network %s up (gateway %s on %s)", cidr, gateway, root_link)


def host_port(instance_id: str) -> str:
    """The host's bridge port name in the VPC namespace (15 characters at most)."""
    return "v" + instance_id.removeprefix("i-")[-13:]


def host_mac(instance_id: str) -> str:
    """A locally administered MAC address derived from the instance id."""
    digest = hashlib.sha256(instance_id.encode()).digest()
    return ":".join(f"{b:02x}" for b in (0x02, *digest[:5]))


def attach_host(*, names: SandboxNames, instance_id: str, address: str, cidr: str) -> Path:
    """Give a host its own namespace with ``eth0`` at ``address`` on the VPC bridge.

    Returns the namespace path for ``systemd-nspawn --network-namespace-path``.
    """
    if ipaddress.ip_address(address) not in ipaddress.ip_network(
        cidr
    ) or address == gateway_address(cidr):
        raise NetworkError(f"{instance_id}: address {address} cannot be used in VPC {cidr}")

    netns = names.host_netns(instance_id)
    port = host_port(instance_id)
    vpc_netns = names.vpc_netns
    detach_host(instance_id, names=names)
    ip_command("netns", "add", netns)
    ip_command(
        "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", netns, netns=vpc_netns
    )
    ip_command("link", "set", port, "master", BRIDGE, "up", netns=vpc_netns)

    # A stable MAC per instance (as an ENI keeps its MAC over stop and start), so no
    # neighbour cache in the VPC points at a veth that is gone.
    ip_command("link", "set", "eth0", "address", host_mac(instance_id), netns=netns)
    prefix = ipaddress.ip_network(cidr).prefixlen
    ip_command("addr", "add", f"{address}/{prefix}", "dev", "eth0", netns=netns)
    ip_command("link", "set", "eth0", "up", netns=netns)
    ip_command("link", "set", "lo", "up", netns=netns)
    logger.debug("host %s attached at %s (netns %s, port %s)", instance_id, address, netns, port)
    return NETNS_DIR / netns


def detach_host(instance_id: str, *, names: SandboxNames) -> None:
    """Remove a host's namespace and bridge port, if they exist."""
    port = host_port(instance_id)
    ours = list_namespaces(names)
    if names.vpc_netns in ours and port in _links_in(names.vpc_netns):
        ip_command("link", "del", port, netns=names.vpc_netns, check=False)
    netns = names.host_netns(instance_id)
    if netns in ours:
        ip_command("netns", "del", netns, check=False)


def destroy_vpc_network(names: SandboxNames) -> list[str]:
    """Remove every namespace and root link of this sandbox (and nothing of another
    sandbox). Returns what was removed."""
    removed = []
    for link in list_root_links(names):
        ip_command("link", "del", link, check=False)
        removed.append(f"link {link}")
    for netns in list_namespaces(names):
        ip_command("netns", "del", netns, check=False)
        removed.append(f"netns {netns}")
    return removed


def _links_in(netns: str) -> list[str]:
    return [link["ifname"] for link in json.loads(ip_command("-j", "link", netns=netns) or "[]")]


def _write_sysctl(key: str, value: str) -> None:
    path = Path("/proc/sys") / key
    if path.exists():
        path.write_text(value)

"""What a node is, read in one SSH round trip, and what in it would stop kubeadm.

``gather_facts`` sends one POSIX shell script to every node at once. The script reads only
what a fresh Debian or Ubuntu host has (``/proc``, ``/sys``, ``/etc/os-release``, coreutils,
``sed``, ``ip`` from iproute2, ``systemctl``; no Python, no ``jq``, no ``procps``) and prints
one JSON object, which is parsed here into a typed ``NodeFacts``. No ``sudo`` is needed.

``preflight_problems`` turns facts into findings a person can act on, each naming its node:
swap that kubeadm refuses, a firewall that must be opened, missing kernel modules and
sysctls, a degraded systemd, no container runtime yet.

Known shortcomings: modules built into the kernel count as loaded only when they leave a
trace (``/sys/module/NAME``, ``overlay`` in ``/proc/filesystems``, the bridge sysctls for
``br_netfilter``); inside a container (the sandbox's systemd-nspawn machines) memory, swap
and modules are the host kernel's, because ``/proc`` is not namespaced for them.
"""

from __future__ import annotations

import json
import logging
import shlex
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from clusterbook.errors import HostError, UserInputError
from clusterbook.nodes.ssh import MAX_PARALLEL, NodeConnection

logger = logging.getLogger(__name__)

FACTS_TIMEOUT_S = 60.0
#: Kernel modules kubeadm's container networking and containerd's snapshotter rely on.
MODULES_OF_INTEREST = ("overlay", "br_netfilter")
IP_FORWARD = "net.ipv4.ip_forward"
BRIDGE_NF_IPTABLES = "net.bridge.bridge-nf-call-iptables"
#: kubeadm's preflight minimums for a control-plane node.
CONTROL_PLANE_MIN_CPUS = 2
CONTROL_PLANE_MIN_MEMORY_MIB = 1700
#: Ports the kubeadm documentation lists as needing to be open, by role.
PORTS_BY_ROLE = {
    "control-plane": "6443/tcp, 2379-2380/tcp, 10250/tcp, 10257/tcp, 10259/tcp",
    "worker": "10250/tcp, 10256/tcp, 30000-32767/tcp",
}

Role = Literal["control-plane", "worker"]
Severity = Literal["error", "warning"]

# The script prints one JSON object. Strings go through js() (control characters dropped,
# backslash and quote escaped); numbers through num() (anything not a plain integer: null).
FACTS_SCRIPT = r"""
LC_ALL=C; export LC_ALL
js() { printf '"%s"' "$(printf '%s' "$1" | tr -d '\000-\037' | sed 's/\\/\\\\/g; s/"/\\"/g')"; }
num() { case "$1" in ''|*[!0-9]*) printf null ;; *) printf '%s' "$1" ;; esac; }
yes_no() { if "$@" >/dev/null 2>&1; then printf true; else printf false; fi; }
osr() {
    sed -n "s/^$1=//p" /etc/os-release 2>/dev/null | head -n 1 | sed "s/^[\"']//; s/[\"']\$//"
}
meminfo() { sed -n "s/^$1: *\([0-9]*\) kB\$/\1/p" /proc/meminfo 2>/dev/null; }
sysctl_value() { f=/proc/sys/$(printf '%s' "$1" | tr . /); [ -r "$f" ] && cat "$f"; }
module_loaded() {
    grep -q "^$1 " /proc/modules 2>/dev/null && return 0
    [ -d "/sys/module/$1" ] && return 0
    case "$1" in
        overlay) grep -qw overlay /proc/filesystems 2>/dev/null ;;
        br_netfilter) [ -e /proc/sys/net/bridge/bridge-nf-call-iptables ] ;;
        *) return 1 ;;
    esac
}
cgroup_version() {
    case "$(stat -f -c %T /sys/fs/cgroup 2>/dev/null)" in
        cgroup2fs) printf v2 ;;
        tmpfs) if [ "$(stat -f -c %T /sys/fs/cgroup/unified 2>/dev/null)" = cgroup2fs ]; then
                   printf hybrid; else printf v1; fi ;;
        *) printf unknown ;;
    esac
}
have() { command -v "$1" >/dev/null 2>&1; }
unit_file() {
    for d in /etc/systemd/system /usr/lib/systemd/system /lib/systemd/system; do
        [ -e "$d/$1" ] && return 0
    done
    return 1
}
if have systemctl; then
    state=$(systemctl is-system-running 2>/dev/null)
    failed=$(systemctl list-units --state=failed --no-legend --plain 2>/dev/null \
             | sed 's/^[^A-Za-z0-9]*//' | cut -d ' ' -f 1 | tr '\n' ' ')
else
    state=absent; failed=
fi
addresses=$(ip -j address show scope global 2>/dev/null)
[ -n "$addresses" ] || addresses='[]'
printf '{'
printf '"hostname":%s,' "$(js "$(cat /proc/sys/kernel/hostname 2>/dev/null || uname -n)")"
printf '"os_id":%s,"os_version":%s,' "$(js "$(osr ID)")" "$(js "$(osr VERSION_ID)")"
printf '"os_name":%s,' "$(js "$(osr PRETTY_NAME)")"
printf '"kernel":%s,"architecture":%s,' "$(js "$(uname -r)")" "$(js "$(uname -m)")"
printf '"cpus":%s,' "$(num "$(nproc 2>/dev/null)")"
printf '"memory_kib":%s,' "$(num "$(meminfo MemTotal)")"
printf '"swap_kib":%s,' "$(num "$(meminfo SwapTotal)")"
printf '"swaps":%s,' "$(js "$(sed 1d /proc/swaps 2>/dev/null | cut -d ' ' -f 1 | tr '\n' ' ')")"
printf '"cgroup":%s,' "$(js "$(cgroup_version)")"
printf '"systemd_state":%s,"failed_units":%s,' "$(js "$state")" "$(js "$failed")"
printf '"firewalld_installed":%s,' "$(yes_no unit_file firewalld.service)"
printf '"firewalld_active":%s,' "$(yes_no systemctl is-active --quiet firewalld.service)"
printf '"modules":{"overlay":%s,' "$(yes_no module_loaded overlay)"
printf '"br_netfilter":%s},' "$(yes_no module_loaded br_netfilter)"
printf '"ip_forward":%s,' "$(num "$(sysctl_value net.ipv4.ip_forward)")"
printf '"bridge_nf_call_iptables":%s,' \
    "$(num "$(sysctl_value net.bridge.bridge-nf-call-iptables)")"
printf '"default_route":%s,' "$(yes_no test -n "$(ip route show default 2>/dev/null)")"
printf '"containerd_installed":%s,' "$(yes_no have containerd)"
printf '"containerd_active":%s,' "$(yes_no systemctl is-active --quiet containerd.service)"
printf '"crictl_installed":%s,' "$(yes_no have crictl)"
printf '"addresses":%s' "$addresses"
printf '}\n'
"""


@dataclass(frozen=True)
class NodeAddress:
    """One global-scope address of a node's interface."""

    interface: str
    address: str
    prefix_length: int
    family: str


@dataclass(frozen=True)
class NodeFacts:
    """What one node is, as far as bootstrapping Kubernetes on it is concerned."""

    node: str
    hostname: str
    os_id: str
    os_version: str
    os_name: str
    kernel: str
    architecture: str
    cpus: int | None
    memory_mib: int | None
    swap_mib: int | None
    swap_devices: list[str]
    cgroup_version: str
    systemd_state: str
    failed_units: list[str]
    firewalld_installed: bool
    firewalld_active: bool
    modules: dict[str, bool]
    sysctls: dict[str, int | None]
    addresses: list[NodeAddress] = field(default_factory=list)
    default_route: bool = False
    containerd_installed: bool = False
    containerd_active: bool = False
    crictl_installed: bool = False

    @property
    def ipv4_addresses(self) -> list[str]:
        return [a.address for a in self.addresses if a.family == "inet"]

    def as_row(self) -> dict[str, Any]:
        """A flat, JSON-able row for ``record(...)`` tables."""
        return {
            "node": self.node,
            "hostname": self.hostname,
            "os": f"{self.os_id} {self.os_version}".strip(),
            "kernel": self.kernel,
            "arch": self.architecture,
            "cpus": self.cpus,
            "memory_mib": self.memory_mib,
            "swap_mib": self.swap_mib,
            "cgroup": self.cgroup_version,
            "systemd": self.systemd_state,
            "firewalld": _firewalld_text(self),
            "modules": ", ".join(f"{m}={'yes' if on else 'no'}" for m, on in self.modules.items()),
            "ip_forward": self.sysctls.get(IP_FORWARD),
            "bridge_nf_call_iptables": self.sysctls.get(BRIDGE_NF_IPTABLES),
            "addresses": ", ".join(f"{a.address}/{a.prefix_length}" for a in self.addresses),
            "default_route": self.default_route,
            "containerd": _containerd_text(self),
            "crictl": self.crictl_installed,
        }

    def as_dict(self) -> dict[str, Any]:
        """Every field, nested, JSON-able."""
        return asdict(self)


@dataclass(frozen=True)
class PreflightProblem:
    """One finding about one node: what is wrong, why it matters, what to do."""

    node: str
    check: str
    severity: Severity
    message: str

    def __str__(self) -> str:
        return self.message

    def as_row(self) -> dict[str, str]:
        return {"node": self.node, "check": self.check, "severity": self.severity,
                "finding": self.message}


def gather_facts(
    connections: list[NodeConnection], *, timeout_s: float = FACTS_TIMEOUT_S
) -> list[NodeFacts]:
    """Facts of every node, in the order of ``connections``; one SSH round trip per node.

    Raises one HostError naming every node that could not be read.
    """
    def gather_one(connection: NodeConnection) -> NodeFacts | HostError:
        try:
            return read_node_facts(connection, timeout_s=timeout_s)
        except HostError as exc:
            return exc

    workers = max(1, min(MAX_PARALLEL, len(connections)))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        outcomes = list(pool.map(gather_one, connections))

    failures = [o for o in outcomes if isinstance(o, HostError)]
    if failures:
        first = failures[0]
        names = ", ".join(str(f.host) for f in failures)
        raise HostError(
            f"could not read the facts of {len(failures)} of {len(connections)} nodes "
            f"({names}); first: {first.message}",
            host=first.host,
            command=first.command,
            exit_status=first.exit_status,
            stderr_tail=first.stderr_tail,
        )
    facts = [o for o in outcomes if isinstance(o, NodeFacts)]
    logger.info("read the facts of %d nodes", len(facts))
    return facts


def read_node_facts(connection: NodeConnection, *, timeout_s: float = FACTS_TIMEOUT_S) -> NodeFacts:
    """Facts of one node: run the facts script and parse what it prints."""
    name = connection.node.name
    result = connection.run(
        f"sh -c {shlex.quote(FACTS_SCRIPT)}", check=True, timeout_s=timeout_s
    )
    try:
        raw = json.loads(result.stdout)
        return parse_facts(name, raw)
    except (ValueError, KeyError, TypeError) as exc:
        raise HostError(
            f"the facts script printed something other than the expected JSON on {name}: {exc}",
            host=name,
            command="facts script (clusterbook.nodes.facts.FACTS_SCRIPT)",
            exit_status=result.exit_status,
            stderr_tail="\n".join((result.stderr or result.stdout).strip().splitlines()[-15:]),
        ) from exc


def parse_facts(node: str, raw: dict[str, Any]) -> NodeFacts:
    """Build ``NodeFacts`` from the script's JSON object."""
    return NodeFacts(
        node=node,
        hostname=str(raw["hostname"]),
        os_id=str(raw["os_id"]),
        os_version=str(raw["os_version"]),
        os_name=str(raw["os_name"]),
        kernel=str(raw["kernel"]),
        architecture=str(raw["architecture"]),
        cpus=_optional_int(raw["cpus"]),
        memory_mib=_kib_to_mib(raw["memory_kib"]),
        swap_mib=_kib_to_mib(raw["swap_kib"]),
        swap_devices=str(raw["swaps"]).split(),
        cgroup_version=str(raw["cgroup"]),
        systemd_state=str(raw["systemd_state"]) or "unknown",
        failed_units=str(raw["failed_units"]).split(),
        firewalld_installed=bool(raw["firewalld_installed"]),
        firewalld_active=bool(raw["firewalld_active"]),
        modules={m: bool(raw["modules"].get(m)) for m in MODULES_OF_INTEREST},
        sysctls={
            IP_FORWARD: _optional_int(raw["ip_forward"]),
            BRIDGE_NF_IPTABLES: _optional_int(raw["bridge_nf_call_iptables"]),
        },
        addresses=_global_addresses(raw["addresses"]),
        default_route=bool(raw["default_route"]),
        containerd_installed=bool(raw["containerd_installed"]),
        containerd_active=bool(raw["containerd_active"]),
        crictl_installed=bool(raw["crictl_installed"]),
    )


def preflight_problems(facts: NodeFacts, *, role: str) -> list[PreflightProblem]:
    """What on this node would stop ``kubeadm init``/``join`` or the cluster, and what to do.

    ``role`` is ``control-plane`` or ``worker`` (it decides the CPU/memory minimums and the
    ports a firewall must open). Errors are what kubeadm's preflight refuses or what breaks
    the cluster; warnings are what the bootstrap still has to do or should look at.
    """
    if role not in PORTS_BY_ROLE:
        raise UserInputError(
            f"unknown node role {role!r}", hint=f"use one of: {', '.join(PORTS_BY_ROLE)}"
        )
    node = facts.node
    problems: list[PreflightProblem] = []

    def add(check: str, severity: Severity, text: str) -> None:
        problems.append(PreflightProblem(node, check, severity, f"{node}: {text}"))

    if facts.swap_mib:
        add("swap", "error",
            f"swap is on ({facts.swap_mib} MiB): kubeadm refuses it; turn it off with "
            "`swapoff -a` and remove it from /etc/fstab")
    if facts.os_id not in ("ubuntu", "debian"):
        add("os", "warning",
            f"the OS is {facts.os_id or 'unknown'} {facts.os_version}: the bootstrap is written "
            "for Ubuntu and Debian")
    if facts.architecture not in ("x86_64", "aarch64"):
        add("architecture", "warning",
            f"architecture {facts.architecture} is neither x86_64 nor aarch64: Kubernetes "
            "packages may not exist for it")
    if role == "control-plane" and facts.cpus is not None and facts.cpus < CONTROL_PLANE_MIN_CPUS:
        add("cpus", "error",
            f"{facts.cpus} CPU: kubeadm needs at least {CONTROL_PLANE_MIN_CPUS} on a control-plane "
            "node; choose a larger instance type")
    if (
        role == "control-plane"
        and facts.memory_mib is not None
        and facts.memory_mib < CONTROL_PLANE_MIN_MEMORY_MIB
    ):
        add("memory", "error",
            f"{facts.memory_mib} MiB of memory: kubeadm needs at least "
            f"{CONTROL_PLANE_MIN_MEMORY_MIB} MiB on a control-plane node; choose a larger "
            "instance type")
    if facts.cgroup_version in ("v1", "hybrid"):
        add("cgroup", "error",
            f"cgroup {facts.cgroup_version}: recent kubelets refuse cgroup v1 by default; boot "
            "with cgroup v2 only (systemd.unified_cgroup_hierarchy=1) or use an image that does")
    if facts.systemd_state != "running":
        if facts.failed_units:
            add("systemd", "warning",
                f"systemd reports '{facts.systemd_state}' (failed units: "
                f"{', '.join(facts.failed_units)}): read why with `journalctl -u UNIT`, then fix "
                "them or clear them with `systemctl reset-failed`")
        else:
            add("systemd", "warning",
                f"systemd reports '{facts.systemd_state}' instead of 'running': let the boot "
                "finish (`systemctl list-jobs` shows what it waits for) before the bootstrap")
    if facts.firewalld_active:
        add("firewall", "error",
            f"firewalld is active: the bootstrap must open {PORTS_BY_ROLE[role]} "
            "(`firewall-cmd --permanent --add-port=...` then `firewall-cmd --reload`) or stop "
            "and disable it")
    for module in MODULES_OF_INTEREST:
        if not facts.modules.get(module):
            add(f"module-{module}", "error",
                f"{module} not loaded: run `modprobe {module}` and list it in "
                "/etc/modules-load.d/k8s.conf so it loads at boot")
    forward = facts.sysctls.get(IP_FORWARD)
    if forward != 1:
        add("ip-forward", "error",
            f"{IP_FORWARD} is {forward if forward is not None else 'unreadable'}: kubeadm needs 1; "
            f"put `{IP_FORWARD} = 1` in /etc/sysctl.d/k8s.conf and run `sysctl --system`")
    bridge = facts.sysctls.get(BRIDGE_NF_IPTABLES)
    if bridge is not None and bridge != 1:
        add("bridge-nf-call-iptables", "error",
            f"{BRIDGE_NF_IPTABLES} is {bridge}: bridged pod traffic would bypass iptables; put "
            f"`{BRIDGE_NF_IPTABLES} = 1` in /etc/sysctl.d/k8s.conf and run `sysctl --system`")
    if not facts.ipv4_addresses:
        add("address", "error",
            "no global IPv4 address: the node cannot be reached by the other nodes")
    if not facts.default_route:
        add("default-route", "warning",
            "no default route: kubeadm picks the node's address from it; pass it explicitly "
            "(--apiserver-advertise-address on the control plane, the kubelet's --node-ip)")
    if not facts.containerd_installed:
        add("container-runtime", "warning",
            "no container runtime: containerd is not installed; install and start it before "
            "kubeadm (its preflight needs a CRI socket)")
    elif not facts.containerd_active:
        add("container-runtime", "error",
            "containerd is installed but not running: `systemctl enable --now containerd`")
    elif not facts.crictl_installed:
        add("crictl", "warning",
            "crictl is not installed: kubeadm's preflight uses it to reach the runtime")
    return problems


def _global_addresses(interfaces: Any) -> list[NodeAddress]:
    addresses: list[NodeAddress] = []
    for interface in interfaces or []:
        for info in interface.get("addr_info", []):
            if info.get("scope") != "global" or not info.get("local"):
                continue
            addresses.append(
                NodeAddress(
                    interface=str(interface.get("ifname", "")),
                    address=str(info["local"]),
                    prefix_length=int(info.get("prefixlen", 0)),
                    family=str(info.get("family", "")),
                )
            )
    return addresses


def _optional_int(value: Any) -> int | None:
    return None if value is None else int(value)


def _kib_to_mib(value: Any) -> int | None:
    return None if value is None else int(value) // 1024


def _firewalld_text(facts: NodeFacts) -> str:
    if facts.firewalld_active:
        return "active"
    return "installed, inactive" if facts.firewalld_installed else "absent"


def _containerd_text(facts: NodeFacts) -> str:
    if facts.containerd_active:
        return "active"
    return "installed, inactive" if facts.containerd_installed else "absent"

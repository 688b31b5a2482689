"""Refuse bad provisioning input before any AWS call, and build the ``ClusterSpec``.

Instance types and regions are checked against botocore's own service data (shipped with
boto3, no network needed), so the lists follow boto3 upgrades.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from dataclasses import dataclass
from functools import cache

import boto3
import botocore.session

from clusterbook.errors import UserInputError

logger = logging.getLogger(__name__)

OS_IMAGES = ("ubuntu-24.04", "ubuntu-22.04")
VPC_MODES = ("default", "dedicated")
CLUSTER_NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,30}[a-z0-9]$")
AMI_ID_RE = re.compile(r"^ami-[0-9a-f]{8,17}$")
PUBLIC_KEY_RE = re.compile(r"^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(256|384|521)) [A-Za-z0-9+/=]+")

MAX_CONTROL_PLANE = 5
MAX_WORKERS = 50
MIN_VOLUME_GIB = 10
MAX_VOLUME_GIB = 2048
MAX_TTL_HOURS = 24 * 30


@dataclass(frozen=True)
class ClusterSpec:
    """Validated input of one provisioning run."""

    cluster: str
    region: str
    instance_type: str
    control_plane_count: int
    worker_count: int
    volume_gib: int
    os_image: str
    ami_id: str
    #: Empty: reach 22 and 6443 only from inside the VPC.
    admin_cidr: str
    vpc_mode: str
    #: Empty: create a new ED25519 key pair; else an OpenSSH public key to import.
    public_key: str
    ttl_hours: int
    open_all_traffic: bool
    owner: str

    @property
    def node_count(self) -> int:
        return self.control_plane_count + self.worker_count


@cache
def known_instance_types() -> frozenset[str]:
    model = botocore.session.get_session().get_service_model("ec2")
    return frozenset(model.shape_for("InstanceType").enum)


@cache
def known_regions() -> frozenset[str]:
    return frozenset(boto3.session.Session().get_available_regions("ec2"))


def validate_cluster_name(cluster: str) -> str:
    if not CLUSTER_NAME_RE.match(cluster or ""):
        raise UserInputError(
            f"cluster name {cluster!r} is not valid",
            hint="use 2-32 lowercase letters, digits and '-', starting with a letter and not "
            "ending with '-' (it becomes part of DNS names and AWS resource names)",
        )
    return cluster


def validate_region(region: str) -> str:
    if region not in known_regions():
        raise UserInputError(
            f"unknown AWS region {region!r}",
            hint=f"known regions: {', '.join(sorted(known_regions()))}",
        )
    return region


def validate_instance_type(instance_type: str) -> str:
    if instance_type not in known_instance_types():
        family = instance_type.split(".")[0]
        similar = sorted(t for t in known_instance_types() if t.startswith(family + "."))[:8]
        hint = f"types of that family: {', '.join(similar)}" if similar else None
        raise UserInputError(
            f"unknown EC2 instance type {instance_type!r}", hint=hint or "e.g. m5a.large"
        )
    return instance_type


def validate_count(name: str, value: int, *, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise UserInputError(f"{name} must be a whole number from {low} to {high}, not {value!r}")
    return value


def validate_admin_cidr(cidr: str, *, open_all_traffic: bool) -> str:
    """An IPv4 network in CIDR form; empty means 'inside the VPC only'."""
    if not cidr:
        return ""
    try:
        network = ipaddress.ip_network(cidr, strict=True)
    except ValueError as exc:
        raise UserInputError(
            f"admin CIDR {cidr!r} is not a valid network: {exc}",
            hint="write your address as a.b.c.d/32, or a network like 203.0.113.0/24",
        ) from exc
    if network.version != 4:
        raise UserInputError(f"admin CIDR {cidr!r} must be IPv4")
    if network.prefixlen == 0 and not open_all_traffic:
        raise UserInputError(
            "admin CIDR 0.0.0.0/0 would open SSH and the Kubernetes API to the whole internet",
            hint="give your own address (a.b.c.d/32); set open_all_traffic=True only if you "
            "really want everything open",
        )
    return str(network)


def validate_public_key(public_key: str) -> str:
    key = (public_key or "").strip()
    if key and not PUBLIC_KEY_RE.match(key):
        raise UserInputError(
            "public_key is not an OpenSSH public key",
            hint="paste one line like 'ssh-ed25519 AAAA... you@host' (the .pub file), "
            "never the private key",
        )
    return key


def validate_cluster_spec(
    *,
    cluster: str,
    region: str,
    instance_type: str = "m5a.large",
    control_plane_count: int = 1,
    worker_count: int = 1,
    volume_gib: int = 20,
    os_image: str = "ubuntu-24.04",
    ami_id: str = "",
    admin_cidr: str = "",
    vpc_mode: str = "default",
    public_key: str = "",
    ttl_hours: int = 8,
    open_all_traffic: bool = False,
    owner: str = "",
) -> ClusterSpec:
    """Check every input; raise UserInputError naming the first bad one."""
    validate_cluster_name(cluster)
    validate_region(region)
    validate_instance_type(instance_type)
    validate_count("control_plane_count", control_plane_count, low=1, high=MAX_CONTROL_PLANE)
    if control_plane_count % 2 == 0:
        raise UserInputError(
            f"control_plane_count must be odd, not {control_plane_count}",
            hint="etcd needs a majority of control-plane nodes: use 1, 3 or 5",
        )
    validate_count("worker_count", worker_count, low=0, high=MAX_WORKERS)
    validate_count("volume_gib", volume_gib, low=MIN_VOLUME_GIB, high=MAX_VOLUME_GIB)
    validate_count("ttl_hours", ttl_hours, low=1, high=MAX_TTL_HOURS)
    if os_image not in OS_IMAGES:
        raise UserInputError(f"os_image must be one of {', '.join(OS_IMAGES)}, not {os_image!r}")
    if ami_id and not AMI_ID_RE.match(ami_id):
        raise UserInputError(f"ami_id {ami_id!r} is not an image id like ami-0123456789abcdef0")
    if vpc_mode not in VPC_MODES:
        raise UserInputError(f"vpc_mode must be one of {', '.join(VPC_MODES)}, not {vpc_mode!r}")

    return ClusterSpec(
        cluster=cluster,
        region=region,
        instance_type=instance_type,
        control_plane_count=control_plane_count,
        worker_count=worker_count,
        volume_gib=volume_gib,
        os_image=os_image,
        ami_id=ami_id,
        admin_cidr=validate_admin_cidr(admin_cidr, open_all_traffic=open_all_traffic),
        vpc_mode=vpc_mode,
        public_key=validate_public_key(public_key),
        ttl_hours=ttl_hours,
        open_all_traffic=bool(open_all_traffic),
        owner=owner,
    )


def check_ssh_reach(spec: ClusterSpec, *, ssh_address: str, wait_for_ssh: bool) -> None:
    """Refuse a request whose nodes this machine could never reach over SSH.

    With public addresses and no admin CIDR, the security group opens SSH to the VPC only,
    so waiting for the SSH port from outside would run into its time limit.
    """
    if ssh_address != "public" or spec.admin_cidr or spec.open_all_traffic:
        return
    if wait_for_ssh:
        raise UserInputError(
            "the nodes' SSH port would be closed to this machine: admin_cidr is empty, so "
            "only addresses inside the VPC may reach it, but SSH goes to public addresses",
            hint="set admin_cidr to your public address (like 203.0.113.7/32), or set the "
            "ssh_address setting to private or bastion when running from inside the VPC",
        )


def check_sandbox_fit(
    spec: ClusterSpec, *, sandbox: bool, sandbox_region: str, wait_for_ssh: bool
) -> None:
    """Refuse, in the sandbox, a request whose machines it could never boot.

    The sandbox boots a machine only for instances in its own region and its own VPC range
    (see ``clusterbook.sandbox.reconciler``); elsewhere the instances would exist in its EC2
    but never answer SSH, and the run would fail only after the SSH wait's time limit. A
    provision that does not wait for SSH asks for EC2 resources only, which the sandbox's
    EC2 serves anywhere.
    """
    if not sandbox or not wait_for_ssh:
        return
    if spec.vpc_mode == "dedicated":
        raise UserInputError(
            "vpc_mode=dedicated is not served by the sandbox: its machines live in the "
            "sandbox's own VPC only",
            hint="use vpc_mode=default in the sandbox (dedicated VPCs work on real AWS)",
        )
    if spec.region != sandbox_region:
        raise UserInputError(
            f"region {spec.region!r} is not the sandbox's: its machines run in "
            f"{sandbox_region!r} only",
            hint=f"leave region empty or set region={sandbox_region}",
        )

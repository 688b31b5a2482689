"""The cluster state store: what provisioning made, for the runbooks that come after it.

``<state_dir>/clusters/<cluster>/inventory.json`` (format version 1)::

    {
      "version": 1, "cluster": "demo", "region": "us-east-1", "updated_at": "...Z",
      "vpc_id": "vpc-...", "subnet_id": "subnet-...", "dedicated_vpc": false,
      "security_group_id": "sg-...", "image_id": "ami-...", "image_name": "...",
      "instance_type": "m5a.large", "os_image": "ubuntu-24.04", "ssh_user": "ubuntu",
      "key_name": "clusterbook-demo", "key_path": ".../id_ed25519" or "" (imported key),
      "nodes": [
        {"name": "demo-control-plane-1", "role": "control-plane", "instance_id": "i-...",
         "private_ip": "10.0.0.5", "public_ip": "3.4.5.6" or "",
         "private_dns": "ip-10-0-0-5.ec2.internal", "ssh_address": "...",
         "availability_zone": "us-east-1a", "state": "running"}
      ]
    }

Nodes are ordered control plane first, then workers, each by launch time and id, so names
stay stable between runs. The file holds no secret (only the key's path).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from clusterbook.aws.tags import ROLE_CONTROL_PLANE, ROLES, tag_dict
from clusterbook.errors import UserInputError
from clusterbook.settings import Settings

logger = logging.getLogger(__name__)

INVENTORY_FILE = "inventory.json"
#: The cluster's region, written when provisioning starts (see ``remember_region``).
REGION_FILE = "region"
FORMAT_VERSION = 1
SSH_USER = "ubuntu"


@dataclass(frozen=True)
class Node:
    name: str
    role: str
    instance_id: str
    private_ip: str
    public_ip: str
    private_dns: str
    ssh_address: str
    availability_zone: str
    state: str


@dataclass(frozen=True)
class Inventory:
    cluster: str
    region: str
    vpc_id: str
    subnet_id: str
    dedicated_vpc: bool
    security_group_id: str
    image_id: str
    image_name: str
    instance_type: str
    os_image: str
    key_name: str
    key_path: str
    nodes: list[Node] = field(default_factory=list)
    ssh_user: str = SSH_USER
    updated_at: str = ""
    version: int = FORMAT_VERSION

    def nodes_of(self, role: str) -> list[Node]:
        return [n for n in self.nodes if n.role == role]

    def as_rows(self) -> list[dict[str, str]]:
        """The node table recorded as a run output."""
        return [
            {
                "name": n.name,
                "role": n.role,
                "instance": n.instance_id,
                "private ip": n.private_ip,
                "public ip": n.public_ip or "-",
                "private dns": n.private_dns,
                "state": n.state,
            }
            for n in self.nodes
        ]

    def summary(self) -> dict[str, Any]:
        """Everything but the nodes, as a recorded output."""
        data = asdict(self)
        data.pop("nodes")
        data["node_count"] = len(self.nodes)
        return data


def build_nodes(
    cluster: str, instances: list[dict[str, Any]], *, ssh_address_of: Any
) -> list[Node]:
    """Node entries from described instances, named and ordered stably."""

    def order(instance: dict[str, Any]) -> tuple[int, str, str]:
        role = tag_dict(instance).get("clusterbook:role", "")
        rank = ROLES.index(role) if role in ROLES else len(ROLES)
        return rank, str(instance.get("LaunchTime", "")), instance["InstanceId"]

    nodes: list[Node] = []
    counters: dict[str, int] = {}
    for instance in sorted(instances, key=order):
        role = tag_dict(instance).get("clusterbook:role", "unknown")
        counters[role] = counters.get(role, 0) + 1
        nodes.append(
            Node(
                name=f"{cluster}-{role}-{counters[role]}",
                role=role,
                instance_id=instance["InstanceId"],
                private_ip=instance.get("PrivateIpAddress") or "",
                public_ip=instance.get("PublicIpAddress") or "",
                private_dns=instance.get("PrivateDnsName") or "",
                ssh_address=ssh_address_of(instance),
                availability_zone=instance.get("Placement", {}).get("AvailabilityZone", ""),
                state=instance["State"]["Name"],
            )
        )
    return nodes


def inventory_path(settings: Settings, cluster: str) -> Path:
    return settings.cluster_dir(cluster) / INVENTORY_FILE


def write_inventory(settings: Settings, inventory: Inventory) -> Path:
    """Write atomically (a reader never sees half a file); returns the path."""
    path = inventory_path(settings, inventory.cluster)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    data = asdict(inventory)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(temporary, path)
    logger.info("inventory of %s written to %s", inventory.cluster, path)
    return path


def read_inventory(settings: Settings, cluster: str) -> Inventory:
    path = inventory_path(settings, cluster)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise UserInputError(
            f"cluster {cluster!r} has no inventory at {path}",
            hint="run 01_provision for it first",
        ) from exc
    if data.get("version") != FORMAT_VERSION:
        raise UserInputError(
            f"inventory {path} has format {data.get('version')}, expected {FORMAT_VERSION}"
        )
    nodes = [Node(**node) for node in data.pop("nodes")]
    return Inventory(nodes=nodes, **data)


def remember_region(settings: Settings, cluster: str, region: str) -> Path:
    """Note the cluster's region before provisioning creates anything: a provision stopped
    before it wrote the inventory still tells a later teardown where to look."""
    path = settings.cluster_dir(cluster) / REGION_FILE
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.write_text(region + "\n")
    return path


def remembered_region(settings: Settings, cluster: str) -> str | None:
    try:
        return (settings.cluster_dir(cluster) / REGION_FILE).read_text().strip() or None
    except FileNotFoundError:
        return None


def forget_region(settings: Settings, cluster: str) -> Path | None:
    path = settings.cluster_dir(cluster) / REGION_FILE
    if not path.exists():
        return None
    path.unlink()
    return path


def remove_inventory(settings: Settings, cluster: str) -> bool:
    path = inventory_path(settings, cluster)
    if not path.exists():
        return False
    path.unlink()
    return True


def control_plane_nodes(inventory: Inventory) -> list[Node]:
    return inventory.nodes_of(ROLE_CONTROL_PLANE)

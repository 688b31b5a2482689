"""Where the nodes live on the network: a VPC and subnet, and the cluster's security group.

VPC modes:
- ``default``: the region's default VPC and its default subnet in the first zone (sorted by
  name), or its first subnet if it has no default ones. Nothing is created; nothing of it
  is ever deleted. If the region has no default VPC, the dedicated mode is used instead
  (logged).
- ``dedicated``: a VPC, one public subnet, an internet gateway and a route table, all tagged
  with the cluster, found again by those tags on a second run.

Security group rules (``wanted_rules``): all traffic between the cluster's own nodes (a rule
whose source is the group itself), SSH (22) and the Kubernetes API (6443) from the admin
CIDR only; with no admin CIDR, from inside the VPC only. ``open_all_traffic=True``
reproduces the reference lab set-up, all traffic from anywhere, and logs why that is risky.
A second run adds missing rules and removes ones no longer wanted.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from clusterbook.aws.errors import translate_aws_errors
from clusterbook.aws.tags import cluster_filter, tag_specifications

logger = logging.getLogger(__name__)

DEDICATED_VPC_CIDR = "10.42.0.0/16"
DEDICATED_SUBNET_CIDR = "10.42.1.0/24"
ANYWHERE = "0.0.0.0/0"

#: A rule as (protocol, from port, to port, source); source is a CIDR or "self".
Rule = tuple[str, int, int, str]


@dataclass(frozen=True)
class NetworkInfo:
    vpc_id: str
    vpc_cidr: str
    subnet_id: str
    availability_zone: str
    #: True when the VPC was made for this cluster (teardown deletes it).
    dedicated: bool


def ensure_network(ec2: Any, *, cluster: str, vpc_mode: str, tags: dict[str, str]) -> NetworkInfo:
    """The VPC and subnet for the nodes, created only in dedicated mode and only if missing."""
    if vpc_mode == "default":
        network = find_default_network(ec2)
        if network is not None:
            return network
        logger.warning("region has no default VPC; creating a dedicated one for %s", cluster)
    return ensure_dedicated_network(ec2, cluster=cluster, tags=tags)


def find_default_network(ec2: Any) -> NetworkInfo | None:
    """The default VPC and one of its subnets: a zone's default subnet if there is one.

    A default VPC whose default subnets were replaced (the sandbox does this to put nodes
    into its own address range) still serves: then its first subnet by zone is used.
    """
    with translate_aws_errors("find the default VPC"):
        vpcs = ec2.describe_vpcs(Filters=[{"Name": "is-default", "Values": ["true"]}])["Vpcs"]
        if not vpcs:
            return None
        vpc = vpcs[0]
        subnets = ec2.describe_subnets(Filters=[{"Name": "vpc-id", "Values": [vpc["VpcId"]]}])[
            "Subnets"
        ]
    if not subnets:
        return None

    subnet = min(
        subnets,
        key=lambda s: (not s.get("DefaultForAz", False), s["AvailabilityZone"], s["CidrBlock"]),
    )
    logger.info(
        "default VPC %s, subnet %s (%s)",
        vpc["VpcId"],
        subnet["SubnetId"],
        subnet["AvailabilityZone"],
    )
    return NetworkInfo(
        vpc_id=vpc["VpcId"],
        vpc_cidr=vpc["CidrBlock"],
        subnet_id=subnet["SubnetId"],
        availability_zone=subnet["AvailabilityZone"],
        dedicated=False,
    )


def ensure_dedicated_network(ec2: Any, *, cluster: str, tags: dict[str, str]) -> NetworkInfo:
    """VPC, public subnet, internet gateway and default route, each created if missing."""
    named = dict(tags, Name=f"{cluster}")
    with translate_aws_errors(f"set up the dedicated VPC of {cluster}"):
        vpc = _find_one(ec2.describe_vpcs, cluster, "Vpcs")
        new_vpc = vpc is None
        if vpc is None:
            vpc = ec2.create_vpc(
                CidrBlock=DEDICATED_VPC_CIDR, TagSpecifications=tag_specifications("vpc", named)
            )["Vpc"]
            ec2.modify_vpc_attribute(VpcId=vpc["VpcId"], EnableDnsHostnames={"Value": True})
            logger.info("created VPC %s", vpc["VpcId"])
        vpc_id = vpc["VpcId"]

        # A VPC made just now has no subnet or route table of ours to find.
        subnet = None
        if not new_vpc:
            subnet = _find_one(ec2.describe_subnets, cluster, "Subnets", vpc_id=vpc_id)
        if subnet is None:
            subnet = ec2.create_subnet(
                VpcId=vpc_id,
                CidrBlock=DEDICATED_SUBNET_CIDR,
                TagSpecifications=tag_specifications("subnet", named),
            )["Subnet"]
            ec2.modify_subnet_attribute(
                SubnetId=subnet["SubnetId"], MapPublicIpOnLaunch={"Value": True}
            )
            logger.info("created subnet %s", subnet["SubnetId"])

        gateway = _find_one(ec2.describe_internet_gateways, cluster, "InternetGateways")
        if gateway is None:
            gateway = ec2.create_internet_gateway(
                TagSpecifications=tag_specifications("internet-gateway", named)
            )["InternetGateway"]
            logger.info("created internet gateway %s", gateway["InternetGatewayId"])
        if not any(a.get("VpcId") == vpc_id for a in gateway.get("Attachments") or []):
            ec2.attach_internet_gateway(
                InternetGatewayId=gateway["InternetGatewayId"], VpcId=vpc_id
            )

        _ensure_route_table(
            ec2,
            cluster=cluster,
            vpc_id=vpc_id,
            subnet_id=subnet["SubnetId"],
            gateway_id=gateway["InternetGatewayId"],
            tags=named,
            look_first=not new_vpc,
        )

    return NetworkInfo(
        vpc_id=vpc_id,
        vpc_cidr=vpc["CidrBlock"],
        subnet_id=subnet["SubnetId"],
        availability_zone=subnet["AvailabilityZone"],
        dedicated=True,
    )


def _ensure_route_table(
    ec2: Any,
    *,
    cluster: str,
    vpc_id: str,
    subnet_id: str,
    gateway_id: str,
    tags: dict[str, str],
    look_first: bool,
) -> None:
    table = None
    if look_first:
        table = _find_one(ec2.describe_route_tables, cluster, "RouteTables", vpc_id=vpc_id)
    if table is None:
        table = ec2.create_route_table(
            VpcId=vpc_id, TagSpecifications=tag_specifications("route-table", tags)
        )["RouteTable"]
        logger.info("created route table %s", table["RouteTableId"])

    table_id = table["RouteTableId"]
    if not any(r.get("DestinationCidrBlock") == ANYWHERE for r in table.get("Routes") or []):
        ec2.create_route(RouteTableId=table_id, DestinationCidrBlock=ANYWHERE, GatewayId=gateway_id)
    if not any(a.get("SubnetId") == subnet_id for a in table.get("Associations") or []):
        ec2.associate_route_table(RouteTableId=table_id, SubnetId=subnet_id)


def _find_one(
    describe: Any, cluster: str, key: str, *, vpc_id: str | None = None
) -> dict[str, Any] | None:
    filters = [cluster_filter(cluster)]
    if vpc_id:
        filters.append({"Name": "vpc-id", "Values": [vpc_id]})
    found = describe(Filters=filters)[key]
    if len(found) > 1:
        logger.warning(
            "%d %s carry the tag of cluster %s; using the first", len(found), key, cluster
        )
    return found[0] if found else None


def security_group_name(cluster: str) -> str:
    return f"clusterbook-{cluster}-nodes"


def wanted_rules(*, admin_cidr: str, vpc_cidr: str, open_all_traffic: bool) -> set[Rule]:
    """The inbound rules the cluster's group should have, and no others."""
    if open_all_traffic:
        logger.warning(
            "open_all_traffic=True: every port of every node is reachable from the whole "
            "internet (the reference lab set-up). Anyone can then try the kubelet, etcd and "
            "SSH; use it only for short-lived throw-away clusters."
        )
        return {("-1", -1, -1, "self"), ("-1", -1, -1, ANYWHERE)}

    source = admin_cidr or vpc_cidr
    return {
        ("-1", -1, -1, "self"),
        ("tcp", 22, 22, source),
        ("tcp", 6443, 6443, source),
    }


def ensure_security_group(
    ec2: Any,
    *,
    cluster: str,
    network: NetworkInfo,
    admin_cidr: str,
    open_all_traffic: bool,
    tags: dict[str, str],
) -> str:
    """The cluster's security group id, with exactly the wanted inbound rules."""
    wanted = wanted_rules(
        admin_cidr=admin_cidr, vpc_cidr=network.vpc_cidr, open_all_traffic=open_all_traffic
    )
    with translate_aws_errors(f"set up the security group of {cluster}"):
        group = _find_one(
            ec2.describe_security_groups, cluster, "SecurityGroups", vpc_id=network.vpc_id
        )
        if group is None:
            group_id = ec2.create_security_group(
                GroupName=security_group_name(cluster),
                Description=f"clusterbook cluster {cluster}: nodes",
                VpcId=network.vpc_id,
                TagSpecifications=tag_specifications(
                    "security-group", dict(tags, Name=security_group_name(cluster))
                ),
            )["GroupId"]
            current: set[Rule] = set()
            logger.info("created security group %s", group_id)
        else:
            group_id = group["GroupId"]
            current = _current_rules(group)

        missing = wanted - current
        extra = current - wanted
        if missing:
            ec2.authorize_security_group_ingress(
                GroupId=group_id, IpPermissions=_permissions(missing, group_id)
            )
        if extra:
            ec2.revoke_security_group_ingress(
                GroupId=group_id, IpPermissions=_permissions(extra, group_id)
            )
    logger.info("security group %s: %d rules added, %d removed", group_id, len(missing), len(extra))
    return group_id


def _current_rules(group: dict[str, Any]) -> set[Rule]:
    rules: set[Rule] = set()
    for permission in group.get("IpPermissions") or []:
        protocol = str(permission.get("IpProtocol"))
        low = int(permission.get("FromPort", -1))
        high = int(permission.get("ToPort", -1))
        if protocol == "-1":
            low, high = -1, -1
        for ip_range in permission.get("IpRanges") or []:
            rules.add((protocol, low, high, ip_range["CidrIp"]))
        for pair in permission.get("UserIdGroupPairs") or []:
            if pair.get("GroupId") == group["GroupId"]:
                rules.add((protocol, low, high, "self"))
    return rules


def _permissions(rules: set[Rule], group_id: str) -> list[dict[str, Any]]:
    permissions = []
    for protocol, low, high, source in sorted(rules):
        permission: dict[str, Any] = {"IpProtocol": protocol}
        if protocol != "-1":
            permission.update(FromPort=low, ToPort=high)
        if source == "self":
            permission["UserIdGroupPairs"] = [{"GroupId": group_id}]
        else:
            permission["IpRanges"] = [{"CidrIp": source}]
        permissions.append(permission)
    return permissions

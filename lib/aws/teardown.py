"""Teardown: remove everything that carries the cluster's tag, then show nothing is left.

Only resources tagged ``clusterbook:cluster=<name>`` are touched: never an untagged one (the
default VPC, for example) and never another cluster's. Each kind is found afresh by tag, so
teardown also works after a provisioning run that stopped half-way, and running it twice is
harmless.

Order (each step needs the one before it): instances (terminate, wait until terminated) ->
left-over volumes -> security groups -> key pairs (and the local private key) -> route
tables -> internet gateways -> subnets -> VPCs -> the inventory file.

Terminated instances keep their tags in AWS for about an hour; the final listing reports
them as terminated, not as remaining.

Known shortcoming: the TTL is a tag only (``clusterbook:expires-at``). Nothing removes an
expired cluster by itself yet; a scheduled job that runs this teardown for clusters past
their expiry would.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from botocore.exceptions import ClientError

from clusterbook.aws.errors import translate_aws_errors, translate_client_error
from clusterbook.aws.instances import describe_instances
from clusterbook.aws.inventory import (
    forget_region,
    inventory_path,
    read_inventory,
    remembered_region,
    remove_inventory,
)
from clusterbook.aws.keys import remove_local_key
from clusterbook.aws.session import AwsClients
from clusterbook.aws.tags import TAG_CLUSTER, cluster_filter
from clusterbook.aws.validate import validate_cluster_name, validate_region
from clusterbook.errors import AwsError, UserInputError
from clusterbook.settings import Settings

logger = logging.getLogger(__name__)

ACTIVE_INSTANCE_STATES = ["pending", "running", "stopping", "stopped", "shutting-down"]


@dataclass
class TeardownReport:
    cluster: str
    #: What was removed: {"type": ..., "id": ...} in the order it happened.
    removed: list[dict[str, str]] = field(default_factory=list)
    #: What still carries the cluster tag afterwards (should be empty).
    remaining: list[dict[str, str]] = field(default_factory=list)
    #: Terminated instances, still tagged in AWS for a while.
    terminated_instances: list[str] = field(default_factory=list)

    def note(self, kind: str, resource_id: str) -> None:
        self.removed.append({"type": kind, "id": resource_id})
        logger.info("removed %s %s", kind, resource_id)


@dataclass(frozen=True)
class TeardownLimits:
    terminated_s: float = 600.0
    dependency_s: float = 300.0
    poll_s: float = 5.0


def check_confirmation(cluster: str, confirm: str) -> None:
    """Refuse before any API call unless the user typed the cluster's name."""
    validate_cluster_name(cluster)
    if confirm != cluster:
        raise UserInputError(
            f"teardown of {cluster!r} not confirmed",
            hint=f"pass confirm={cluster} to delete every resource tagged with this cluster",
        )


def teardown_region(settings: Settings, cluster: str, region: str = "") -> str:
    """The region to tear down in: as given, else the inventory's, else the one a provision
    noted when it started (it may have stopped before writing the inventory), else the
    settings'."""
    if region:
        return validate_region(region)
    try:
        return read_inventory(settings, cluster).region
    except UserInputError:
        return remembered_region(settings, cluster) or settings.aws_region


def check_nothing_left(report: TeardownReport) -> None:
    """Fail loudly if anything still carries the cluster tag."""
    if report.remaining:
        listed = ", ".join(f"{r['type']} {r['id']}" for r in report.remaining)
        raise AwsError(
            f"still tagged with cluster {report.cluster} after teardown: {listed}",
            hint="run the teardown again; if it stays, delete these by hand in the console",
        )


def teardown_cluster(
    aws: AwsClients,
    *,
    settings: Settings,
    cluster: str,
    confirm: str,
    limits: TeardownLimits | None = None,
) -> TeardownReport:
    check_confirmation(cluster, confirm)
    limits = limits or TeardownLimits()
    report = TeardownReport(cluster=cluster)
    ec2 = aws.ec2

    terminate_instances(ec2, cluster=cluster, report=report, limits=limits)
    delete_tagged(
        ec2,
        cluster,
        report,
        limits,
        kind="volume",
        describe=ec2.describe_volumes,
        key="Volumes",
        id_key="VolumeId",
        delete=lambda i: ec2.delete_volume(VolumeId=i),
        keep=lambda v: v.get("State") != "available",
    )
    delete_tagged(
        ec2,
        cluster,
        report,
        limits,
        kind="security-group",
        describe=ec2.describe_security_groups,
        key="SecurityGroups",
        id_key="GroupId",
        delete=lambda i: ec2.delete_security_group(GroupId=i),
    )
    delete_tagged(
        ec2,
        cluster,
        report,
        limits,
        kind="key-pair",
        describe=ec2.describe_key_pairs,
        key="KeyPairs",
        # By name: moto ignores KeyPairId here (and AWS accepts either).
        id_key="KeyName",
        delete=lambda i: ec2.delete_key_pair(KeyName=i),
    )
    for path in remove_local_key(settings.cluster_dir(cluster)):
        report.note("local-key-file", path)

    delete_route_tables(ec2, cluster=cluster, report=report, limits=limits)
    delete_internet_gateways(ec2, cluster=cluster, report=report, limits=limits)
    delete_tagged(
        ec2,
        cluster,
        report,
        limits,
        kind="subnet",
        describe=ec2.describe_subnets,
        key="Subnets",
        id_key="SubnetId",
        delete=lambda i: ec2.delete_subnet(SubnetId=i),
    )
    delete_tagged(
        ec2,
        cluster,
        report,
        limits,
        kind="vpc",
        describe=ec2.describe_vpcs,
        key="Vpcs",
        id_key="VpcId",
        delete=lambda i: ec2.delete_vpc(VpcId=i),
    )

    if remove_inventory(settings, cluster):
        report.note("inventory-file", str(inventory_path(settings, cluster)))
    if (region_file := forget_region(settings, cluster)) is not None:
        report.note("region-file", str(region_file))
    _remove_empty_dir(settings, cluster)

    report.remaining, report.terminated_instances = list_tagged_resources(ec2, cluster)
    logger.info(
        "teardown of %s: %d removed, %d still tagged",
        cluster,
        len(report.removed),
        len(report.remaining),
    )
    return report


def terminate_instances(
    ec2: Any, *, cluster: str, report: TeardownReport, limits: TeardownLimits
) -> None:
    with translate_aws_errors(f"find the instances of {cluster}"):
        ids = _live_instance_ids(ec2, cluster)
    if not ids:
        return

    with translate_aws_errors(f"terminate {len(ids)} instance(s) of {cluster}"):
        ec2.terminate_instances(InstanceIds=ids)
    deadline = time.monotonic() + limits.terminated_s
    while True:
        states = {i["InstanceId"]: i["State"]["Name"] for i in describe_instances(ec2, ids)}
        waiting = sorted(k for k, v in states.items() if v != "terminated")
        if not waiting:
            break
        if time.monotonic() > deadline:
            raise AwsError(
                f"instance(s) not terminated after {limits.terminated_s:.0f} s: "
                + ", ".join(waiting),
                hint="run the teardown again to keep waiting",
            )
        time.sleep(limits.poll_s)
    for instance_id in ids:
        report.note("instance", instance_id)


def delete_tagged(
    ec2: Any,
    cluster: str,
    report: TeardownReport,
    limits: TeardownLimits,
    *,
    kind: str,
    describe: Any,
    key: str,
    id_key: str,
    delete: Any,
    keep: Any = None,
) -> None:
    """Delete every resource of one kind carrying the cluster tag."""
    with translate_aws_errors(f"find the {kind}s of {cluster}"):
        found = describe(Filters=[cluster_filter(cluster)])[key]
    for resource in found:
        if keep is not None and keep(resource):
            continue
        resource_id = resource[id_key]
        _retry_dependency(
            partial(delete, resource_id), what=f"delete {kind} {resource_id}", limits=limits
        )
        report.note(kind, resource_id)


def delete_route_tables(
    ec2: Any, *, cluster: str, report: TeardownReport, limits: TeardownLimits
) -> None:
    with translate_aws_errors(f"find the route tables of {cluster}"):
        tables = ec2.describe_route_tables(Filters=[cluster_filter(cluster)])["RouteTables"]
    for table in tables:
        for association in table.get("Associations") or []:
            if association.get("Main"):
                continue
            with translate_aws_errors(f"detach route table {table['RouteTableId']}"):
                ec2.disassociate_route_table(AssociationId=association["RouteTableAssociationId"])
        table_id = table["RouteTableId"]
        _retry_dependency(
            partial(ec2.delete_route_table, RouteTableId=table_id),
            what=f"delete route table {table_id}",
            limits=limits,
        )
        report.note("route-table", table_id)


def delete_internet_gateways(
    ec2: Any, *, cluster: str, report: TeardownReport, limits: TeardownLimits
) -> None:
    with translate_aws_errors(f"find the internet gateways of {cluster}"):
        gateways = ec2.describe_internet_gateways(Filters=[cluster_filter(cluster)])[
            "InternetGateways"
        ]
    for gateway in gateways:
        gateway_id = gateway["InternetGatewayId"]
        for attachment in gateway.get("Attachments") or []:
            _retry_dependency(
                partial(
                    ec2.detach_internet_gateway,
                    InternetGatewayId=gateway_id,
                    VpcId=attachment["VpcId"],
                ),
                what=f"detach internet gateway {gateway_id}",
                limits=limits,
            )
        _retry_dependency(
            partial(ec2.delete_internet_gateway, InternetGatewayId=gateway_id),
            what=f"delete internet gateway {gateway_id}",
            limits=limits,
        )
        report.note("internet-gateway", gateway_id)


def _retry_dependency(call: Any, *, what: str, limits: TeardownLimits) -> None:
    """Run ``call``; while AWS says something still depends on it, wait and try again.

    Network interfaces of terminated instances take a while to disappear on real AWS.
    """
    deadline = time.monotonic() + limits.dependency_s
    while True:
        try:
            call()
            return
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code.endswith(".NotFound") or code.startswith("InvalidKeyPair.NotFound"):
                return
            if code != "DependencyViolation" or time.monotonic() > deadline:
                raise translate_client_error(exc, action=what) from exc
            logger.info("%s: still in use, retrying in %.0f s", what, limits.poll_s)
            time.sleep(limits.poll_s)


#: Kinds we create, how to list the live ones carrying a tag filter, and their id field.
_KINDS: dict[str, tuple[str, str, str]] = {
    "volume": ("describe_volumes", "Volumes", "VolumeId"),
    "security-group": ("describe_security_groups", "SecurityGroups", "GroupId"),
    "key-pair": ("describe_key_pairs", "KeyPairs", "KeyPairId"),
    "route-table": ("describe_route_tables", "RouteTables", "RouteTableId"),
    "internet-gateway": ("describe_internet_gateways", "InternetGateways", "InternetGatewayId"),
    "subnet": ("describe_subnets", "Subnets", "SubnetId"),
    "vpc": ("describe_vpcs", "Vpcs", "VpcId"),
}


def list_tagged_resources(ec2: Any, cluster: str) -> tuple[list[dict[str, str]], list[str]]:
    """What still carries the cluster tag: (remaining resources, terminated instance ids).

    ``describe_tags`` lists every tagged EC2 resource, including kinds we never create; each
    entry of a kind we know is checked against that kind's own listing, because tags can
    outlive their resource for a while (terminated instances on AWS; deleted resources in
    moto).
    """
    with translate_aws_errors(f"list what carries the tag of {cluster}"):
        pages = ec2.get_paginator("describe_tags").paginate(
            Filters=[
                {"Name": "key", "Values": [TAG_CLUSTER]},
                {"Name": "value", "Values": [cluster]},
            ]
        )
        tagged = [(t["ResourceType"], t["ResourceId"]) for page in pages for t in page["Tags"]]
        live = {("instance", i) for i in _live_instance_ids(ec2, cluster)}
        for kind, (method, key, id_key) in _KINDS.items():
            found = getattr(ec2, method)(Filters=[cluster_filter(cluster)])[key]
            live |= {(kind, resource[id_key]) for resource in found}

    known = set(_KINDS) | {"instance"}
    unknown = {(kind, rid) for kind, rid in tagged if kind not in known}
    terminated = sorted(
        rid for kind, rid in tagged if kind == "instance" and (kind, rid) not in live
    )
    remaining = [{"type": kind, "id": rid} for kind, rid in sorted(live | unknown)]
    return remaining, terminated


def _live_instance_ids(ec2: Any, cluster: str) -> list[str]:
    pages = ec2.get_paginator("describe_instances").paginate(
        Filters=[
            cluster_filter(cluster),
            {"Name": "instance-state-name", "Values": ACTIVE_INSTANCE_STATES},
        ]
    )
    return [i["InstanceId"] for p in pages for r in p["Reservations"] for i in r["Instances"]]


def _remove_empty_dir(settings: Settings, cluster: str) -> None:
    folder = settings.cluster_dir(cluster)
    if folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()

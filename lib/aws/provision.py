"""Provisioning, step by step: what ``01_provision`` runs, in the same order.

The runbook calls the steps itself, one cell each, so the executed notebook documents them;
``provision_cluster`` runs the same steps in one call for tests, benchmarks and scripts.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from clusterbook.aws.images import ImageChoice, resolve_image
from clusterbook.aws.instances import (
    PortProbe,
    WaitLimits,
    ensure_instances,
    ssh_address,
    wait_for_ssh_port,
    wait_until_running,
    wait_until_status_ok,
)
from clusterbook.aws.inventory import Inventory, build_nodes, remember_region, write_inventory
from clusterbook.aws.keys import KeyInfo, ensure_key_pair
from clusterbook.aws.network import NetworkInfo, ensure_network, ensure_security_group
from clusterbook.aws.session import AwsClients, make_clients
from clusterbook.aws.tags import build_cluster_tags
from clusterbook.aws.validate import ClusterSpec, check_sandbox_fit, check_ssh_reach
from clusterbook.settings import Settings

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class WaitOptions:
    limits: WaitLimits = field(default_factory=WaitLimits)
    #: Off in tests without reachable hosts: moto's addresses belong to strangers.
    wait_for_ssh: bool = True
    probe: PortProbe | None = None
    ssh_port: int = 22


def cluster_tags(spec: ClusterSpec, *, run_id: str) -> dict[str, str]:
    return build_cluster_tags(
        cluster=spec.cluster,
        owner=spec.owner,
        created_by=f"clusterbook run {run_id}",
        ttl_hours=spec.ttl_hours,
    )


def wait_for_nodes(
    ec2: Any, instance_ids: list[str], *, settings: Settings, options: WaitOptions
) -> list[dict[str, Any]]:
    """running -> status checks ok -> SSH port open; returns the instances' descriptions."""
    instances = wait_until_running(ec2, instance_ids, limits=options.limits)
    wait_until_status_ok(ec2, instance_ids, limits=options.limits)

    if not options.wait_for_ssh:
        logger.info("not waiting for the SSH port (wait_for_ssh is off)")
    elif settings.ssh_address == "bastion":
        # Shortcoming: reaching the port through the bastion needs an SSH tunnel; the
        # bootstrap's own connection retries instead.
        logger.info("not probing SSH directly: nodes are reached through the bastion")
    else:
        addresses = {i["InstanceId"]: ssh_address(i, settings) for i in instances}
        wait_for_ssh_port(
            addresses, limits=options.limits, port=options.ssh_port, probe=options.probe
        )
    return instances


def build_inventory(
    *,
    spec: ClusterSpec,
    settings: Settings,
    instances: list[dict[str, Any]],
    image: ImageChoice,
    network: NetworkInfo,
    security_group_id: str,
    key: KeyInfo,
) -> Inventory:
    return Inventory(
        updated_at=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        cluster=spec.cluster,
        region=spec.region,
        vpc_id=network.vpc_id,
        subnet_id=network.subnet_id,
        dedicated_vpc=network.dedicated,
        security_group_id=security_group_id,
        image_id=image.image_id,
        image_name=image.name,
        instance_type=spec.instance_type,
        os_image=spec.os_image,
        key_name=key.name,
        key_path=key.private_key_path,
        nodes=build_nodes(
            spec.cluster, instances, ssh_address_of=lambda i: ssh_address(i, settings)
        ),
    )


@dataclass(frozen=True)
class LaunchedCluster:
    """What the create steps made or found, before waiting for the nodes."""

    image: ImageChoice
    network: NetworkInfo
    security_group_id: str
    key: KeyInfo
    instance_ids: list[str]


def launch_cluster(
    settings: Settings, spec: ClusterSpec, *, run_id: str, clients: AwsClients
) -> LaunchedCluster:
    """Image, network, security group, key pair, instances: each found, else created."""
    aws = clients
    tags = cluster_tags(spec, run_id=run_id)

    image = resolve_image(aws.ec2, aws.ssm, os_image=spec.os_image, ami_id=spec.ami_id)
    network = ensure_network(aws.ec2, cluster=spec.cluster, vpc_mode=spec.vpc_mode, tags=tags)
    group_id = ensure_security_group(
        aws.ec2,
        cluster=spec.cluster,
        network=network,
        admin_cidr=spec.admin_cidr,
        open_all_traffic=spec.open_all_traffic,
        tags=tags,
    )
    key = ensure_key_pair(
        aws.ec2,
        cluster=spec.cluster,
        cluster_dir=settings.cluster_dir(spec.cluster),
        public_key=spec.public_key,
        tags=tags,
    )
    instance_ids = ensure_instances(
        aws.ec2,
        spec=spec,
        image=image,
        network=network,
        security_group_id=group_id,
        key_name=key.name,
        tags=tags,
        run_id=run_id,
    )
    return LaunchedCluster(image, network, group_id, key, instance_ids)


def provision_cluster(
    settings: Settings,
    spec: ClusterSpec,
    *,
    run_id: str,
    options: WaitOptions | None = None,
    clients: AwsClients | None = None,
) -> Inventory:
    """Every provisioning step in order; safe to run again (it finds what exists)."""
    options = options or WaitOptions()
    check_ssh_reach(spec, ssh_address=settings.ssh_address, wait_for_ssh=options.wait_for_ssh)
    check_sandbox_fit(
        spec,
        sandbox=settings.sandbox,
        sandbox_region=settings.aws_region,
        wait_for_ssh=options.wait_for_ssh,
    )
    aws = clients or make_clients(settings, region=spec.region)
    remember_region(settings, spec.cluster, spec.region)

    launched = launch_cluster(settings, spec, run_id=run_id, clients=aws)
    instances = wait_for_nodes(aws.ec2, launched.instance_ids, settings=settings, options=options)

    inventory = build_inventory(
        spec=spec,
        settings=settings,
        instances=instances,
        image=launched.image,
        network=launched.network,
        security_group_id=launched.security_group_id,
        key=launched.key,
    )
    write_inventory(settings, inventory)
    return inventory

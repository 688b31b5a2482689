"""The cluster's EC2 instances: discovery by tags, launch, and the waits until SSH answers.

Launch: one RunInstances call per role for the nodes that are missing, with the cluster's
tags on the instances and their volumes, an encrypted gp3 root volume, IMDSv2 required and a
ClientToken (so a retried call after a lost answer does not launch twice on real AWS).
Idempotency across runs does not rely on the token (moto ignores it): every run first finds
the cluster's instances by tag and launches only what is missing.

Waits, each with a time limit and an error naming the instances still not there:
running -> both status checks ok -> the SSH port accepts a connection at the address the
settings choose (``ssh_address``). The SSH wait is optional (``wait_for_ssh``) and its probe
pluggable, because in tests the addresses moto invents belong to strangers and must never be
contacted.
"""

from __future__ import annotations

import hashlib
import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from clusterbook.aws.errors import translate_aws_errors
from clusterbook.aws.images import ImageChoice
from clusterbook.aws.network import NetworkInfo
from clusterbook.aws.tags import (
    ROLE_CONTROL_PLANE,
    ROLE_WORKER,
    TAG_ROLE,
    cluster_filter,
    tag_dict,
    tag_list,
)
from clusterbook.aws.validate import ClusterSpec
from clusterbook.errors import AwsError, HostError
from clusterbook.settings import Settings

logger = logging.getLogger(__name__)

LIVE_STATES = ["pending", "running", "stopping", "stopped"]
#: Containers on the nodes reach the metadata service through one more network hop.
IMDS_HOP_LIMIT = 2
SSH_PORT = 22
NOT_VISIBLE_YET = "InvalidInstanceID.NotFound"

#: A probe says whether something accepts TCP connections at (address, port).
PortProbe = Callable[[str, int], bool]


@dataclass(frozen=True)
class WaitLimits:
    running_s: float = 300.0
    status_ok_s: float = 600.0
    ssh_s: float = 300.0
    poll_s: float = 5.0


def find_cluster_instances(ec2: Any, cluster: str) -> list[dict[str, Any]]:
    """The cluster's instances that are not terminated (or terminating)."""
    with translate_aws_errors(f"list the instances of {cluster}"):
        pages = ec2.get_paginator("describe_instances").paginate(
            Filters=[
                cluster_filter(cluster),
                {"Name": "instance-state-name", "Values": LIVE_STATES},
            ]
        )
        return [i for page in pages for r in page["Reservations"] for i in r["Instances"]]


def role_of(instance: dict[str, Any]) -> str:
    return tag_dict(instance).get(TAG_ROLE, "")


def ensure_instances(
    ec2: Any,
    *,
    spec: ClusterSpec,
    image: ImageChoice,
    network: NetworkInfo,
    security_group_id: str,
    key_name: str,
    tags: dict[str, str],
    run_id: str,
) -> list[str]:
    """Ids of the cluster's instances, launching only the ones missing for each role."""
    existing = find_cluster_instances(ec2, spec.cluster)
    wanted = {ROLE_CONTROL_PLANE: spec.control_plane_count, ROLE_WORKER: spec.worker_count}
    ids = [i["InstanceId"] for i in existing]

    stopped = [i["InstanceId"] for i in existing if i["State"]["Name"] == "stopped"]
    if stopped:
        with translate_aws_errors(f"start the stopped instances {', '.join(stopped)}"):
            ec2.start_instances(InstanceIds=stopped)
        logger.info("started stopped instances %s", ", ".join(stopped))

    for role, count in wanted.items():
        have = [i for i in existing if role_of(i) == role]
        if len(have) > count:
            logger.warning(
                "%s has %d %s nodes, more than the %d asked; keeping them",
                spec.cluster,
                len(have),
                role,
                count,
            )
        missing = count - len(have)
        if missing <= 0:
            logger.info("%s: %d %s node(s) already there", spec.cluster, len(have), role)
            continue
        ids += launch_instances(
            ec2,
            spec=spec,
            role=role,
            count=missing,
            image=image,
            network=network,
            security_group_id=security_group_id,
            key_name=key_name,
            tags=tags,
            client_token=client_token(spec.cluster, role, run_id, len(have)),
        )
    return ids


def client_token(cluster: str, role: str, run_id: str, existing: int) -> str:
    """Same run, same role, same starting point -> same token (at most 64 characters)."""
    digest = hashlib.sha256(f"{cluster}/{role}/{run_id}/{existing}".encode()).hexdigest()
    return f"cb-{digest[:40]}"


def launch_instances(
    ec2: Any,
    *,
    spec: ClusterSpec,
    role: str,
    count: int,
    image: ImageChoice,
    network: NetworkInfo,
    security_group_id: str,
    key_name: str,
    tags: dict[str, str],
    client_token: str,
) -> list[str]:
    """One RunInstances call for ``count`` nodes of ``role``; returns their ids."""
    node_tags = dict(tags, **{TAG_ROLE: role, "Name": f"{spec.cluster}-{role}"})
    with translate_aws_errors(f"launch {count} {spec.instance_type} {role} node(s)"):
        reservation = ec2.run_instances(
            ImageId=image.image_id,
            InstanceType=spec.instance_type,
            MinCount=count,
            MaxCount=count,
            KeyName=key_name,
            SubnetId=network.subnet_id,
            SecurityGroupIds=[security_group_id],
            BlockDeviceMappings=[
                {
                    "DeviceName": image.root_device_name,
                    "Ebs": {
                        "VolumeSize": spec.volume_gib,
                        "VolumeType": "gp3",
                        "Encrypted": True,
                        "DeleteOnTermination": True,
                    },
                }
            ],
            MetadataOptions={
                "HttpTokens": "required",
                "HttpEndpoint": "enabled",
                "HttpPutResponseHopLimit": IMDS_HOP_LIMIT,
            },
            TagSpecifications=[
                {"ResourceType": "instance", "Tags": tag_list(node_tags)},
                {"ResourceType": "volume", "Tags": tag_list(node_tags)},
            ],
            ClientToken=client_token,
        )
    ids = [i["InstanceId"] for i in reservation["Instances"]]
    logger.info("launched %d %s node(s): %s", len(ids), role, ", ".join(ids))
    return ids


def describe_instances(ec2: Any, instance_ids: list[str]) -> list[dict[str, Any]]:
    with translate_aws_errors("describe the cluster's instances"):
        pages = ec2.get_paginator("describe_instances").paginate(InstanceIds=instance_ids)
        return [i for page in pages for r in page["Reservations"] for i in r["Instances"]]


def _describe_when_visible(ec2: Any, instance_ids: list[str]) -> list[dict[str, Any]]:
    """Describe, treating "no such instance" as "not visible yet".

    EC2 is eventually consistent: right after RunInstances, describing the new ids can fail
    with InvalidInstanceID.NotFound for a few seconds.
    """
    try:
        return describe_instances(ec2, instance_ids)
    except AwsError as exc:
        if exc.code != NOT_VISIBLE_YET:
            raise
        logger.info("instances not visible yet (%s); waiting", exc.code)
        return []


def wait_until_running(
    ec2: Any, instance_ids: list[str], *, limits: WaitLimits
) -> list[dict[str, Any]]:
    """Poll until every instance is running; returns their descriptions."""
    deadline = time.monotonic() + limits.running_s
    while True:
        instances = _describe_when_visible(ec2, instance_ids)
        states = {i["InstanceId"]: i["State"]["Name"] for i in instances}
        states.update({k: "not visible yet" for k in instance_ids if k not in states})
        dead = {k: v for k, v in states.items() if v in ("shutting-down", "terminated")}
        if dead:
            raise AwsError(
                "instance(s) ended while starting: "
                + ", ".join(f"{k} ({v})" for k, v in sorted(dead.items())),
                hint="look at the instance's state reason in the EC2 console, then run again",
            )
        waiting = sorted(k for k, v in states.items() if v != "running")
        if not waiting:
            logger.info("all %d instances are running", len(instances))
            return instances
        stopped = sorted(k for k, v in states.items() if v == "stopped")
        if stopped:
            # Found "stopping" by the provision, they have stopped since: start them, as it
            # starts the stopped ones it finds.
            with translate_aws_errors(f"start the stopped instances {', '.join(stopped)}"):
                ec2.start_instances(InstanceIds=stopped)
            logger.info("started instances that had finished stopping: %s", ", ".join(stopped))
        if time.monotonic() > deadline:
            raise AwsError(
                f"instance(s) not running after {limits.running_s:.0f} s: {', '.join(waiting)}",
                hint="run again to keep waiting (nothing is launched twice)",
            )
        time.sleep(limits.poll_s)


def wait_until_status_ok(ec2: Any, instance_ids: list[str], *, limits: WaitLimits) -> None:
    """Poll until both EC2 status checks (system and instance) pass for every instance."""
    deadline = time.monotonic() + limits.status_ok_s
    while True:
        try:
            with translate_aws_errors("read the instances' status checks"):
                statuses = ec2.describe_instance_status(
                    InstanceIds=instance_ids, IncludeAllInstances=True
                )["InstanceStatuses"]
        except AwsError as exc:
            if exc.code != NOT_VISIBLE_YET:
                raise
            statuses = []
        checks = {
            s["InstanceId"]: (s["SystemStatus"]["Status"], s["InstanceStatus"]["Status"])
            for s in statuses
        }
        failed = sorted(k for k, v in checks.items() if "impaired" in v)
        if failed:
            raise AwsError(
                f"status checks failed (impaired) for {', '.join(failed)}",
                hint="terminate those instances (04_teardown) and provision again",
            )
        waiting = sorted(k for k in instance_ids if checks.get(k) != ("ok", "ok"))
        if not waiting:
            logger.info("status checks ok for all %d instances", len(instance_ids))
            return
        if time.monotonic() > deadline:
            raise AwsError(
                f"status checks not ok after {limits.status_ok_s:.0f} s: {', '.join(waiting)}",
                hint="run again to keep waiting (nothing is launched twice)",
            )
        time.sleep(limits.poll_s)


def ssh_address(instance: dict[str, Any], settings: Settings) -> str:
    """The address Fabric will connect to, following ``settings.ssh_address``."""
    if settings.ssh_address == "public":
        return instance.get("PublicIpAddress") or ""
    return instance.get("PrivateIpAddress") or ""


def probe_tcp_port(address: str, port: int, *, timeout_s: float = 3.0) -> bool:
    try:
        with socket.create_connection((address, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def wait_for_ssh_port(
    addresses: dict[str, str],
    *,
    limits: WaitLimits,
    port: int = SSH_PORT,
    probe: PortProbe | None = None,
) -> None:
    """Wait until every instance (id -> address) accepts TCP connections on the SSH port."""
    probe = probe or probe_tcp_port
    no_address = sorted(k for k, v in addresses.items() if not v)
    if no_address:
        raise HostError(
            f"instance(s) have no address to reach SSH on: {', '.join(no_address)}",
            hint="with ssh_address=public the subnet must give public addresses; or use "
            "ssh_address=private from inside the VPC",
        )

    deadline = time.monotonic() + limits.ssh_s
    waiting = dict(addresses)
    while True:
        waiting = {k: v for k, v in waiting.items() if not probe(v, port)}
        if not waiting:
            logger.info("SSH port %d answers on all %d nodes", port, len(addresses))
            return
        if time.monotonic() > deadline:
            names = ", ".join(f"{k} ({v})" for k, v in sorted(waiting.items()))
            raise HostError(
                f"SSH port {port} not reachable after {limits.ssh_s:.0f} s on {names}",
                host=next(iter(waiting.values())),
                hint="check the security group allows 22 from your address (admin_cidr) "
                "and that your network reaches the node",
            )
        time.sleep(limits.poll_s)

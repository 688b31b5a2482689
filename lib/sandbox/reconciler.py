"""Keeps the sandbox's hosts in step with the instances its EC2 (moto) reports.

Each pass reads every instance and acts on its state, as EC2 would on real machines:

    pending, running         -> a booted host at the instance's private IP
    stopping, stopped        -> the host powered off; its disk layer is kept
    shutting-down, terminated, or gone from EC2 -> the host destroyed (machine, disk, keys)

Also here: ``prepare_sandbox_vpc`` gives moto's default VPC the sandbox's own range. moto
builds its default VPC from a fixed 172.31.0.0/16 and offers no way to change it, so the
sandbox associates its checked range with that VPC as a secondary block and replaces the
default subnets with subnets in it. Products that launch into a default subnet (by id) then
get private addresses the sandbox network can serve.

Known shortcoming: an instance launched without a subnet id gets an address moto makes up
anywhere in 10.0.0.0/8, usually outside the sandbox range; such an instance gets no host,
and the reconciler says so once in its log. Likewise an instance in a VPC the product made
itself (with another range).
"""

from __future__ import annotations

import ipaddress
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from clusterbook.errors import AwsError, ClusterbookError
from clusterbook.sandbox import hosts, network
from clusterbook.sandbox.image import BaseImage

logger = logging.getLogger(__name__)

RUNNING_STATES = ("pending", "running")
STOPPED_STATES = ("stopping", "stopped")
#: Size of the default subnets the sandbox makes in its range, as in AWS's default VPC.
DEFAULT_SUBNET_PREFIX = 20
#: A machine that died on its own is booted again, up to this many boots in all.
MAX_BOOTS_WHILE_RUNNING = 3


@dataclass
class PassReport:
    """What one reconcile pass did."""

    booted: list[str] = field(default_factory=list)
    powered_off: list[str] = field(default_factory=list)
    destroyed: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)

    def changed(self) -> bool:
        return bool(self.booted or self.powered_off or self.destroyed)


def prepare_sandbox_vpc(ec2: Any, *, cidr: str) -> str:
    """Put the default VPC's default subnets into ``cidr``; returns the VPC id. Idempotent."""
    try:
        vpcs = ec2.describe_vpcs(Filters=[{"Name": "is-default", "Values": ["true"]}])["Vpcs"]
        if not vpcs:
            raise ClusterbookError("the sandbox EC2 has no default VPC to prepare")
        vpc_id = vpcs[0]["VpcId"]
        blocks = [a["CidrBlock"] for a in vpcs[0].get("CidrBlockAssociationSet", [])]
        if cidr not in blocks:
            ec2.associate_vpc_cidr_block(VpcId=vpc_id, CidrBlock=cidr)

        subnets = ec2.describe_subnets(Filters=[{"Name": "vpc-id", "Values": [vpc_id]}])["Subnets"]
        network_range = ipaddress.ip_network(cidr)
        zones = sorted({s["AvailabilityZone"] for s in subnets})
        for subnet in subnets:
            if not ipaddress.ip_network(subnet["CidrBlock"]).subnet_of(network_range):
                ec2.delete_subnet(SubnetId=subnet["SubnetId"])

        taken = {
            s["AvailabilityZone"]
            for s in subnets
            if ipaddress.ip_network(s["CidrBlock"]).subnet_of(network_range)
        }
        blocks_free = list(network_range.subnets(new_prefix=DEFAULT_SUBNET_PREFIX))
        for index, zone in enumerate(zones):
            if zone not in taken:
                ec2.create_subnet(
                    VpcId=vpc_id, CidrBlock=str(blocks_free[index]), AvailabilityZone=zone
                )
    except (BotoCoreError, ClientError) as exc:
        raise AwsError(f"preparing the sandbox VPC failed: {exc}") from exc

    logger.info("sandbox default VPC %s now serves %s in %d zones", vpc_id, cidr, len(zones))
    return vpc_id


class Reconciler:
    """Turns EC2 instance states into booted, stopped or destroyed hosts."""

    def __init__(self, *, ec2: Any, image: BaseImage, sandbox_dir: Path, cidr: str) -> None:
        self.ec2 = ec2
        self.image = image
        self.sandbox_dir = sandbox_dir
        self.cidr = cidr
        self.names = network.SandboxNames.for_folder(sandbox_dir)
        self._warned: set[str] = set()
        #: Boots since the instance last entered a running state; a machine that keeps
        #: dying is not booted forever.
        self._boots: dict[str, int] = {}

    def run(self, stop: threading.Event, *, interval_s: float = 0.5) -> None:
        """Reconcile until ``stop`` is set; a failed pass is logged, not fatal."""
        while not stop.is_set():
            try:
                self.reconcile_once()
            except ClusterbookError as exc:
                logger.error("reconcile pass failed: %s", exc)
            except Exception:  # a daemon keeps serving; the next pass may well succeed
                logger.exception("reconcile pass failed unexpectedly")
            stop.wait(interval_s)

    def reconcile_once(self) -> PassReport:
        report = PassReport()
        instances = self._describe_instances()
        seen_addresses: dict[str, str] = {}
        to_power_off, to_destroy = [], []

        for instance in instances:
            instance_id = instance["InstanceId"]
            state = instance["State"]["Name"]
            if state in RUNNING_STATES:
                address = instance.get("PrivateIpAddress", "")
                refusal = self._refusal(instance_id, address, seen_addresses)
                if refusal:
                    report.refused.append(instance_id)
                    self._warn_once(instance_id, refusal)
                    continue
                seen_addresses[address] = instance_id
                if hosts.running_pid(self.sandbox_dir, instance_id) is not None:
                    continue
                if self._boots.get(instance_id, 0) >= MAX_BOOTS_WHILE_RUNNING:
                    report.refused.append(instance_id)
                    self._warn_once(instance_id, self._crash_reason(instance_id))
                    continue
                self._boots[instance_id] = self._boots.get(instance_id, 0) + 1
                try:
                    self._boot(instance)
                except Exception as exc:  # noqa: BLE001 - one bad machine must not stall the rest
                    logger.error("booting %s failed (attempt %d): %s", instance_id,
                                 self._boots[instance_id], exc)
                    report.refused.append(instance_id)
                    continue
                report.booted.append(instance_id)
            elif state in STOPPED_STATES:
                self._boots.pop(instance_id, None)
                to_power_off.append(instance_id)
            elif instance_id in hosts.list_hosts(self.sandbox_dir):
                self._boots.pop(instance_id, None)
                to_destroy.append(instance_id)

        known = {instance["InstanceId"] for instance in instances}
        to_destroy += [i for i in hosts.list_hosts(self.sandbox_dir) if i not in known]

        # Power machines off together: each takes a second or two to shut down cleanly.
        stopped = hosts.power_off_hosts(self.sandbox_dir, to_power_off + to_destroy)
        for instance_id in to_power_off:
            if instance_id in stopped:
                network.detach_host(instance_id, names=self.names)
                report.powered_off.append(instance_id)
        for instance_id in to_destroy:
            self._destroy(instance_id)
            report.destroyed.append(instance_id)

        if report.changed():
            logger.info(
                "reconciled: booted %s, powered off %s, destroyed %s",
                report.booted or "-",
                report.powered_off or "-",
                report.destroyed or "-",
            )
        return report

    def destroy_all(self) -> None:
        """Destroy every host (used when the sandbox goes down)."""
        every_host = hosts.list_hosts(self.sandbox_dir)
        hosts.power_off_hosts(self.sandbox_dir, every_host)
        for instance_id in every_host:
            self._destroy(instance_id)

    def _boot(self, instance: dict[str, Any]) -> None:
        instance_id = instance["InstanceId"]
        spec = hosts.HostSpec(
            instance_id=instance_id,
            private_ip=instance["PrivateIpAddress"],
            dns_name=instance.get("PrivateDnsName") or instance_id,
            authorized_key=self._public_key(instance.get("KeyName")),
        )
        hosts.prepare_host(spec, image=self.image, sandbox_dir=self.sandbox_dir)
        netns_path = network.attach_host(
            names=self.names, instance_id=instance_id, address=spec.private_ip, cidr=self.cidr
        )
        hosts.boot_host(spec, image=self.image, sandbox_dir=self.sandbox_dir, netns_path=netns_path)

    def _destroy(self, instance_id: str) -> None:
        # Machine first, then its network, then its folder: the folder is what `status` shows.
        hosts.power_off_hosts(self.sandbox_dir, [instance_id])
        network.detach_host(instance_id, names=self.names)
        hosts.destroy_host(self.sandbox_dir, instance_id)

    def _refusal(self, instance_id: str, address: str, seen: dict[str, str]) -> str | None:
        if not address:
            return "has no private IP address"
        if ipaddress.ip_address(address) not in ipaddress.ip_network(self.cidr):
            return (
                f"has private IP {address}, outside the sandbox VPC range {self.cidr} "
                "(launch it into one of the default VPC's subnets)"
            )
        if address == network.gateway_address(self.cidr):
            return f"has the sandbox gateway's address {address}"
        if address in seen:
            return f"has the same private IP {address} as {seen[address]}"
        return None

    def _crash_reason(self, instance_id: str) -> str:
        console = hosts.host_dir(self.sandbox_dir, instance_id) / "console.log"
        try:
            tail = console.read_text(errors="replace").strip().splitlines()[-5:]
        except OSError:
            tail = []
        return (
            f"stopped by itself {MAX_BOOTS_WHILE_RUNNING} times; last console lines "
            f"({console}):\n" + "\n".join(tail)
        )

    def _warn_once(self, instance_id: str, reason: str) -> None:
        if instance_id not in self._warned:
            self._warned.add(instance_id)
            logger.error("instance %s gets no sandbox host: it %s", instance_id, reason)

    def _public_key(self, key_name: str | None) -> str | None:
        if not key_name:
            return None
        try:
            pairs = self.ec2.describe_key_pairs(KeyNames=[key_name], IncludePublicKey=True)
        except ClientError as exc:
            logger.warning("key pair %s of an instance is unreadable: %s", key_name, exc)
            return None
        return pairs["KeyPairs"][0].get("PublicKey")

    def _describe_instances(self) -> list[dict[str, Any]]:
        try:
            pages = self.ec2.get_paginator("describe_instances").paginate()
            return [i for page in pages for r in page["Reservations"] for i in r["Instances"]]
        except (BotoCoreError, ClientError) as exc:
            raise AwsError(f"the sandbox EC2 did not list its instances: {exc}") from exc

"""Provisioning against moto in server mode, read back by an independent client (AWS CLI)."""

from __future__ import annotations

import socket
import stat
import threading
from pathlib import Path
from typing import Any

import pytest

from clusterbook.aws.instances import WaitLimits, find_cluster_instances
from clusterbook.aws.inventory import read_inventory
from clusterbook.aws.provision import WaitOptions, provision_cluster
from clusterbook.aws.tags import TAG_CLUSTER, TAG_CREATED_BY, TAG_OWNER, TAG_ROLE, TAG_TTL_HOURS
from clusterbook.aws.validate import validate_cluster_spec
from clusterbook.errors import HostError, UserInputError
from clusterbook.sandbox.moto import NEWEST_UBUNTU_AMIS
from fixtures.aws import REGION


def make_spec(**changes: Any) -> Any:
    params = {
        "cluster": "demo",
        "region": REGION,
        "admin_cidr": "203.0.113.7/32",
        "owner": "alice",
        **changes,
    }
    return validate_cluster_spec(**params)


def tags_of(resource: dict[str, Any]) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in resource.get("Tags") or []}


def test_instances_match_the_request_as_the_aws_cli_sees_them(
    aws_settings: Any, aws_cli: Any, fast_waits: WaitOptions
) -> None:
    inventory = provision_cluster(aws_settings, make_spec(), run_id="run-1", options=fast_waits)

    described = aws_cli(
        "ec2", "describe-instances", "--instance-ids", *[n.instance_id for n in inventory.nodes]
    )
    instances = [i for r in described["Reservations"] for i in r["Instances"]]
    assert len(instances) == 2
    for instance in instances:
        assert instance["InstanceType"] == "m5a.large"
        assert instance["ImageId"] == NEWEST_UBUNTU_AMIS["ubuntu-24.04"]
        assert instance["MetadataOptions"]["HttpTokens"] == "required"
        assert instance["KeyName"] == "clusterbook-demo"
        tags = tags_of(instance)
        assert tags[TAG_CLUSTER] == "demo"
        assert tags[TAG_OWNER] == "alice"
        assert tags[TAG_TTL_HOURS] == "8"
        assert "run-1" in tags[TAG_CREATED_BY]
    assert sorted(tags_of(i)[TAG_ROLE] for i in instances) == ["control-plane", "worker"]

    volumes = aws_cli(
        "ec2",
        "describe-volumes",
        "--filters",
        f"Name=attachment.instance-id,Values={instances[0]['InstanceId']}",
    )
    volume = volumes["Volumes"][0]
    assert (volume["Size"], volume["VolumeType"], volume["Encrypted"]) == (20, "gp3", True)
    assert tags_of(volume)[TAG_CLUSTER] == "demo"


def test_security_group_allows_admin_cidr_and_the_cluster_itself_only(
    aws_settings: Any, aws_cli: Any, fast_waits: WaitOptions
) -> None:
    inventory = provision_cluster(aws_settings, make_spec(), run_id="run-1", options=fast_waits)

    group = aws_cli("ec2", "describe-security-groups", "--group-ids", inventory.security_group_id)[
        "SecurityGroups"
    ][0]
    rules = set()
    for permission in group["IpPermissions"]:
        for ip_range in permission.get("IpRanges", []):
            rules.add((permission["IpProtocol"], permission.get("FromPort"), ip_range["CidrIp"]))
        for pair in permission.get("UserIdGroupPairs", []):
            rules.add((permission["IpProtocol"], permission.get("FromPort"), pair["GroupId"]))
    assert rules == {
        ("-1", None, inventory.security_group_id),
        ("tcp", 22, "203.0.113.7/32"),
        ("tcp", 6443, "203.0.113.7/32"),
    }
    assert tags_of(group)[TAG_CLUSTER] == "demo"


def test_open_all_traffic_opens_everything_and_says_why_it_is_risky(
    aws_settings: Any, aws_cli: Any, fast_waits: WaitOptions, caplog: pytest.LogCaptureFixture
) -> None:
    spec = make_spec(open_all_traffic=True)

    inventory = provision_cluster(aws_settings, spec, run_id="run-1", options=fast_waits)

    group = aws_cli("ec2", "describe-security-groups", "--group-ids", inventory.security_group_id)[
        "SecurityGroups"
    ][0]
    cidrs = {r["CidrIp"] for p in group["IpPermissions"] for r in p.get("IpRanges", [])}
    assert cidrs == {"0.0.0.0/0"}
    assert any(
        "open_all_traffic=True" in r.getMessage() and r.levelname == "WARNING"
        for r in caplog.records
    )


def test_second_run_finds_the_same_instances_and_creates_nothing(
    aws_settings: Any, aws_clients: Any, fast_waits: WaitOptions
) -> None:
    first = provision_cluster(aws_settings, make_spec(), run_id="run-1", options=fast_waits)
    calls: list[str] = []
    aws_clients.on_every_call(lambda model, **_: calls.append(model.name))

    second = provision_cluster(
        aws_settings, make_spec(), run_id="run-2", options=fast_waits, clients=aws_clients
    )

    assert [n.instance_id for n in second.nodes] == [n.instance_id for n in first.nodes]
    assert second.security_group_id == first.security_group_id
    assert not [c for c in calls if c.startswith(("Create", "Run", "Import", "Authorize"))]
    assert len(find_cluster_instances(aws_clients.ec2, "demo")) == 2


def test_growing_the_worker_count_launches_only_the_missing_workers(
    aws_settings: Any, fast_waits: WaitOptions
) -> None:
    first = provision_cluster(aws_settings, make_spec(), run_id="run-1", options=fast_waits)

    grown = provision_cluster(
        aws_settings, make_spec(worker_count=3), run_id="run-2", options=fast_waits
    )

    assert len(grown.nodes) == 4
    assert {n.instance_id for n in first.nodes} <= {n.instance_id for n in grown.nodes}
    assert [n.name for n in grown.nodes] == [
        "demo-control-plane-1",
        "demo-worker-1",
        "demo-worker-2",
        "demo-worker-3",
    ]


def test_inventory_is_written_for_the_bootstrap_runbook(
    aws_settings: Any, fast_waits: WaitOptions
) -> None:
    made = provision_cluster(aws_settings, make_spec(), run_id="run-1", options=fast_waits)

    stored = read_inventory(aws_settings, "demo")

    assert stored.nodes == made.nodes
    assert stored.key_path == str(aws_settings.cluster_dir("demo") / "id_ed25519")
    assert all(n.private_ip and n.private_dns for n in stored.nodes)
    assert all(n.ssh_address == n.private_ip for n in stored.nodes)  # ssh_address=private


def test_private_key_is_mode_0600_and_absent_from_the_inventory(
    aws_settings: Any, fast_waits: WaitOptions
) -> None:
    provision_cluster(aws_settings, make_spec(), run_id="run-1", options=fast_waits)
    key_file = aws_settings.cluster_dir("demo") / "id_ed25519"

    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    material = key_file.read_text()
    assert material.startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    inventory_text = (aws_settings.cluster_dir("demo") / "inventory.json").read_text()
    body = material.splitlines()[1]
    assert body not in inventory_text


def test_imported_public_key_is_used_and_no_private_key_is_written(
    aws_settings: Any, aws_cli: Any, fast_waits: WaitOptions
) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    public = (
        Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
    )

    inventory = provision_cluster(
        aws_settings,
        make_spec(public_key=public + " me@laptop"),
        run_id="run-1",
        options=fast_waits,
    )

    assert inventory.key_path == ""
    assert not (aws_settings.cluster_dir("demo") / "id_ed25519").exists()
    pairs = aws_cli(
        "ec2", "describe-key-pairs", "--key-names", "clusterbook-demo", "--include-public-key"
    )["KeyPairs"]
    assert pairs[0]["PublicKey"].split()[:2] == public.split()[:2]

    again = provision_cluster(
        aws_settings, make_spec(public_key=public), run_id="run-2", options=fast_waits
    )
    assert again.key_name == inventory.key_name
    other = (
        Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
    )
    with pytest.raises(UserInputError, match="holds another public key"):
        provision_cluster(
            aws_settings, make_spec(public_key=other), run_id="run-3", options=fast_waits
        )


def test_dedicated_vpc_is_created_tagged_and_reused(
    aws_settings: Any, aws_cli: Any, fast_waits: WaitOptions
) -> None:
    spec = make_spec(vpc_mode="dedicated")

    first = provision_cluster(aws_settings, spec, run_id="run-1", options=fast_waits)
    second = provision_cluster(aws_settings, spec, run_id="run-2", options=fast_waits)

    assert first.dedicated_vpc and (first.vpc_id, first.subnet_id) == (
        second.vpc_id,
        second.subnet_id,
    )
    tag_filter = f"Name=tag:{TAG_CLUSTER},Values=demo"
    assert len(aws_cli("ec2", "describe-vpcs", "--filters", tag_filter)["Vpcs"]) == 1
    gateways = aws_cli("ec2", "describe-internet-gateways", "--filters", tag_filter)
    assert gateways["InternetGateways"][0]["Attachments"][0]["VpcId"] == first.vpc_id
    tables = aws_cli("ec2", "describe-route-tables", "--filters", tag_filter)["RouteTables"]
    assert any(r.get("GatewayId", "").startswith("igw-") for r in tables[0]["Routes"])
    assert all(n.private_ip.startswith("10.42.1.") for n in first.nodes)


def test_ssh_wait_probes_the_address_the_settings_choose(
    aws_settings: Any, fast_waits: WaitOptions
) -> None:
    probed: list[tuple[str, int]] = []

    def probe(address: str, port: int) -> bool:
        probed.append((address, port))  # records only: never connects to moto's addresses
        return True

    options = WaitOptions(limits=fast_waits.limits, wait_for_ssh=True, probe=probe)
    inventory = provision_cluster(aws_settings, make_spec(), run_id="run-1", options=options)

    assert sorted(probed) == sorted((n.private_ip, 22) for n in inventory.nodes)


def test_ssh_wait_connects_to_a_real_listener(aws_settings: Any, fast_waits: WaitOptions) -> None:
    """The default probe really connects: pointed at a local listener it succeeds."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    accepted = threading.Thread(target=lambda: listener.accept()[0].close(), daemon=True)
    accepted.start()

    def to_local(address: str, wanted_port: int) -> bool:
        from clusterbook.aws.instances import probe_tcp_port

        return probe_tcp_port("127.0.0.1", port)

    options = WaitOptions(limits=fast_waits.limits, wait_for_ssh=True, probe=to_local)
    provision_cluster(aws_settings, make_spec(worker_count=0), run_id="run-1", options=options)

    accepted.join(timeout=5)
    listener.close()
    assert not accepted.is_alive()


def test_ssh_wait_times_out_naming_the_instance(aws_settings: Any) -> None:
    options = WaitOptions(
        limits=WaitLimits(running_s=5, status_ok_s=5, ssh_s=0.2, poll_s=0.05),
        wait_for_ssh=True,
        probe=lambda address, port: False,
    )

    with pytest.raises(HostError) as caught:
        provision_cluster(aws_settings, make_spec(worker_count=0), run_id="r", options=options)

    assert "i-" in str(caught.value) and "SSH port 22" in str(caught.value)
    # The inventory is written only once the nodes are reachable.
    assert not Path(aws_settings.cluster_dir("demo") / "inventory.json").exists()


def test_default_vpc_without_default_subnets_still_serves(
    aws_settings: Any, aws_clients: Any, fast_waits: WaitOptions
) -> None:
    """As in the sandbox: the default VPC's subnets replaced by one in another range."""
    ec2 = aws_clients.ec2
    vpc = ec2.describe_vpcs(Filters=[{"Name": "is-default", "Values": ["true"]}])["Vpcs"][0]
    ec2.associate_vpc_cidr_block(VpcId=vpc["VpcId"], CidrBlock="10.77.0.0/16")
    for subnet in ec2.describe_subnets(Filters=[{"Name": "vpc-id", "Values": [vpc["VpcId"]]}])[
        "Subnets"
    ]:
        ec2.delete_subnet(SubnetId=subnet["SubnetId"])
    ec2.create_subnet(VpcId=vpc["VpcId"], CidrBlock="10.77.0.0/24")

    inventory = provision_cluster(aws_settings, make_spec(), run_id="r", options=fast_waits)

    assert inventory.vpc_id == vpc["VpcId"] and not inventory.dedicated_vpc
    assert all(n.private_ip.startswith("10.77.0.") for n in inventory.nodes)


def test_private_key_never_travels_to_aws(
    aws_settings: Any, aws_clients: Any, fast_waits: WaitOptions
) -> None:
    sent: list[bytes] = []
    received: list[bytes] = []
    events = aws_clients.ec2.meta.events
    events.register("before-send.ec2.*", lambda request, **_: sent.append(request.body or b""))
    events.register(
        "needs-retry.ec2.*",
        lambda response, **_: received.append(response[0].content if response else b""),
    )

    provision_cluster(
        aws_settings, make_spec(), run_id="r", options=fast_waits, clients=aws_clients
    )

    key_lines = (aws_settings.cluster_dir("demo") / "id_ed25519").read_text().splitlines()[1:-1]
    wire = b"\n".join(b if isinstance(b, bytes) else b.encode() for b in sent + received)
    assert received and b"ImportKeyPair" in wire  # the public half went out
    assert b"PRIVATE KEY" not in wire
    assert not any(line.encode() in wire for line in key_lines)


def test_stopped_node_is_started_again_not_replaced(
    aws_settings: Any, aws_clients: Any, fast_waits: WaitOptions
) -> None:
    first = provision_cluster(aws_settings, make_spec(), run_id="r1", options=fast_waits)
    worker = first.nodes_of("worker")[0].instance_id
    aws_clients.ec2.stop_instances(InstanceIds=[worker])

    second = provision_cluster(aws_settings, make_spec(), run_id="r2", options=fast_waits)

    assert [n.instance_id for n in second.nodes] == [n.instance_id for n in first.nodes]
    assert {n.state for n in second.nodes} == {"running"}


def test_an_instance_that_stopped_while_waited_for_is_started(
    aws_settings: Any, aws_clients: Any, fast_waits: WaitOptions
) -> None:
    """A node found "stopping" is not started with the stopped ones; once it has stopped,
    the wait for "running" starts it instead of waiting out its time limit."""
    from clusterbook.aws.instances import wait_until_running

    first = provision_cluster(aws_settings, make_spec(), run_id="r1", options=fast_waits)
    worker = first.nodes_of("worker")[0].instance_id
    aws_clients.ec2.stop_instances(InstanceIds=[worker])

    limits = WaitLimits(running_s=20, poll_s=0.1)
    instances = wait_until_running(aws_clients.ec2, [worker], limits=limits)

    assert [i["State"]["Name"] for i in instances] == ["running"]

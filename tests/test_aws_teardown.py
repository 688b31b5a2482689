"""Teardown removes exactly what carries the cluster tag, even after a half-done provision."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import textwrap
from typing import Any

import pytest

from clusterbook.aws.provision import provision_cluster
from clusterbook.aws.tags import TAG_CLUSTER
from clusterbook.aws.teardown import list_tagged_resources, teardown_cluster, teardown_region
from clusterbook.aws.validate import validate_cluster_spec
from clusterbook.errors import UserInputError
from fixtures.aws import REGION


def make_spec(cluster: str = "demo", **changes: Any) -> Any:
    return validate_cluster_spec(
        cluster=cluster, region=REGION, admin_cidr="203.0.113.7/32", **changes
    )


def tagged_with(aws_cli: Any, cluster: str) -> set[str]:
    """Ids of live resources carrying the cluster tag, as the AWS CLI sees them.

    The tagging API lists every tagged resource but still shows terminated instances (as
    AWS does for a while) and leaves out key pairs (moto), so those two kinds are asked of
    EC2 directly.
    """
    mappings = aws_cli(
        "resourcegroupstaggingapi",
        "get-resources",
        "--tag-filters",
        f"Key={TAG_CLUSTER},Values={cluster}",
    )["ResourceTagMappingList"]
    found = {
        m["ResourceARN"].rsplit("/", 1)[-1]
        for m in mappings
        if ":instance/" not in m["ResourceARN"]
    }
    tag = f"Name=tag:{TAG_CLUSTER},Values={cluster}"
    states = "Name=instance-state-name,Values=pending,running,stopping,stopped"
    reservations = aws_cli("ec2", "describe-instances", "--filters", tag, states)
    found |= {i["InstanceId"] for r in reservations["Reservations"] for i in r["Instances"]}
    found |= {
        k["KeyPairId"] for k in aws_cli("ec2", "describe-key-pairs", "--filters", tag)["KeyPairs"]
    }
    return found


@pytest.mark.parametrize("vpc_mode", ["default", "dedicated"])
def test_teardown_leaves_nothing_tagged(
    aws_settings: Any, aws_clients: Any, aws_cli: Any, fast_waits: Any, vpc_mode: str
) -> None:
    provision_cluster(aws_settings, make_spec(vpc_mode=vpc_mode), run_id="r", options=fast_waits)
    assert tagged_with(aws_cli, "demo")

    report = teardown_cluster(aws_clients, settings=aws_settings, cluster="demo", confirm="demo")

    assert report.remaining == []
    assert len(report.terminated_instances) == 2
    assert tagged_with(aws_cli, "demo") == set()
    assert not aws_settings.cluster_dir("demo").exists()  # key and inventory gone
    removed = {r["type"] for r in report.removed}
    assert {"instance", "security-group", "key-pair", "local-key-file"} <= removed
    if vpc_mode == "dedicated":
        assert {"vpc", "subnet", "internet-gateway", "route-table"} <= removed


def test_teardown_never_touches_other_clusters_or_untagged_resources(
    aws_settings: Any, aws_clients: Any, aws_cli: Any, fast_waits: Any
) -> None:
    provision_cluster(aws_settings, make_spec("demo"), run_id="r1", options=fast_waits)
    other = provision_cluster(aws_settings, make_spec("other"), run_id="r2", options=fast_waits)
    untagged = aws_clients.ec2.create_security_group(
        GroupName="hand-made", Description="made by a person"
    )["GroupId"]
    untagged_vpc = aws_clients.ec2.create_vpc(CidrBlock="10.99.0.0/16")["Vpc"]["VpcId"]

    teardown_cluster(aws_clients, settings=aws_settings, cluster="demo", confirm="demo")

    assert tagged_with(aws_cli, "demo") == set()
    assert len(tagged_with(aws_cli, "other")) == len(other.nodes) + 4  # + volumes, SG, key
    groups = aws_cli("ec2", "describe-security-groups", "--group-ids", untagged)
    assert groups["SecurityGroups"][0]["GroupName"] == "hand-made"
    assert aws_cli("ec2", "describe-vpcs", "--vpc-ids", untagged_vpc)["Vpcs"]
    default_vpcs = aws_cli("ec2", "describe-vpcs", "--filters", "Name=is-default,Values=true")
    assert default_vpcs["Vpcs"]
    assert aws_settings.cluster_dir("other").joinpath("id_ed25519").exists()


def test_teardown_requires_the_cluster_name_as_confirmation(
    aws_settings: Any, aws_clients: Any, fast_waits: Any
) -> None:
    provision_cluster(aws_settings, make_spec(), run_id="r", options=fast_waits)
    calls: list[str] = []
    aws_clients.on_every_call(lambda model, **_: calls.append(model.name))

    with pytest.raises(UserInputError) as caught:
        teardown_cluster(aws_clients, settings=aws_settings, cluster="demo", confirm="yes")

    assert "confirm=demo" in str(caught.value)
    assert calls == []  # refused before any API call
    remaining, _ = list_tagged_resources(aws_clients.ec2, "demo")
    assert any(r["type"] == "instance" for r in remaining)


def test_teardown_twice_is_harmless(aws_settings: Any, aws_clients: Any, fast_waits: Any) -> None:
    provision_cluster(aws_settings, make_spec(), run_id="r", options=fast_waits)
    teardown_cluster(aws_clients, settings=aws_settings, cluster="demo", confirm="demo")

    again = teardown_cluster(aws_clients, settings=aws_settings, cluster="demo", confirm="demo")

    assert again.removed == [] and again.remaining == []


KILL_MIDWAY = textwrap.dedent(
    """
    import os, signal, sys
    from clusterbook.aws.instances import WaitLimits
    from clusterbook.aws.provision import WaitOptions, provision_cluster
    from clusterbook.aws.session import make_clients
    from clusterbook.aws.validate import validate_cluster_spec
    from clusterbook.settings import Settings

    settings = Settings(state_dir=sys.argv[1], aws_endpoint_url=sys.argv[2], sandbox=True,
                        ssh_address="private")
    clients = make_clients(settings, region=sys.argv[3])
    launches = []

    def die_on_second_launch(**_):
        launches.append(1)
        if len(launches) == 2:  # the control plane is up, the workers are not
            os.kill(os.getpid(), signal.SIGKILL)

    clients.ec2.meta.events.register("before-call.ec2.RunInstances", die_on_second_launch)
    spec = validate_cluster_spec(cluster="demo", region=sys.argv[3], vpc_mode="dedicated",
                                 worker_count=2)
    provision_cluster(settings, spec, run_id="killed", clients=clients,
                      options=WaitOptions(wait_for_ssh=False))
    """
)


def test_teardown_after_a_provision_killed_midway(
    aws_settings: Any, aws_clients: Any, aws_cli: Any
) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            KILL_MIDWAY,
            str(aws_settings.state_dir),
            aws_settings.aws_endpoint_url,
            REGION,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == -9, done.stderr
    left = tagged_with(aws_cli, "demo")
    assert len([r for r in left if r.startswith("i-")]) == 1
    assert not aws_settings.cluster_dir("demo").joinpath("inventory.json").exists()
    # No inventory, and settings naming another region: the provision noted its own.
    elsewhere = dataclasses.replace(aws_settings, aws_region="us-east-1")
    assert teardown_region(elsewhere, "demo") == REGION

    report = teardown_cluster(aws_clients, settings=aws_settings, cluster="demo", confirm="demo")

    assert report.remaining == []
    assert tagged_with(aws_cli, "demo") == set()
    assert not aws_settings.cluster_dir("demo").exists()


def test_the_iam_policy_in_deploy_allows_every_call_made(
    aws_settings: Any, aws_clients: Any, fast_waits: Any
) -> None:
    """deploy/aws-iam-policy.json is what an operator grants the bot or the CLI: every call a
    provision (both VPC modes, run twice) and a teardown really make must be in it."""
    import json
    from pathlib import Path

    policy = json.loads(
        (Path(__file__).resolve().parent.parent / "deploy" / "aws-iam-policy.json").read_text()
    )
    allowed = {action for statement in policy["Statement"] for action in statement["Action"]}
    made: set[str] = set()

    def note(model: Any, **_: Any) -> None:
        made.add(f"{model.service_model.signing_name}:{model.name}")

    aws_clients.on_every_call(note)
    for cluster, mode in (("plain", "default"), ("own", "dedicated")):
        spec = make_spec(cluster, vpc_mode=mode)
        for run in ("first", "again"):
            provision_cluster(
                aws_settings, spec, run_id=run, options=fast_waits, clients=aws_clients
            )
        teardown_cluster(aws_clients, settings=aws_settings, cluster=cluster, confirm=cluster)

    assert {"ec2:RunInstances", "ec2:TerminateInstances", "ec2:CreateVpc"} <= made
    # Instances and volumes are tagged at creation, which AWS authorises as CreateTags.
    assert "ec2:CreateTags" in allowed
    assert made - allowed == set()

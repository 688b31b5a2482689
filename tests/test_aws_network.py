"""Security group rules are reconciled: a second run adds what is missing, removes the rest."""

from __future__ import annotations

from typing import Any

from clusterbook.aws.network import (
    ensure_network,
    ensure_security_group,
    find_default_network,
    wanted_rules,
)
from clusterbook.aws.tags import TAG_CLUSTER


def rules_of(aws_cli: Any, group_id: str) -> set[tuple[str, Any, str]]:
    group = aws_cli("ec2", "describe-security-groups", "--group-ids", group_id)
    rules = set()
    for permission in group["SecurityGroups"][0]["IpPermissions"]:
        for ip_range in permission.get("IpRanges", []):
            rules.add((permission["IpProtocol"], permission.get("FromPort"), ip_range["CidrIp"]))
        for pair in permission.get("UserIdGroupPairs", []):
            rules.add((permission["IpProtocol"], permission.get("FromPort"), pair["GroupId"]))
    return rules


def test_closing_an_open_group_removes_the_anywhere_rule(aws_clients: Any, aws_cli: Any) -> None:
    tags = {TAG_CLUSTER: "demo"}
    network = ensure_network(aws_clients.ec2, cluster="demo", vpc_mode="default", tags=tags)
    group_id = ensure_security_group(
        aws_clients.ec2,
        cluster="demo",
        network=network,
        admin_cidr="",
        open_all_traffic=True,
        tags=tags,
    )
    assert ("-1", None, "0.0.0.0/0") in rules_of(aws_cli, group_id)

    again = ensure_security_group(
        aws_clients.ec2,
        cluster="demo",
        network=network,
        admin_cidr="198.51.100.0/24",
        open_all_traffic=False,
        tags=tags,
    )

    assert again == group_id
    assert rules_of(aws_cli, group_id) == {
        ("-1", None, group_id),
        ("tcp", 22, "198.51.100.0/24"),
        ("tcp", 6443, "198.51.100.0/24"),
    }


def test_without_admin_cidr_only_the_vpc_may_reach_ssh_and_the_api(aws_clients: Any) -> None:
    network = find_default_network(aws_clients.ec2)
    assert network is not None

    rules = wanted_rules(admin_cidr="", vpc_cidr=network.vpc_cidr, open_all_traffic=False)

    assert {source for *_, source in rules} == {"self", network.vpc_cidr}
    assert "0.0.0.0/0" not in {source for *_, source in rules}

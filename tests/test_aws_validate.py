"""Bad input is refused before any AWS call, with a message that says what to fix."""

from __future__ import annotations

import pytest

from clusterbook.aws.validate import validate_cluster_spec
from clusterbook.errors import UserInputError

GOOD = {"cluster": "demo", "region": "eu-west-1"}


def test_defaults_reproduce_the_reference_set_up() -> None:
    spec = validate_cluster_spec(**GOOD)

    assert spec.instance_type == "m5a.large"
    assert (spec.control_plane_count, spec.worker_count) == (1, 1)
    assert spec.volume_gib == 20
    assert spec.os_image == "ubuntu-24.04"
    assert spec.open_all_traffic is False


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"cluster": "Demo_1"}, "cluster name"),
        ({"cluster": "x"}, "cluster name"),
        ({"cluster": "demo-"}, "cluster name"),
        ({"region": "mars-north-1"}, "unknown AWS region"),
        ({"instance_type": "m5a.huge"}, "unknown EC2 instance type"),
        ({"control_plane_count": 0}, "control_plane_count"),
        ({"control_plane_count": 2}, "must be odd"),
        ({"worker_count": 51}, "worker_count"),
        ({"worker_count": -1}, "worker_count"),
        ({"volume_gib": 4}, "volume_gib"),
        ({"ttl_hours": 0}, "ttl_hours"),
        ({"admin_cidr": "300.1.2.3/32"}, "not a valid network"),
        ({"admin_cidr": "10.0.0.1/8"}, "not a valid network"),
        ({"admin_cidr": "0.0.0.0/0"}, "whole internet"),
        ({"admin_cidr": "2001:db8::/32"}, "IPv4"),
        ({"os_image": "ubuntu-20.04"}, "os_image"),
        ({"ami_id": "ubuntu"}, "ami_id"),
        ({"vpc_mode": "shared"}, "vpc_mode"),
        ({"public_key": "-----BEGIN OPENSSH PRIVATE KEY-----"}, "not an OpenSSH public key"),
    ],
)
def test_bad_input_is_refused_with_the_reason(change: dict, words: str) -> None:
    with pytest.raises(UserInputError) as caught:
        validate_cluster_spec(**{**GOOD, **change})

    assert words in str(caught.value)


def test_unknown_type_suggests_types_of_the_same_family() -> None:
    with pytest.raises(UserInputError) as caught:
        validate_cluster_spec(**GOOD, instance_type="m5a.huge")

    assert "m5a.large" in str(caught.value.hint)


def test_open_all_traffic_allows_an_admin_cidr_of_anywhere() -> None:
    spec = validate_cluster_spec(**GOOD, admin_cidr="0.0.0.0/0", open_all_traffic=True)

    assert spec.admin_cidr == "0.0.0.0/0"


def test_unreachable_ssh_is_refused_before_any_call() -> None:
    from clusterbook.aws.validate import check_ssh_reach

    closed = validate_cluster_spec(**GOOD)
    with pytest.raises(UserInputError) as caught:
        check_ssh_reach(closed, ssh_address="public", wait_for_ssh=True)
    assert "admin_cidr" in str(caught.value)

    check_ssh_reach(closed, ssh_address="private", wait_for_ssh=True)
    check_ssh_reach(closed, ssh_address="public", wait_for_ssh=False)
    opened = validate_cluster_spec(**GOOD, admin_cidr="203.0.113.7/32")
    check_ssh_reach(opened, ssh_address="public", wait_for_ssh=True)


def test_the_sandbox_refuses_what_its_machines_cannot_serve() -> None:
    from clusterbook.aws.validate import check_sandbox_fit

    dedicated = validate_cluster_spec(**GOOD, vpc_mode="dedicated")
    with pytest.raises(UserInputError) as caught:
        check_sandbox_fit(dedicated, sandbox=True, sandbox_region="eu-west-1", wait_for_ssh=True)
    assert "vpc_mode=dedicated is not served by the sandbox" in str(caught.value)

    elsewhere = validate_cluster_spec(**GOOD)
    with pytest.raises(UserInputError) as caught:
        check_sandbox_fit(elsewhere, sandbox=True, sandbox_region="us-east-1", wait_for_ssh=True)
    assert "'eu-west-1' is not the sandbox's" in str(caught.value)
    assert "region=us-east-1" in caught.value.hint

    check_sandbox_fit(elsewhere, sandbox=True, sandbox_region="eu-west-1", wait_for_ssh=True)
    check_sandbox_fit(dedicated, sandbox=False, sandbox_region="us-east-1", wait_for_ssh=True)
    # Without waiting for SSH only EC2 resources are asked for, which the sandbox serves.
    check_sandbox_fit(dedicated, sandbox=True, sandbox_region="us-east-1", wait_for_ssh=False)

"""The sandbox's moto server: a child process on 127.0.0.1 with Canonical's images seeded."""

from __future__ import annotations

import os
from typing import Any

import boto3
import pytest

from clusterbook.sandbox.moto import (
    CANONICAL_OWNER_ID,
    NEWEST_UBUNTU_AMIS,
    start_moto_server,
    stop_moto_server,
)


def ec2_client(endpoint_url: str, region: str = "us-west-2") -> Any:
    return boto3.client(
        "ec2",
        endpoint_url=endpoint_url,
        region_name=region,
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )


def test_server_listens_on_loopback_with_canonical_images(moto_server: Any) -> None:
    assert moto_server.endpoint_url.startswith("http://127.0.0.1:")

    images = ec2_client(moto_server.endpoint_url).describe_images(Owners=[CANONICAL_OWNER_ID])[
        "Images"
    ]

    names = {i["Name"] for i in images}
    assert "ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-amd64-server-20251105" in names
    assert any("ubuntu-jammy-22.04-amd64-server" in n for n in names)
    assert set(NEWEST_UBUNTU_AMIS.values()) <= {i["ImageId"] for i in images}


def test_reset_drops_resources_but_keeps_the_images(moto_server: Any) -> None:
    ec2 = ec2_client(moto_server.endpoint_url)
    ec2.create_vpc(CidrBlock="10.5.0.0/16")

    moto_server.reset()

    assert [v for v in ec2.describe_vpcs()["Vpcs"] if v["CidrBlock"] == "10.5.0.0/16"] == []
    assert ec2.describe_images(ImageIds=[NEWEST_UBUNTU_AMIS["ubuntu-24.04"]])["Images"]


def test_stop_ends_the_child_process() -> None:
    server = start_moto_server()
    pid = server.pid

    server.stop()

    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_untied_server_outlives_its_handle_until_stopped_by_pid() -> None:
    server = start_moto_server(tie_to_caller=False)
    try:
        assert ec2_client(server.endpoint_url).describe_regions()["Regions"]
    finally:
        stop_moto_server(server.pid)

    with pytest.raises(ProcessLookupError):
        os.kill(server.pid, 0)

"""The inventory file round-trips and is refused when missing or of another format."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from clusterbook.aws.inventory import Inventory, Node, read_inventory, write_inventory
from clusterbook.errors import UserInputError
from clusterbook.settings import Settings


def sample(cluster: str = "demo") -> Inventory:
    node = Node(
        name=f"{cluster}-control-plane-1",
        role="control-plane",
        instance_id="i-1",
        private_ip="10.0.0.5",
        public_ip="",
        private_dns="ip-10-0-0-5.ec2.internal",
        ssh_address="10.0.0.5",
        availability_zone="us-east-1a",
        state="running",
    )
    return Inventory(
        cluster=cluster,
        region="us-east-1",
        vpc_id="vpc-1",
        subnet_id="subnet-1",
        dedicated_vpc=False,
        security_group_id="sg-1",
        image_id="ami-1",
        image_name="ubuntu",
        instance_type="m5a.large",
        os_image="ubuntu-24.04",
        key_name="clusterbook-demo",
        key_path="/k",
        nodes=[node],
    )


def test_round_trip(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path)

    path = write_inventory(settings, sample())

    assert read_inventory(settings, "demo") == sample()
    assert json.loads(path.read_text())["nodes"][0]["role"] == "control-plane"


def test_missing_inventory_points_to_the_provision_runbook(tmp_path: Path) -> None:
    with pytest.raises(UserInputError) as caught:
        read_inventory(Settings(state_dir=tmp_path), "nowhere")

    assert "01_provision" in str(caught.value)


def test_other_format_version_is_refused(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path)
    path = write_inventory(settings, sample())
    data = json.loads(path.read_text())
    path.write_text(json.dumps({**data, "version": 99}))

    with pytest.raises(UserInputError):
        read_inventory(settings, "demo")

"""Image look-up: Canonical's SSM parameter first, else the newest matching Canonical image."""

from __future__ import annotations

import json
from typing import Any

import pytest

from clusterbook.aws.images import SSM_PARAMETERS, resolve_image
from clusterbook.sandbox.moto import NEWEST_UBUNTU_AMIS


@pytest.mark.parametrize("os_image", ["ubuntu-24.04", "ubuntu-22.04"])
def test_newest_canonical_amd64_image_is_chosen(aws_clients: Any, os_image: str) -> None:
    """The seeded catalogue holds newer decoys: an arm64 build and another owner's copy."""
    image = resolve_image(aws_clients.ec2, aws_clients.ssm, os_image=os_image)

    assert image.image_id == NEWEST_UBUNTU_AMIS[os_image]
    assert image.source == "describe_images"
    assert image.root_device_name == "/dev/sda1"
    assert os_image.removeprefix("ubuntu-") in image.name and "amd64" in image.name


class _Body:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def stream(self, **_: Any) -> Any:
        yield self.data


def test_ssm_parameter_is_preferred_when_it_exists(aws_clients: Any) -> None:
    """moto has no Canonical parameters (and refuses writes under /aws/), so the answer AWS
    would give is served by a before-send hook; botocore parses it as usual."""
    from botocore.awsrequest import AWSResponse

    older = "ami-0b24a7f1e9d3c5001"
    asked: list[str] = []

    def answer(request: Any, **_: Any) -> Any:
        asked.append(json.loads(request.body)["Name"])
        body = {"Parameter": {"Name": asked[-1], "Type": "String", "Value": older, "Version": 1}}
        return AWSResponse(request.url, 200, {}, _Body(json.dumps(body).encode()))

    aws_clients.ssm.meta.events.register("before-send.ssm.GetParameter", answer)

    image = resolve_image(aws_clients.ec2, aws_clients.ssm, os_image="ubuntu-24.04")

    assert asked == [SSM_PARAMETERS["ubuntu-24.04"]]
    assert (image.image_id, image.source) == (older, "ssm")
    assert "noble-24.04" in image.name  # confirmed by describe_images


def test_explicit_ami_overrides_the_look_up(aws_clients: Any) -> None:
    image = resolve_image(
        aws_clients.ec2,
        aws_clients.ssm,
        os_image="ubuntu-24.04",
        ami_id=NEWEST_UBUNTU_AMIS["ubuntu-22.04"],
    )

    assert image.source == "override"
    assert "jammy" in image.name

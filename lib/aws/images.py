"""Which machine image the nodes boot: Canonical's Ubuntu LTS for amd64, or an explicit AMI.

The real AWS path asks Canonical's public SSM parameter for the current image id. Where that
parameter does not exist (some partitions, and moto, which has none of them), it falls back to
``describe_images`` for Canonical's owner id and the newest image whose name matches. Either
way one ``describe_images`` by id then confirms the image and gives its root device name,
which the block device mapping needs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from clusterbook.aws.errors import (
    translate_aws_errors,
    translate_botocore_error,
    translate_client_error,
)
from clusterbook.errors import UserInputError

logger = logging.getLogger(__name__)

CANONICAL_OWNER_ID = "099720109477"

#: Canonical's SSM public parameters, per OS choice.
_SSM_PREFIX = "/aws/service/canonical/ubuntu/server"
SSM_PARAMETERS = {
    "ubuntu-24.04": f"{_SSM_PREFIX}/24.04/stable/current/amd64/hvm/ebs-gp3/ami-id",
    "ubuntu-22.04": f"{_SSM_PREFIX}/22.04/stable/current/amd64/hvm/ebs-gp2/ami-id",
}

#: Image name patterns Canonical publishes under, per OS choice.
NAME_PATTERNS = {
    "ubuntu-24.04": [
        "ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-amd64-server-*",
        "ubuntu/images/hvm-ssd/ubuntu-noble-24.04-amd64-server-*",
    ],
    "ubuntu-22.04": [
        "ubuntu/images/hvm-ssd-gp3/ubuntu-jammy-22.04-amd64-server-*",
        "ubuntu/images/hvm-ssd/ubuntu-jammy-22.04-amd64-server-*",
    ],
}


@dataclass(frozen=True)
class ImageChoice:
    image_id: str
    name: str
    root_device_name: str
    #: How it was found: "override", "ssm" or "describe_images".
    source: str


def resolve_image(ec2: Any, ssm: Any, *, os_image: str, ami_id: str = "") -> ImageChoice:
    """The image to launch, confirmed to exist in the client's region."""
    if ami_id:
        return _describe_one(ec2, ami_id, source="override")

    image_id = _image_id_from_ssm(ssm, os_image)
    if image_id:
        return _describe_one(ec2, image_id, source="ssm")
    return _newest_canonical_image(ec2, os_image)


def _image_id_from_ssm(ssm: Any, os_image: str) -> str | None:
    """The parameter's image id, or None when it is missing or we may not read it."""
    name = SSM_PARAMETERS[os_image]
    try:
        return str(ssm.get_parameter(Name=name)["Parameter"]["Value"])
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code not in ("ParameterNotFound", "AccessDeniedException"):
            raise translate_client_error(exc, action="read Canonical's image parameter") from exc
        logger.info("SSM parameter %s: %s; searching Canonical's images instead", name, code)
        return None
    except BotoCoreError as exc:
        raise translate_botocore_error(exc, action="read Canonical's image parameter") from exc


def _newest_canonical_image(ec2: Any, os_image: str) -> ImageChoice:
    with translate_aws_errors(f"search Canonical's {os_image} images"):
        images = ec2.describe_images(
            Owners=[CANONICAL_OWNER_ID],
            Filters=[
                {"Name": "name", "Values": NAME_PATTERNS[os_image]},
                {"Name": "architecture", "Values": ["x86_64"]},
                {"Name": "state", "Values": ["available"]},
                {"Name": "root-device-type", "Values": ["ebs"]},
            ],
        )["Images"]
    if not images:
        raise UserInputError(
            f"no {os_image} amd64 image from Canonical (owner {CANONICAL_OWNER_ID}) was found "
            "in this region",
            hint="pass ami_id explicitly, or choose another region",
        )

    newest = max(images, key=lambda image: (image.get("CreationDate", ""), image["Name"]))
    logger.info("image %s (%s), newest of %d", newest["ImageId"], newest["Name"], len(images))
    return _choice(newest, source="describe_images")


def _describe_one(ec2: Any, image_id: str, *, source: str) -> ImageChoice:
    try:
        images = ec2.describe_images(ImageIds=[image_id])["Images"]
    except ClientError as exc:
        if not exc.response.get("Error", {}).get("Code", "").startswith("InvalidAMIID"):
            raise translate_client_error(exc, action=f"look up image {image_id}") from exc
        images = []
    except BotoCoreError as exc:
        raise translate_botocore_error(exc, action=f"look up image {image_id}") from exc
    if not images:
        raise UserInputError(
            f"image {image_id} does not exist in this region or is not visible to you",
            hint="AMI ids differ per region; look it up for the chosen region",
        )
    logger.info("image %s (%s) from %s", image_id, images[0].get("Name", "?"), source)
    return _choice(images[0], source=source)


def _choice(image: dict[str, Any], *, source: str) -> ImageChoice:
    return ImageChoice(
        image_id=image["ImageId"],
        name=image.get("Name", ""),
        root_device_name=image.get("RootDeviceName") or "/dev/sda1",
        source=source,
    )

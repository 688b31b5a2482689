"""AWS errors become errors a user can act on; throttling is retried, then reported.

The AWS answers here are real botocore responses: a ``before-send`` hook answers in AWS's
own XML error format instead of sending the request, so botocore's parser and retry logic
run exactly as they do against AWS.
"""

from __future__ import annotations

from typing import Any

import pytest

from clusterbook.aws.errors import (
    AwsCapacityError,
    AwsCredentialsError,
    AwsPermissionError,
    AwsQuotaError,
    AwsThrottledError,
)
from clusterbook.aws.images import resolve_image
from clusterbook.aws.provision import provision_cluster
from clusterbook.aws.session import make_clients
from clusterbook.aws.validate import validate_cluster_spec
from clusterbook.errors import AwsError
from clusterbook.settings import Settings
from fixtures.aws import REGION


class _Body:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def stream(self, **_: Any) -> Any:
        yield self.data


class FakeAwsAnswer:
    """Answers the chosen operation with an AWS error ``times`` times, then lets it through."""

    def __init__(self, operation: str, code: str, *, times: int, status: int = 400) -> None:
        self.operation = operation
        self.code = code
        self.left = times
        self.status = status
        self.sent = 0

    def __call__(self, request: Any, **_: Any) -> Any:
        from botocore.awsrequest import AWSResponse

        self.sent += 1
        if self.left <= 0:
            return None
        self.left -= 1
        body = (
            '<?xml version="1.0" encoding="UTF-8"?><Response><Errors><Error>'
            f"<Code>{self.code}</Code><Message>injected {self.code}</Message>"
            "</Error></Errors><RequestID>test</RequestID></Response>"
        ).encode()
        return AWSResponse(request.url, self.status, {}, _Body(body))


def hooked_clients(settings: Settings, answer: FakeAwsAnswer, *, max_attempts: int = 8) -> Any:
    clients = make_clients(settings, region=REGION, max_attempts=max_attempts)
    clients.ec2.meta.events.register(f"before-send.ec2.{answer.operation}", answer)
    return clients


def spec() -> Any:
    return validate_cluster_spec(cluster="demo", region=REGION, admin_cidr="203.0.113.7/32")


def test_throttling_is_retried_until_it_succeeds(aws_settings: Settings, fast_waits: Any) -> None:
    answer = FakeAwsAnswer("DescribeImages", "RequestLimitExceeded", times=3, status=503)
    clients = hooked_clients(aws_settings, answer)

    image = resolve_image(clients.ec2, clients.ssm, os_image="ubuntu-24.04")

    assert image.image_id.startswith("ami-")
    assert answer.sent == 4  # three throttled answers, then the real one


def test_throttling_beyond_the_retries_is_reported_as_such(aws_settings: Settings) -> None:
    answer = FakeAwsAnswer("DescribeImages", "RequestLimitExceeded", times=10, status=503)
    clients = hooked_clients(aws_settings, answer, max_attempts=2)

    with pytest.raises(AwsThrottledError) as caught:
        resolve_image(clients.ec2, clients.ssm, os_image="ubuntu-24.04")

    assert answer.sent == 2
    assert "throttling" in str(caught.value) and "safe to repeat" in str(caught.value)
    assert caught.value.code == "RequestLimitExceeded"


@pytest.mark.parametrize(
    ("code", "error_class", "advice"),
    [
        ("UnauthorizedOperation", AwsPermissionError, "IAM permission"),
        ("VcpuLimitExceeded", AwsQuotaError, "higher quota"),
        ("InsufficientInstanceCapacity", AwsCapacityError, "another availability zone"),
        ("AuthFailure", AwsCredentialsError, "credentials"),
    ],
)
def test_launch_errors_say_what_to_do(
    aws_settings: Settings, fast_waits: Any, code: str, error_class: type, advice: str
) -> None:
    answer = FakeAwsAnswer("RunInstances", code, times=1)
    clients = hooked_clients(aws_settings, answer)

    with pytest.raises(error_class) as caught:
        provision_cluster(aws_settings, spec(), run_id="r", options=fast_waits, clients=clients)

    assert isinstance(caught.value, AwsError)
    assert caught.value.code == code
    assert advice in str(caught.value)
    assert caught.value.__cause__ is not None  # raised from the botocore error


def test_missing_credentials_are_reported_with_how_to_set_them(
    aws_settings: Settings, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in (
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # never ask a metadata service
    settings = Settings(
        state_dir=tmp_path, aws_endpoint_url=aws_settings.aws_endpoint_url, sandbox=False
    )
    clients = make_clients(settings, region=REGION)

    with pytest.raises(AwsCredentialsError) as caught:
        resolve_image(clients.ec2, clients.ssm, os_image="ubuntu-24.04")

    assert "aws configure" in str(caught.value)


def test_unknown_ami_override_is_refused_clearly(aws_clients: Any) -> None:
    from clusterbook.errors import UserInputError

    with pytest.raises(UserInputError) as caught:
        resolve_image(
            aws_clients.ec2,
            aws_clients.ssm,
            os_image="ubuntu-24.04",
            ami_id="ami-0123456789abcdef0",
        )

    assert "does not exist in this region" in str(caught.value)


def test_new_instances_not_yet_visible_are_waited_for(
    aws_settings: Settings, fast_waits: Any
) -> None:
    """EC2 is eventually consistent: new ids can be unknown to Describe* for a moment."""
    answer = FakeAwsAnswer("DescribeInstanceStatus", "InvalidInstanceID.NotFound", times=2)
    clients = hooked_clients(aws_settings, answer)

    inventory = provision_cluster(
        aws_settings, spec(), run_id="r", options=fast_waits, clients=clients
    )

    assert len(inventory.nodes) == 2
    assert answer.sent == 3  # twice "not found", then the status checks


def test_instance_that_never_appears_times_out_naming_it(aws_settings: Settings) -> None:
    from clusterbook.aws.instances import WaitLimits, wait_until_running

    clients = make_clients(aws_settings, region=REGION)

    with pytest.raises(AwsError) as caught:
        wait_until_running(
            clients.ec2, ["i-0123456789abcdef0"], limits=WaitLimits(running_s=0.3, poll_s=0.05)
        )

    assert "i-0123456789abcdef0" in str(caught.value) and "not running" in str(caught.value)

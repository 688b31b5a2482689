"""AWS failures translated into errors a user can act on.

    AwsError (clusterbook.errors)
    ├── AwsCredentialsError   no credentials, or AWS does not accept them
    ├── AwsPermissionError    the credentials may not do this (UnauthorizedOperation)
    ├── AwsQuotaError         an account limit (VcpuLimitExceeded, ...)
    ├── AwsCapacityError      AWS has no capacity for this type in this zone right now
    └── AwsThrottledError     AWS kept throttling after botocore's retries

Library code wraps each group of calls in ``translate_aws_errors("what we were doing")``;
everything from boto3 leaves that block as one of these, raised ``from`` the original.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    EndpointConnectionError,
    NoCredentialsError,
    NoRegionError,
    PartialCredentialsError,
)

from clusterbook.errors import AwsError

logger = logging.getLogger(__name__)


class AwsCredentialsError(AwsError):
    retryable = False


class AwsPermissionError(AwsError):
    retryable = False


class AwsQuotaError(AwsError):
    retryable = False


class AwsCapacityError(AwsError):
    retryable = True


class AwsThrottledError(AwsError):
    retryable = True


_CREDENTIAL_CODES = {
    "AuthFailure",
    "InvalidClientTokenId",
    "UnrecognizedClientException",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "RequestExpired",
}
_THROTTLING_CODES = {
    "RequestLimitExceeded",
    "Throttling",
    "ThrottlingException",
    "TooManyRequestsException",
}
_QUOTA_CODES = {
    "VcpuLimitExceeded",
    "InstanceLimitExceeded",
    "VpcLimitExceeded",
    "AddressLimitExceeded",
    "RulesPerSecurityGroupLimitExceeded",
    "SecurityGroupLimitExceeded",
    "ResourceLimitExceeded",
}
_CAPACITY_CODES = {"InsufficientInstanceCapacity", "InsufficientHostCapacity", "Unsupported"}

CREDENTIALS_HINT = (
    "give clusterbook AWS credentials the usual way: `aws configure`, AWS_PROFILE, "
    "or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY in the environment of the CLI or bot"
)


def translate_client_error(exc: ClientError, *, action: str) -> AwsError:
    """One ClientError as the AwsError subclass that says what to do about it."""
    error = exc.response.get("Error", {})
    code = str(error.get("Code", "Unknown"))
    detail = str(error.get("Message", "")).strip()
    attempts = exc.response.get("ResponseMetadata", {}).get("RetryAttempts", 0)
    message = f"AWS refused to {action}: {code}: {detail}" if detail else f"{action}: {code}"

    if code in _CREDENTIAL_CODES:
        return AwsCredentialsError(
            f"AWS did not accept the credentials while trying to {action} ({code})",
            code=code,
            hint="check the access key, the session token's expiry and the clock; "
            + CREDENTIALS_HINT,
        )
    if code == "UnauthorizedOperation" or code == "AccessDenied" or code.endswith(".Denied"):
        return AwsPermissionError(
            message,
            code=code,
            hint="grant the IAM permission for this call to the credentials in use; "
            "`aws sts decode-authorization-message` decodes the encoded reason",
        )
    if code in _QUOTA_CODES:
        return AwsQuotaError(
            message,
            code=code,
            hint="ask for a higher quota (Service Quotas, 'Running On-Demand Standard "
            "instances' for vCPUs), or use fewer or smaller instances",
        )
    if code in _CAPACITY_CODES:
        return AwsCapacityError(
            message,
            code=code,
            hint="try another availability zone (dedicated VPC subnet in another zone) or "
            "another instance type of the same size, e.g. m5.large or m6a.large",
        )
    if code in _THROTTLING_CODES:
        return AwsThrottledError(
            f"AWS kept throttling requests to {action} after {attempts} retries ({code})",
            code=code,
            hint="another tool may be calling the same account heavily; wait a minute and "
            "run again (the run is safe to repeat)",
        )
    return AwsError(message, code=code)


def translate_botocore_error(exc: BotoCoreError, *, action: str) -> AwsError:
    if isinstance(exc, NoCredentialsError | PartialCredentialsError):
        return AwsCredentialsError(
            f"no usable AWS credentials were found to {action}", hint=CREDENTIALS_HINT
        )
    if isinstance(exc, NoRegionError):
        return AwsError(f"no AWS region is set to {action}", hint="pass the region parameter")
    if isinstance(exc, EndpointConnectionError):
        return AwsError(
            f"could not reach the AWS endpoint to {action}: {exc}",
            hint="check the network, or the aws_endpoint_url setting",
        )
    return AwsError(f"AWS call failed while trying to {action}: {exc}")


@contextmanager
def translate_aws_errors(action: str) -> Iterator[None]:
    """Raise our AwsError subclasses for any boto3 failure inside the block."""
    try:
        yield
    except ClientError as exc:
        raise translate_client_error(exc, action=action) from exc
    except BotoCoreError as exc:
        raise translate_botocore_error(exc, action=action) from exc

"""boto3 clients built from Settings: endpoint, region, credentials and retry policy.

Retries: botocore's adaptive mode (exponential back-off plus a client-side rate limiter that
slows down when AWS throttles), ``MAX_ATTEMPTS`` attempts per call in all. What still fails after
that reaches ``errors.translate_aws_errors`` as a throttling error.

Credentials: boto3's usual chain for real AWS. In the sandbox (``settings.sandbox``) the
clients use fixed placeholder credentials instead, so real credentials are never sent to a
local stand-in.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import boto3
from botocore.config import Config

from clusterbook.errors import ConfigError
from clusterbook.settings import Settings

logger = logging.getLogger(__name__)

MAX_ATTEMPTS = 8
SANDBOX_ACCESS_KEY = "clusterbook-sandbox"


@dataclass
class AwsClients:
    """The clients one run uses, all for one region."""

    region: str
    ec2: Any
    ssm: Any
    _sessions: list[Any] = field(default_factory=list, repr=False)

    def on_every_call(self, handler: Callable[..., Any]) -> None:
        """Register ``handler(model=..., params=...)`` before each API call (for counting)."""
        for client in (self.ec2, self.ssm):
            client.meta.events.register("before-call.*.*", handler)


def retry_config(*, max_attempts: int = MAX_ATTEMPTS) -> Config:
    return Config(
        retries={"mode": "adaptive", "total_max_attempts": max_attempts},
        connect_timeout=10,
        read_timeout=60,
        user_agent_extra="clusterbook",
    )


def make_clients(
    settings: Settings, *, region: str | None = None, max_attempts: int = MAX_ATTEMPTS
) -> AwsClients:
    """EC2 and SSM clients for ``region`` (default: the settings' region)."""
    region = region or settings.aws_region
    session_args: dict[str, str] = {"region_name": region}
    if settings.sandbox:
        if not settings.aws_endpoint_url:
            raise ConfigError(
                "sandbox is on but aws_endpoint_url is empty",
                hint="start the sandbox (it sets the endpoint) or turn sandbox off",
            )
        session_args["aws_access_key_id"] = SANDBOX_ACCESS_KEY
        session_args["aws_secret_access_key"] = SANDBOX_ACCESS_KEY  # not a secret

    session = boto3.session.Session(**session_args)
    config = retry_config(max_attempts=max_attempts)
    endpoint = settings.aws_endpoint_url or None
    logger.debug("AWS clients for %s (endpoint %s)", region, endpoint or "AWS")
    return AwsClients(
        region=region,
        ec2=session.client("ec2", endpoint_url=endpoint, config=config),
        ssm=session.client("ssm", endpoint_url=endpoint, config=config),
        _sessions=[session],
    )

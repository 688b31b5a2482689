"""Archive stores: a local directory (the embedded default) or an S3 bucket and prefix.

Both keep a run's files under ``runs/<run id>/`` and hand out a location string (a path or an
``s3://`` URL) that the run index records and that ``read`` accepts back.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Protocol
from urllib.parse import urlparse

from clusterbook.errors import ArchiveError, ConfigError

logger = logging.getLogger(__name__)


class ArchiveStore(Protocol):
    url: str

    def write(self, key: str, data: bytes, *, content_type: str) -> str: ...

    def read(self, location: str) -> bytes: ...

    def location(self, key: str) -> str: ...


class LocalStore:
    """Files in a directory tree; the location is the absolute file path."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).expanduser().resolve()
        self.url = str(self.root)

    def write(self, key: str, data: bytes, *, content_type: str) -> str:
        path = self.root / key
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_bytes(data)
            os.replace(tmp, path)
        except OSError as exc:
            raise ArchiveError(f"cannot write {path}: {exc}") from exc
        logger.debug("archived %s (%d bytes)", path, len(data))
        return str(path)

    def location(self, key: str) -> str:
        return str(self.root / key)

    def read(self, location: str) -> bytes:
        try:
            return Path(location).read_bytes()
        except OSError as exc:
            raise ArchiveError(f"cannot read archived file {location}: {exc}") from exc


class S3Store:
    """Objects under ``s3://bucket/prefix/``; the location is the object's s3:// URL."""

    def __init__(self, url: str, *, endpoint_url: str | None, region: str) -> None:
        import boto3
        from botocore.config import Config

        parsed = urlparse(url)
        if not parsed.netloc:
            raise ConfigError(f"archive URL {url!r} names no bucket; write s3://bucket/prefix")
        self.bucket = parsed.netloc
        self.prefix = parsed.path.strip("/")
        self.url = url
        self._client = boto3.client(
            "s3",
            endpoint_url=endpoint_url,
            region_name=region,
            config=Config(retries={"mode": "adaptive", "max_attempts": 8}),
        )

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def write(self, key: str, data: bytes, *, content_type: str) -> str:
        from botocore.exceptions import BotoCoreError, ClientError

        full = self._key(key)
        try:
            self._client.put_object(
                Bucket=self.bucket, Key=full, Body=data, ContentType=content_type
            )
        except (BotoCoreError, ClientError) as exc:
            raise ArchiveError(
                f"cannot write s3://{self.bucket}/{full}: {exc}",
                hint="check the bucket exists and the credentials may write to it",
            ) from exc
        return f"s3://{self.bucket}/{full}"

    def location(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._key(key)}"

    def read(self, location: str) -> bytes:
        from botocore.exceptions import BotoCoreError, ClientError

        parsed = urlparse(location)
        try:
            answer = self._client.get_object(Bucket=parsed.netloc, Key=parsed.path.lstrip("/"))
            return answer["Body"].read()
        except (BotoCoreError, ClientError) as exc:
            raise ArchiveError(f"cannot read archived object {location}: {exc}") from exc


def open_store(url: str, *, endpoint_url: str | None = None, region: str = "us-east-1"):
    """The store for an archive URL: ``s3://…``, ``file://…`` or a plain directory path."""
    if url.startswith("s3://"):
        return S3Store(url, endpoint_url=endpoint_url, region=region)
    if url.startswith("file://"):
        return LocalStore(Path(urlparse(url).path))
    if "://" in url:
        raise ConfigError(
            f"archive URL {url!r} has an unknown scheme", hint="use a directory or s3://bucket/prefix"
        )
    return LocalStore(Path(url))

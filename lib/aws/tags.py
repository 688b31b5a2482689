"""The tags clusterbook puts on every AWS resource it creates, and filters built from them.

Discovery (a second provision run) and teardown find resources by ``TAG_CLUSTER`` only, so a
resource without it is never touched, and one of another cluster never matches.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

TAG_CLUSTER = "clusterbook:cluster"
TAG_ROLE = "clusterbook:role"
TAG_OWNER = "clusterbook:owner"
TAG_CREATED_BY = "clusterbook:created-by"
TAG_TTL_HOURS = "clusterbook:ttl-hours"
TAG_EXPIRES_AT = "clusterbook:expires-at"

ROLE_CONTROL_PLANE = "control-plane"
ROLE_WORKER = "worker"
ROLES = (ROLE_CONTROL_PLANE, ROLE_WORKER)


def build_cluster_tags(
    *, cluster: str, owner: str, created_by: str, ttl_hours: int, now: datetime | None = None
) -> dict[str, str]:
    """The tags every resource of the cluster carries (without role and Name)."""
    now = now or datetime.now(UTC)
    expires = now + timedelta(hours=ttl_hours)
    return {
        TAG_CLUSTER: cluster,
        TAG_OWNER: owner or "unknown",
        TAG_CREATED_BY: created_by,
        TAG_TTL_HOURS: str(ttl_hours),
        TAG_EXPIRES_AT: expires.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def tag_list(tags: dict[str, str]) -> list[dict[str, str]]:
    return [{"Key": key, "Value": value} for key, value in tags.items()]


def tag_specifications(resource_type: str, tags: dict[str, str]) -> list[dict[str, Any]]:
    return [{"ResourceType": resource_type, "Tags": tag_list(tags)}]


def tag_dict(resource: dict[str, Any]) -> dict[str, str]:
    """The ``Tags`` list of a described resource as a dict."""
    return {tag["Key"]: tag["Value"] for tag in resource.get("Tags") or []}


def cluster_filter(cluster: str) -> dict[str, Any]:
    """An EC2 ``Filters`` entry matching resources tagged with this cluster."""
    return {"Name": f"tag:{TAG_CLUSTER}", "Values": [cluster]}

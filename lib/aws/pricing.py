"""Cost preview: hourly on-demand price of the chosen instances and volumes, before launch.

Prices come from ``prices.json`` next to this module, a small hand-kept table with the date
it was written. Shortcoming: it holds us-east-1 prices only and is not refreshed
automatically; other regions are shown at the us-east-1 price with a note saying so. The AWS
Price List API would lift this, at the cost of a network call and IAM permission.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from clusterbook.aws.validate import ClusterSpec

logger = logging.getLogger(__name__)

PRICE_TABLE = Path(__file__).with_name("prices.json")
HOURS_PER_MONTH = 730


@dataclass(frozen=True)
class CostPreview:
    instance_type: str
    node_count: int
    hourly_per_node: float | None
    volume_hourly: float
    hourly_total: float | None
    price_date: str
    note: str

    def as_rows(self) -> list[dict[str, Any]]:
        """A table for ``record``: one row per cost item and a total."""
        if self.hourly_per_node is None:
            nodes = {"item": f"{self.node_count} x {self.instance_type}", "per hour": "unknown"}
        else:
            nodes = {
                "item": f"{self.node_count} x {self.instance_type} "
                f"(${self.hourly_per_node:.4f} each)",
                "per hour": f"${self.node_count * self.hourly_per_node:.4f}",
            }
        total = "unknown" if self.hourly_total is None else f"${self.hourly_total:.4f}"
        return [
            nodes,
            {"item": "gp3 root volumes", "per hour": f"${self.volume_hourly:.4f}"},
            {"item": "total", "per hour": total},
            {"item": f"prices of {self.price_date}", "per hour": self.note},
        ]


@cache
def load_price_table() -> dict[str, Any]:
    return json.loads(PRICE_TABLE.read_text())


def preview_cost(spec: ClusterSpec) -> CostPreview:
    """What the cluster will cost per hour while it runs (no API call)."""
    table = load_price_table()
    hourly = table["hourly"].get(spec.instance_type)
    volume_hourly = spec.node_count * spec.volume_gib * table["gp3_per_gib_month"] / HOURS_PER_MONTH

    notes = []
    if hourly is None:
        notes.append(f"{spec.instance_type} is not in the price table")
    if spec.region != table["region"]:
        notes.append(f"{table['region']} prices; {spec.region} may differ")
    total = None if hourly is None else spec.node_count * hourly + volume_hourly
    preview = CostPreview(
        instance_type=spec.instance_type,
        node_count=spec.node_count,
        hourly_per_node=hourly,
        volume_hourly=round(volume_hourly, 4),
        hourly_total=None if total is None else round(total, 4),
        price_date=table["taken"],
        note="; ".join(notes) or f"{table['region']} on-demand",
    )
    logger.info(
        "cost preview: %d x %s = %s per hour",
        spec.node_count,
        spec.instance_type,
        "unknown" if total is None else f"${total:.4f}",
    )
    return preview

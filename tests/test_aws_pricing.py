"""Cost preview from the price table kept in the repository."""

from __future__ import annotations

import pytest

from clusterbook.aws.pricing import load_price_table, preview_cost
from clusterbook.aws.validate import known_instance_types, validate_cluster_spec


def test_price_table_is_dated_and_names_only_real_instance_types() -> None:
    table = load_price_table()

    assert table["taken"] and table["region"] == "us-east-1"
    assert set(table["hourly"]) <= known_instance_types()
    assert all(price > 0 for price in table["hourly"].values())


def test_preview_multiplies_the_hourly_price_by_the_node_count() -> None:
    spec = validate_cluster_spec(cluster="demo", region="us-east-1", worker_count=3)
    price = load_price_table()["hourly"]["m5a.large"]

    preview = preview_cost(spec)

    assert preview.node_count == 4
    assert preview.hourly_total == pytest.approx(4 * price + preview.volume_hourly, abs=1e-4)
    assert preview.as_rows()[0]["per hour"] == f"${4 * price:.4f}"


def test_unknown_price_and_other_region_are_said_plainly() -> None:
    spec = validate_cluster_spec(cluster="demo", region="eu-west-1", instance_type="x2gd.large")

    preview = preview_cost(spec)

    assert preview.hourly_total is None
    assert "not in the price table" in preview.note and "eu-west-1 may differ" in preview.note

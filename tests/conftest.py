"""Shared pytest set-up. Fixtures live by area in tests/fixtures/, loaded as plugins."""

pytest_plugins = [
    "fixtures.common",
    "fixtures.engine",
    "fixtures.aws",
    "fixtures.controlplane",
    "fixtures.sandbox",
    "fixtures.slack",
]

"""The ``clusterbook`` command line: the request layer for people at a terminal."""

from clusterbook.cli.main import main

__all__ = ["main"]

"""The ``clusterbook`` command group, its global options and its error handling.

Subcommands live in sibling modules, each with a ``register(group)`` function; add a module
to ``COMMAND_MODULES`` to make its commands appear.

Exit codes: 0 success; 1 a run failed or another error; 2 bad input (nothing was changed);
3 the cluster is locked by another run; 4 a component is not installed; 5 an external
service failed; 6 the archive failed; 7 the audit found a change; 130 interrupted.
"""

from __future__ import annotations

import importlib
import logging
import sys

import click

from clusterbook.errors import ClusterbookError
from clusterbook.settings import Settings

logger = logging.getLogger(__name__)

COMMAND_MODULES = [
    "clusterbook.cli.runs",
    "clusterbook.cli.sandbox",
    "clusterbook.cli.demo",
]


class _Group(click.Group):
    """Turns our own errors into a one-paragraph message and the documented exit code."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except ClusterbookError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--state-dir", type=click.Path(), help="Where runs, archive and clusters live.")
@click.option("--archive-url", help="Archive: a directory or s3://bucket/prefix.")
@click.option("-v", "--verbose", count=True, help="-v for INFO details, -vv for the wire.")
@click.pass_context
def main(ctx: click.Context, state_dir: str | None, archive_url: str | None, verbose: int) -> None:
    """clusterbook: run parameterized Kubernetes runbooks and keep every run as an audit record.

    \b
    Start here:
      clusterbook runbooks               what can be run, with parameters
      clusterbook run 00_hello -p name=you
      clusterbook runs                   what ran, how it ended
      clusterbook show RUN_ID            outputs, error and archived notebook of one run
    """
    from clusterbook.logs import configure_cli_logging

    configure_cli_logging(verbose)
    ctx.obj = Settings.load(state_dir=state_dir, archive_url=archive_url)


for _module in COMMAND_MODULES:
    importlib.import_module(_module).register(main)

"""CLI commands for the local sandbox: ``clusterbook sandbox up|status|down``."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict

import click

from clusterbook.settings import Settings

logger = logging.getLogger(__name__)


@click.group("sandbox")
def sandbox_group() -> None:
    """The local sandbox: moto for AWS, nspawn machines for EC2 instances (needs root).

    \b
    clusterbook sandbox up        start it; later commands use it via clusterbook.toml
    clusterbook run 01_provision -p cluster=demo
    clusterbook sandbox status    hosts, addresses, states
    clusterbook sandbox down      remove everything it made
    """


@sandbox_group.command("up")
@click.option("--cidr", help="VPC range to use (default: the first unused candidate).")
@click.pass_obj
def up_cmd(settings: Settings, cidr: str | None) -> None:
    """Start moto, the sandbox network and the host reconciler (idempotent)."""
    from clusterbook.sandbox.image import default_cache_dir, find_cached_image
    from clusterbook.sandbox.lifecycle import sandbox_up

    cache_dir = default_cache_dir(os.environ)
    if find_cached_image(cache_dir) is None:
        click.echo(f"building the hosts' base image in {cache_dir} (about a minute, once)")
    status = sandbox_up(settings, cache_dir=cache_dir, cidr=cidr)
    click.echo(f"sandbox running (pid {status.pid})")
    click.echo(f"  EC2 endpoint  {status.endpoint_url}  region {status.region}")
    click.echo(f"  VPC range     {status.cidr}  (this machine reaches it as {status.gateway})")
    if status.config_file:
        click.echo(f"  settings      {status.config_file}")
    else:
        click.echo("  settings      a config file of yours is in the way; set these instead:")
        for name, value in status.settings_environment().items():
            click.echo(f"    export {name}={value}")
    click.echo(
        "  credentials   any; e.g. export AWS_ACCESS_KEY_ID=sandbox AWS_SECRET_ACCESS_KEY=sandbox"
    )


@sandbox_group.command("status")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def status_cmd(settings: Settings, as_json: bool) -> None:
    """Show whether the sandbox runs, and its hosts."""
    from clusterbook.sandbox.lifecycle import sandbox_status

    status = sandbox_status(settings)
    if as_json:
        click.echo(json.dumps(asdict(status), default=str, indent=2))
        return
    if not status.running:
        click.echo("sandbox not running")
    else:
        click.echo(
            f"sandbox running (pid {status.pid}), EC2 at {status.endpoint_url}, VPC {status.cidr}"
        )
    for host in status.hosts:
        click.echo(
            f"  {host.instance_id:<22} {host.private_ip:<15} {host.state:<12} {host.dns_name}"
        )


@sandbox_group.command("down")
@click.pass_obj
def down_cmd(settings: Settings) -> None:
    """Stop the sandbox and remove its machines, namespaces, links and processes."""
    from clusterbook.sandbox.lifecycle import sandbox_down

    removed = sandbox_down(settings)
    if not removed:
        click.echo("nothing to do: no sandbox was running and nothing was left over")
        return
    click.echo("removed:")
    for item in removed:
        click.echo(f"  {item}")


def register(group: click.Group) -> None:
    group.add_command(sandbox_group)

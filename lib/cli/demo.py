"""``clusterbook demo``: the whole job on the embedded default, with no AWS and no Slack.

1. ``00_hello`` runs through the engine and is archived (checks the installation);
2. the sandbox starts: moto as EC2 on 127.0.0.1, nspawn machines as instances;
3. ``01_provision`` creates the cluster's machines in the sandbox EC2;
4. every machine is reached over SSH at its inventory address, with host keys checked;
5. ``04_teardown`` removes everything the cluster's tag names;
6. the sandbox stops (unless ``--keep-sandbox``), and the audit trail is verified.

Each run is archived like any other; the summary at the end lists them.

Known gap: the bootstrap (kubeadm) and workloads runbooks are not written yet, so the demo
provisions machines and reaches them but does not make them a Kubernetes cluster.
"""

from __future__ import annotations

import logging
import os

import click

from clusterbook.cli import render
from clusterbook.engine import Engine, RunResult
from clusterbook.settings import Settings

logger = logging.getLogger(__name__)


def _step(number: int, text: str) -> None:
    click.secho(f"\n== {number}. {text}", bold=True)


def _run(engine: Engine, runbook: str, params: dict[str, str], requester: str) -> RunResult:
    result = engine.run(runbook, params, requester=requester, source="demo",
                        on_progress=render.ProgressBar())
    click.echo(render.result_text(result))
    if not result.ok:
        raise click.ClickException(f"{runbook} did not succeed ({result.status}); see above")
    return result


@click.command("demo")
@click.option("--cluster", default="demo", show_default=True, help="Name of the demo cluster.")
@click.option("--keep-sandbox", is_flag=True, help="Leave the sandbox running at the end.")
@click.pass_obj
def demo_cmd(settings: Settings, cluster: str, keep_sandbox: bool) -> None:
    """Run the whole job locally: hello, sandbox, provision, SSH, teardown, audit."""
    from clusterbook.archive.audit import verify_archive
    from clusterbook.sandbox.image import default_cache_dir
    from clusterbook.sandbox.lifecycle import sandbox_down, sandbox_up

    runs: list[RunResult] = []
    _step(1, "A first runbook through the engine")
    engine = Engine(settings)
    engine.recover()
    runs.append(_run(engine, "00_hello", {"name": "clusterbook"}, settings.requester))

    _step(2, "Start the sandbox (moto as EC2, nspawn machines as instances)")
    status = sandbox_up(settings, cache_dir=default_cache_dir(os.environ))
    click.echo(f"sandbox EC2 at {status.endpoint_url}, VPC {status.cidr}")
    # The sandbox's moto accepts any credentials; real AWS ones are never needed or sent here.
    for name, value in status.settings_environment().items():
        if name.startswith("AWS_"):
            os.environ.setdefault(name, value)
    sandboxed = Settings.load(
        state_dir=settings.state_dir,
        aws_endpoint_url=status.endpoint_url,
        aws_region=status.region,
        ssh_address="private",
        sandbox=True,
    )
    engine = Engine(sandboxed)

    try:
        _step(3, f"Provision cluster {cluster!r}")
        runs.append(_run(engine, "01_provision", {"cluster": cluster}, settings.requester))

        _step(4, "Reach every machine over SSH, host keys checked")
        _check_nodes(sandboxed, cluster)

        _step(5, f"Tear down cluster {cluster!r}")
        runs.append(_run(engine, "04_teardown", {"cluster": cluster, "confirm": cluster},
                         settings.requester))
    finally:
        if not keep_sandbox:
            _step(6, "Stop the sandbox")
            removed = sandbox_down(sandboxed)
            click.echo(f"removed: {', '.join(removed) if removed else 'nothing left'}")

    report = verify_archive(engine.index, engine.store)
    click.secho("\n== Summary", bold=True)
    for result in runs:
        click.echo(f"  {result.run_id}  {result.runbook:<14} {result.status:<10} "
                   f"{result.record.html_url}")
    click.echo(f"  audit: {report.checked} runs checked, {len(report.findings)} problem(s)")
    if not report.ok:
        raise click.ClickException("the audit trail has problems; run `clusterbook audit verify`")


def _check_nodes(settings: Settings, cluster: str) -> None:
    from clusterbook.aws.inventory import read_inventory
    from clusterbook.nodes.ssh import connect_inventory, run_on_nodes

    inventory = read_inventory(settings, cluster)
    connections = connect_inventory(settings, inventory)
    try:
        results = run_on_nodes(connections, "hostname; systemctl is-system-running || true; "
                                            "ip -brief -4 addr show scope global")
    finally:
        for connection in connections:
            connection.close()
    for result in results:
        lines = " | ".join(line.strip() for line in result.stdout.strip().splitlines())
        click.echo(f"  {result.node}: {lines}")


def register(group: click.Group) -> None:
    group.add_command(demo_cmd)

"""CLI commands about runbooks and runs: runbooks, run, runs, show, audit verify."""

from __future__ import annotations

import json
import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import click

from clusterbook.archive.index import STATUSES
from clusterbook.cli import render
from clusterbook.engine import Engine, read_outputs
from clusterbook.settings import Settings

logger = logging.getLogger(__name__)

EXIT_RUN_FAILED = 1
#: The shell's code for "ended by SIGTERM": the run was stopped and sealed "interrupted".
EXIT_TERMINATED = 128 + signal.SIGTERM


def _engine(ctx: click.Context) -> Engine:
    """One engine per CLI call; it first seals runs left behind by a crashed process."""
    settings: Settings = ctx.obj
    engine = Engine(settings)
    engine.recover()
    return engine


@click.command("runbooks")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def runbooks_cmd(ctx: click.Context, as_json: bool) -> None:
    """List the runbooks and their parameters (type, default, help)."""
    from clusterbook.catalogue import Catalogue

    catalogue = Catalogue(ctx.obj.runbooks_dir)
    books = catalogue.list()
    if as_json:
        click.echo(json.dumps([rb.to_dict() for rb in books], indent=2))
    else:
        click.echo(render.runbooks_text(books))
    for name, problem in catalogue.problems().items():
        click.echo(f"not usable: {name}: {problem.message}", err=True)


@click.command("run")
@click.argument("runbook")
@click.option("-p", "--param", "params", multiple=True, metavar="NAME=VALUE",
              help="Set a parameter; repeat for more. Values are data, never code.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.pass_context
def run_cmd(
    ctx: click.Context, runbook: str, params: tuple[str, ...], as_json: bool, quiet: bool
) -> None:
    """Run RUNBOOK with parameters, archive it, and print how it ended.

    \b
    Example:
      clusterbook run 00_hello -p name=Ada -p times=2
    Exit code 0 if the run succeeded, 1 if it failed, timed out or was cancelled,
    2 if a parameter was refused (nothing ran), 3 if the cluster is locked, 143 if it was
    stopped by SIGTERM (sealed "interrupted").
    """
    engine = _engine(ctx)
    book = engine.catalogue.get(runbook)
    values = book.parse_words(list(params))
    progress = None if (quiet or as_json) else render.ProgressBar()

    with _interrupt_on_sigterm(engine) as terminated:
        result = engine.run(
            book.name, values.values, requester=ctx.obj.requester, source="cli",
            on_progress=progress,
        )
    if as_json:
        click.echo(json.dumps(_result_dict(result), indent=2, default=str))
    else:
        click.echo(render.result_text(result))
    if terminated.is_set():
        ctx.exit(EXIT_TERMINATED)
    if not result.ok:
        ctx.exit(EXIT_RUN_FAILED)


@contextmanager
def _interrupt_on_sigterm(engine: Engine) -> Iterator[threading.Event]:
    """While a run executes, SIGTERM (a stopping CI job, systemd, ``kill``) stops it the way a
    shutdown should: the run ends "interrupted", sealed with its partial notebook, instead of
    being left for the next start to find."""
    terminated = threading.Event()

    def on_sigterm(signum: int, frame: object) -> None:
        terminated.set()
        # Not in the handler itself: it may have interrupted a thread holding the engine's
        # lock, which interrupt_all takes too.
        threading.Thread(target=engine.interrupt_all, name="sigterm", daemon=True).start()

    if threading.current_thread() is not threading.main_thread():
        yield terminated
        return
    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield terminated
    finally:
        signal.signal(signal.SIGTERM, previous)


def _result_dict(result) -> dict:
    return {
        "run_id": result.run_id,
        "runbook": result.runbook,
        "status": result.status,
        "params": result.params,
        "outputs": result.outputs,
        "error": None if result.error is None else {
            "cell_index": result.error.cell_index,
            "ename": result.error.ename,
            "evalue": result.error.evalue,
            "step": result.error.step_title,
        },
        "duration_s": round(result.duration_s, 3),
        "notebook": result.record.notebook_url,
        "html": result.record.html_url,
    }


@click.command("runs")
@click.option("--cluster", help="Only runs on this cluster.")
@click.option("--status", type=click.Choice(STATUSES), help="Only runs that ended so.")
@click.option("--runbook", help="Only runs of this runbook.")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 10000))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def runs_cmd(
    ctx: click.Context, cluster: str | None, status: str | None, runbook: str | None,
    limit: int, as_json: bool,
) -> None:
    """List runs, newest first."""
    engine = _engine(ctx)
    records = engine.index.list(cluster=cluster, status=status, runbook=runbook, limit=limit)
    if as_json:
        click.echo(json.dumps([r.to_dict() for r in records], indent=2))
    else:
        click.echo(render.runs_text(records))


@click.command("show")
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def show_cmd(ctx: click.Context, run_id: str, as_json: bool) -> None:
    """Show one run: summary, parameters, outputs, error and archived files."""
    engine = _engine(ctx)
    record = engine.index.get(run_id)
    outputs = {}
    if record.notebook_url:
        import nbformat

        nb = nbformat.reads(engine.store.read(record.notebook_url).decode(), as_version=4)
        outputs = read_outputs(nb)
    if as_json:
        click.echo(json.dumps({**record.to_dict(), "outputs": outputs}, indent=2))
    else:
        click.echo(render.record_text(record, outputs))


@click.group("audit")
def audit_group() -> None:
    """Check the audit trail."""


@audit_group.command("verify")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def audit_verify_cmd(ctx: click.Context, as_json: bool) -> None:
    """Recompute the run chain and archived file hashes; exit 7 if anything changed."""
    from clusterbook.archive.audit import verify_archive
    from clusterbook.errors import AuditError

    engine = Engine(ctx.obj)
    report = verify_archive(engine.index, engine.store)
    if as_json:
        click.echo(json.dumps({
            "checked": report.checked,
            "findings": [f.__dict__ for f in report.findings],
        }, indent=2))
    else:
        for finding in report.findings:
            click.echo(str(finding))
        click.echo(f"{report.checked} runs checked, {len(report.findings)} problem(s) found")
    if not report.ok:
        ctx.exit(AuditError.exit_code)


def register(group: click.Group) -> None:
    for command in (runbooks_cmd, run_cmd, runs_cmd, show_cmd, audit_group):
        group.add_command(command)

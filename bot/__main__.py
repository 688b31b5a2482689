"""``clusterbook-bot``: start the Slack bot over HTTP or Socket Mode, or run the local demo.

    clusterbook-bot http [--bind 127.0.0.1:3000] [--threads 4]
    clusterbook-bot socket
    clusterbook-bot demo

Settings come from the environment (see ``config.py`` for the Slack side and
``clusterbook.settings`` for the rest); secrets never from the command line.
"""

from __future__ import annotations

import logging
import os
import sys

import click

from clusterbook.errors import ClusterbookError
from clusterbook.logs import configure_service_logging
from clusterbook.settings import Settings
from clusterbook_bot.config import BotConfig, scrub_credentials

logger = logging.getLogger(__name__)

#: Request threads. Answering Slack is CPU work that never waits on the network (whatever is
#: slow runs after the ack), and Python runs one thread at a time, so more threads only add
#: switching: at 20 concurrent requests, 16 threads gave a p99 of 50-59 ms, 4 gave 24-25 ms
#: (bench/ack_latency.py). A few spare threads cover the rare ack that waits, such as a
#: first look-up of a user group's members.
DEFAULT_THREADS = 4


def configure_logging(level: int) -> None:
    """The library's service logging (run ids, redaction), also for the bot's loggers."""
    configure_service_logging(level)
    source = logging.getLogger("clusterbook")
    target = logging.getLogger("clusterbook_bot")
    for handler in source.handlers:
        if getattr(handler, "_clusterbook", False) and handler not in target.handlers:
            target.addHandler(handler)
    target.setLevel(level)
    for noisy in ("slack_bolt", "slack_sdk", "urllib3", "botocore", "papermill", "traitlets"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="DEBUG logging (the wire).")
@click.pass_context
def main(ctx: click.Context, verbose: bool) -> None:
    """The clusterbook Slack bot."""
    configure_logging(logging.DEBUG if verbose else logging.INFO)
    ctx.obj = verbose


@main.command()
@click.option(
    "--bind",
    default="127.0.0.1:3000",
    show_default=True,
    help="Address gunicorn listens on (0.0.0.0:3000 in a container).",
)
@click.option(
    "--threads",
    default=DEFAULT_THREADS,
    show_default=True,
    type=click.IntRange(1, 64),
    help="Request threads of the single worker process.",
)
@click.pass_obj
def http(verbose: bool, bind: str, threads: int) -> None:
    """Serve Slack's HTTP requests (slash commands, buttons, modals) with gunicorn."""
    from clusterbook_bot.app import BotService
    from clusterbook_bot.server import serve_http

    config, settings = _load()
    _check(config, http=True)

    def build_service() -> BotService:  # runs in the gunicorn worker, after the fork
        return BotService(settings, config, http=True)

    serve_http(build_service, bind=bind, threads=threads, log_level="debug" if verbose else "info")


@main.command()
def socket() -> None:
    """Connect to Slack with Socket Mode (needs SLACK_APP_TOKEN; no public URL)."""
    from clusterbook_bot.app import BotService
    from clusterbook_bot.server import serve_socket_mode

    config, settings = _load()
    _check(config, http=False, socket_mode=True)
    try:
        service = BotService(settings, config, http=False)
    except ClusterbookError as exc:
        _fail(str(exc))
    serve_socket_mode(service, app_token=config.app_token.reveal())


@main.command()
@click.option(
    "--text",
    default="run 00_hello name=demo times=2 style=table",
    show_default=True,
    help="What to type after the slash command.",
)
def demo(text: str) -> None:
    """Run the bot against the local Slack stand-in and show what it posts."""
    from clusterbook_bot.demo import run_demo

    run_demo(text)


def _load() -> tuple[BotConfig, Settings]:
    try:
        config, settings = BotConfig.from_environ(), Settings.load()
        scrub_credentials(os.environ)
        return config, settings
    except ClusterbookError as exc:
        _fail(str(exc))
        raise  # unreachable; keeps type checkers content


def _check(config: BotConfig, *, http: bool, socket_mode: bool = False) -> None:
    try:
        config.check(http=http, socket_mode=socket_mode)
    except ClusterbookError as exc:
        _fail(str(exc))


def _fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(2)


if __name__ == "__main__":
    main()

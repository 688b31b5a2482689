"""The two ways Slack reaches the bot: HTTP behind gunicorn, or Socket Mode.

HTTP: gunicorn (threaded ``gthread`` worker) serves a small WSGI app: ``POST /slack/events``
goes to Bolt, ``GET /healthz`` answers liveness probes. There is exactly one worker process,
because the worker pool and the runs it executes live in that process (and it alone resumes
queued runs on start); concurrency comes from the worker's threads. The service is built in
the worker after the fork, never in the gunicorn master. On SIGTERM the worker finishes the
requests it is answering, then (gunicorn's ``worker_exit`` hook) stops the service gracefully:
runs in progress end "interrupted" and sealed, queued ones stay queued for the next start.

Socket Mode: the bot opens a WebSocket to Slack (``apps.connections.open`` gives the URL) and
answers each envelope on it; no public URL is needed. Slack signs nothing here: the app-level
token authenticates the connection.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from collections.abc import Callable, Iterable
from typing import Any

from gunicorn.app.base import BaseApplication
from slack_bolt.adapter.socket_mode import SocketModeHandler
from slack_bolt.adapter.wsgi import SlackRequestHandler

from clusterbook.errors import ClusterbookError
from clusterbook_bot.app import BotService

logger = logging.getLogger(__name__)

EVENTS_PATH = "/slack/events"
HEALTH_PATH = "/healthz"
#: Slack's requests are small forms; anything bigger is refused before it is read.
MAX_BODY_BYTES = 1024 * 1024

#: The exit status by which a gunicorn worker tells the master it cannot boot.
WORKER_BOOT_ERROR = 3

StartResponse = Callable[[str, list[tuple[str, str]]], Any]


class WsgiApp:
    """Routes the two paths; everything else is 404."""

    def __init__(self, service: BotService) -> None:
        self.service = service
        self.slack = SlackRequestHandler(service.app, path=EVENTS_PATH)

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO") or "/"
        method = environ.get("REQUEST_METHOD") or "GET"
        if path == EVENTS_PATH and method == "POST":
            if _content_length(environ) > MAX_BODY_BYTES:
                return _plain(start_response, "413 Payload Too Large", "request too large")
            return self.slack(environ, start_response)
        if path == HEALTH_PATH and method == "GET":
            return _plain(start_response, "200 OK", "ok")
        return _plain(start_response, "404 Not Found", "not found")


def _content_length(environ: dict[str, Any]) -> int:
    try:
        return int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return MAX_BODY_BYTES + 1


def _plain(start_response: StartResponse, status: str, text: str) -> list[bytes]:
    body = text.encode()
    start_response(status, [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


class GunicornServer(BaseApplication):
    """gunicorn run from our own entry point, with our options and no config file."""

    def __init__(self, build_service: Callable[[], BotService], options: dict[str, Any]) -> None:
        self.build_service = build_service
        self.options = options
        self.service: BotService | None = None
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self) -> WsgiApp:
        try:
            service = self.build_service()
        except ClusterbookError as exc:
            # gunicorn's "worker failed to boot": the master stops instead of retrying forever.
            logger.error("cannot start the bot: %s", exc)
            sys.exit(WORKER_BOOT_ERROR)
        service.start()
        self.service = service
        logger.info("bot ready: HTTP requests to %s", EVENTS_PATH)
        return WsgiApp(service)

    def stop_service(self, arbiter: Any, worker: Any) -> None:
        """gunicorn's ``worker_exit`` hook: runs in the worker once it stops serving."""
        if self.service is not None:
            logger.info("bot stopping: interrupting runs in progress, keeping queued ones")
            self.service.stop()


def serve_http(
    build_service: Callable[[], BotService], *, bind: str, threads: int, log_level: str
) -> None:
    """Serve until SIGTERM/SIGINT (blocks)."""
    options = {
        "bind": [bind],
        "workers": 1,
        "worker_class": "gthread",
        "threads": threads,
        "backlog": 256,
        "keepalive": 5,
        "timeout": 60,
        "graceful_timeout": 20,
        "accesslog": None,
        "errorlog": "-",
        "loglevel": log_level,
        "proc_name": "clusterbook-bot",
        "control_socket_disable": True,
        # Slack sends small forms; refuse anything huge before Bolt reads it.
        "limit_request_line": 8190,
        "limit_request_fields": 100,
    }
    server = GunicornServer(build_service, options)
    server.cfg.set("worker_exit", server.stop_service)
    server.run()


def serve_socket_mode(service: BotService, *, app_token: str) -> None:
    """Connect to Slack over a WebSocket and answer until SIGTERM/SIGINT (blocks)."""
    handler = SocketModeHandler(service.app, app_token=app_token)
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        logger.info("signal %s: closing the Socket Mode connection", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    service.start()
    handler.connect()
    logger.info("bot ready: Socket Mode")
    try:
        stop.wait()
    finally:
        handler.close()
        service.stop()

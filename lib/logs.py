"""Logging set-up: every line carries its run id, and no line carries a secret.

The run id lives in a context variable, set by the engine for the thread (or kernel) that
executes a run; a filter copies it onto each record and redacts the message. Handlers are
configured only at the edge (CLI, bot, notebook kernel), never on import.
"""

from __future__ import annotations

import contextvars
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from clusterbook.redact import redact_text

current_run_id: contextvars.ContextVar[str] = contextvars.ContextVar("run_id", default="-")

FORMAT = "%(asctime)s %(levelname)-7s [%(run_id)s] %(name)s: %(message)s"
NOTEBOOK_FORMAT = "%(levelname)s [%(run_id)s] %(message)s"


class RunContextFilter(logging.Filter):
    """Adds ``run_id`` to the record and redacts its message, traceback and stack before any
    handler sees them (an exception's text may quote a token as easily as a message does)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "run_id") or record.run_id in (None, "-"):
            record.run_id = current_run_id.get()

        # Formatters use ``exc_text`` when it is set, so the redacted form is what they print.
        if record.exc_info and not record.exc_text:
            record.exc_text = _TRACEBACKS.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact_text(record.exc_text)
        if record.stack_info:
            record.stack_info = redact_text(record.stack_info)

        try:
            message = record.getMessage()
        except (TypeError, ValueError):
            return True
        record.msg = redact_text(message)
        record.args = None
        return True


_TRACEBACKS = logging.Formatter()


@contextmanager
def run_id_scope(run_id: str) -> Iterator[None]:
    """Log lines emitted inside this block (in this thread) carry ``run_id``."""
    token = current_run_id.set(run_id)
    try:
        yield
    finally:
        current_run_id.reset(token)


def _install(handler: logging.Handler, level: int, fmt: str) -> None:
    handler.setFormatter(logging.Formatter(fmt))
    handler.addFilter(RunContextFilter())
    root = logging.getLogger("clusterbook")
    for old in list(root.handlers):
        if getattr(old, "_clusterbook", False):
            root.removeHandler(old)
    handler._clusterbook = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)


def configure_cli_logging(verbose: int) -> None:
    """Warnings by default, INFO with -v, DEBUG (the wire) with -vv; to stderr."""
    level = logging.WARNING if verbose <= 0 else logging.INFO if verbose == 1 else logging.DEBUG
    _install(logging.StreamHandler(sys.stderr), level, FORMAT)
    for noisy in ("werkzeug", "botocore", "urllib3", "paramiko", "traitlets", "papermill"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if verbose >= 3 else logging.WARNING)


def configure_service_logging(level: int = logging.INFO) -> None:
    """For long-running services (the bot): INFO to stderr, each line with its run id."""
    _install(logging.StreamHandler(sys.stderr), level, FORMAT)


def configure_notebook_logging(run_id: str) -> None:
    """In a runbook's kernel: INFO lines appear in the cell output, and so in the archive."""
    current_run_id.set(run_id)
    _install(logging.StreamHandler(sys.stdout), logging.INFO, NOTEBOOK_FORMAT)

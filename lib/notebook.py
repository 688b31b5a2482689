"""What a runbook's cells import: the run context and ``record`` for outputs.

A runbook run by the engine gets its context (run id, settings) through the file named by
``CLUSTERBOOK_RUN_CONTEXT``. Opened by hand in Jupyter there is no such file, and the context
is built from the environment and config file exactly as the CLI would build it.

``record(name, value)`` stores a JSON-able value in the executed notebook as a display output
of its own MIME type, next to a readable rendering; the engine reads these back into the run's
outputs for the CLI and Slack summaries.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clusterbook.errors import UserInputError
from clusterbook.settings import Settings

logger = logging.getLogger(__name__)

CONTEXT_ENV = "CLUSTERBOOK_RUN_CONTEXT"
OUTPUT_MIME = "application/vnd.clusterbook.output+json"


@dataclass(frozen=True)
class RunContext:
    """Who is running this runbook, where state lives, and which run this is."""

    run_id: str
    settings: Settings
    requester: str
    by_engine: bool


_context: RunContext | None = None


def context() -> RunContext:
    """The current run's context; built once per kernel."""
    global _context
    if _context is None:
        _context = _load_context()
        _configure_logging(_context.run_id)
    return _context


def _load_context() -> RunContext:
    path = os.environ.get(CONTEXT_ENV)
    if not path:
        settings = Settings.load()
        run_id = "manual-" + uuid.uuid4().hex[:8]
        return RunContext(run_id, settings, settings.requester, by_engine=False)

    data = json.loads(Path(path).read_text())
    settings = Settings.from_dict(data["settings"])
    return RunContext(data["run_id"], settings, data.get("requester", ""), by_engine=True)


def _configure_logging(run_id: str) -> None:
    """INFO lines from the library show in the cell output, each with the run id."""
    from clusterbook.logs import configure_notebook_logging

    configure_notebook_logging(run_id)


def record(name: str, value: Any, *, title: str | None = None) -> None:
    """Store ``value`` under ``name`` in this run's outputs and show it in the notebook."""
    if not name or not name.replace("_", "").replace("-", "").isalnum():
        raise UserInputError(f"output name {name!r} must be letters, digits, '_' or '-'")
    try:
        payload = json.loads(json.dumps(value))
    except (TypeError, ValueError) as exc:
        raise UserInputError(
            f"output {name!r} is not JSON-able: {exc}",
            hint="record plain dicts, lists, strings and numbers",
        ) from exc

    from IPython.display import display

    from clusterbook.redact import redact_value

    payload = redact_value(payload)
    bundle = {
        OUTPUT_MIME: {"name": name, "value": payload},
        "text/plain": render_text(name, payload, title=title),
    }
    if _is_table(payload):
        bundle["text/html"] = render_html_table(payload, title=title or name)
    display(bundle, raw=True)


def _is_table(value: Any) -> bool:
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(row, dict) for row in value)
    )


def render_text(name: str, value: Any, *, title: str | None = None) -> str:
    """A plain-text rendering: tables as aligned columns, the rest as JSON."""
    heading = title or name
    if not _is_table(value):
        return f"{heading}: {json.dumps(value, indent=2, sort_keys=True)}"

    columns = list(dict.fromkeys(key for row in value for key in row))
    cells = [[str(row.get(col, "")) for col in columns] for row in value]
    widths = [max(len(col), *(len(r[i]) for r in cells)) for i, col in enumerate(columns)]
    lines = [heading, "  ".join(col.ljust(w) for col, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(lines)


def render_html_table(rows: list[dict[str, Any]], *, title: str) -> str:
    from html import escape

    columns = list(dict.fromkeys(key for row in rows for key in row))
    head = "".join(f"<th>{escape(str(c))}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{escape(str(r.get(c, '')))}</td>" for c in columns) + "</tr>"
        for r in rows
    )
    return f"<b>{escape(title)}</b><table><tr>{head}</tr>{body}</table>"

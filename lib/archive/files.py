"""What is archived for one run: the redacted executed notebook, its HTML rendering and the
sealed run record, under ``runs/<run id>/`` in the archive store.

Redaction happens here, on the whole notebook (cell sources, outputs, metadata), so the
injected-parameters cell, tracebacks and printed text are all covered before anything leaves
the process.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from dataclasses import dataclass
from typing import Any

import nbformat

from clusterbook.archive.index import RunRecord
from clusterbook.archive.stores import ArchiveStore
from clusterbook.redact import Redactor, strip_ansi

logger = logging.getLogger(__name__)

_exporter_lock = threading.Lock()
_exporter: Any = None


@dataclass(frozen=True)
class ArchivedFiles:
    notebook_url: str
    notebook_sha256: str
    html_url: str | None
    html_sha256: str | None


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def redact_notebook(nb: Any, redactor: Redactor) -> Any:
    """A copy of the notebook with every string redacted and ANSI codes removed."""
    # Walk the in-memory notebook, where every text is one string; its JSON form splits texts
    # into lines, and a private key split over lines would escape the patterns.
    return nbformat.from_dict(_walk(nb, redactor))


def _walk(value: Any, redactor: Redactor) -> Any:
    if isinstance(value, str):
        return redactor.text(strip_ansi(value))
    if isinstance(value, list):
        return [_walk(v, redactor) for v in value]
    if isinstance(value, dict):
        return {k: _walk(v, redactor) for k, v in value.items()}
    return value


def render_html(nb: Any) -> bytes:
    """The notebook as a stand-alone HTML page, as an auditor would read it in a browser."""
    global _exporter
    from nbconvert import HTMLExporter

    with _exporter_lock:
        if _exporter is None:
            _exporter = HTMLExporter()
        body, _resources = _exporter.from_notebook_node(nb)
    return body.encode()


#: Where the archive keeps the chain's head (see ``archive_record``).
CHAIN_HEAD_KEY = "chain-head.json"


def archive_notebook(
    store: ArchiveStore,
    *,
    run_id: str,
    nb: Any,
    redactor: Redactor,
    with_html: bool = True,
) -> ArchivedFiles:
    """Redact and write the notebook and its HTML; return their locations and hashes."""
    clean = redact_notebook(nb, redactor)
    notebook_bytes = nbformat.writes(clean).encode()
    notebook_url = store.write(
        f"runs/{run_id}/notebook.ipynb", notebook_bytes, content_type="application/x-ipynb+json"
    )

    html_url = html_sha = None
    if with_html:
        try:
            html = render_html(clean)
        except Exception as exc:  # a broken rendering must not lose the notebook itself
            logger.warning("run %s: HTML rendering failed: %s", run_id, exc)
        else:
            html_url = store.write(f"runs/{run_id}/notebook.html", html, content_type="text/html")
            html_sha = sha256_hex(html)

    return ArchivedFiles(notebook_url, sha256_hex(notebook_bytes), html_url, html_sha)


def archive_record(store: ArchiveStore, record: RunRecord) -> str:
    """The sealed record, next to its notebook, for auditors who only have the archive; and
    the chain's head (position and hash of the newest sealed record), so that removing the
    newest records from the index cannot go unnoticed."""
    data = json.dumps(record.to_dict(), indent=2, sort_keys=True).encode()
    url = store.write(f"runs/{record.run_id}/record.json", data, content_type="application/json")

    head = {"chain_seq": record.chain_seq, "run_id": record.run_id, "hash": record.record_hash}
    store.write(CHAIN_HEAD_KEY, json.dumps(head).encode(), content_type="application/json")
    return url

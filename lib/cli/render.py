"""How the CLI shows things to a person: tables, run summaries, the progress bar.

All terminal wording of the CLI lives here, so it stays consistent and testable.
"""

from __future__ import annotations

import json
import sys
from typing import Any, TextIO

from clusterbook.archive.index import RunRecord
from clusterbook.catalogue import Runbook
from clusterbook.engine import ProgressEvent, RunResult
from clusterbook.notebook import render_text

STATUS_MARK = {
    "succeeded": "ok",
    "failed": "FAILED",
    "timed-out": "TIMED OUT",
    "cancelled": "cancelled",
    "interrupted": "INTERRUPTED",
    "queued": "queued",
    "running": "running",
}


def table(rows: list[list[str]], headers: list[str]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines)


def runbooks_text(runbooks: list[Runbook]) -> str:
    parts = []
    for rb in runbooks:
        flag = "  (changes a cluster)" if rb.changes_cluster else ""
        parts.append(f"{rb.name} — {rb.title}{flag}")
        if rb.description:
            parts.append(f"    {rb.description}")
        for spec in rb.parameters.values():
            default = "(secret)" if spec.secret else json.dumps(spec.default)
            parts.append(f"    {spec.name:<20} {spec.describe_type():<28} default {default}")
            if spec.help:
                parts.append(f"    {'':<20} {spec.help}")
        parts.append("")
    return "\n".join(parts).rstrip()


def runs_text(records: list[RunRecord]) -> str:
    if not records:
        return "no runs yet — start one with `clusterbook run 00_hello`"
    rows = [
        [r.run_id, r.runbook, r.cluster or "-", STATUS_MARK.get(r.status, r.status),
         r.requester, r.created_at[:19].replace("T", " ")]
        for r in records
    ]
    return table(rows, ["RUN", "RUNBOOK", "CLUSTER", "STATUS", "BY", "STARTED (UTC)"])


def record_text(record: RunRecord, outputs: dict[str, Any] | None = None) -> str:
    lines = [
        f"run        {record.run_id}",
        f"runbook    {record.runbook}",
        f"status     {STATUS_MARK.get(record.status, record.status)}",
        f"requester  {record.requester} via {record.source}"
        + (f" in {record.channel}" if record.channel else ""),
    ]
    if record.approved_by:
        lines.append(f"approved   {record.approved_by}")
    if record.cluster:
        lines.append(f"cluster    {record.cluster}")
    lines.append(f"started    {record.started_at or record.created_at}")
    if record.ended_at:
        lines.append(f"ended      {record.ended_at}")
    if record.params:
        params = " ".join(f"{k}={json.dumps(v)}" for k, v in record.params.items())
        lines.append(f"params     {params}")
    if record.error_summary:
        lines.append(f"error      {record.error_summary}")
    if record.notebook_url:
        lines.append(f"notebook   {record.notebook_url}")
    if record.html_url:
        lines.append(f"html       {record.html_url}")
    if outputs:
        lines.append("outputs")
        for name, value in outputs.items():
            lines.extend("  " + line for line in render_text(name, value).splitlines())
    return "\n".join(lines)


def result_text(result: RunResult) -> str:
    text = record_text(result.record, result.outputs)
    if result.error and result.error.traceback:
        tail = "\n".join(result.error.traceback.strip().splitlines()[-12:])
        text += "\ntraceback (last lines)\n" + "\n".join("  " + ln for ln in tail.splitlines())
    for note in result.notes:
        text += f"\nnote       {note}"
    return text


class ProgressBar:
    """One line, redrawn, on a terminal; one line per step elsewhere (logs, CI)."""

    def __init__(self, stream: TextIO | None = None, width: int = 24) -> None:
        self.stream = stream or sys.stderr
        self.width = width
        self.tty = self.stream.isatty()
        self._last = ""

    def __call__(self, event: ProgressEvent) -> None:
        filled = int(event.fraction * self.width)
        bar = "#" * filled + "." * (self.width - filled)
        line = f"[{bar}] {event.describe()}"
        if self.tty:
            self.stream.write("\r\x1b[2K" + line[:120])
            if event.kind == "finished":
                self.stream.write("\n")
        elif event.describe() != self._last:
            self.stream.write(line + "\n")
        self._last = event.describe()
        self.stream.flush()

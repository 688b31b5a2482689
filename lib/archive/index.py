"""The run index: one SQLite row per run, from "queued" to how it ended, hash-chained.

A run's row is written before anything executes ("queued", then "running" with the pid of
the process running it), so a run is never lost: if that process dies, the next engine start
finds the row, sees the pid gone and marks the run "interrupted".

When a run ends its row is sealed: it gets the next place in the chain, the hash of the
previous sealed row, and a hash over its own fields and that previous hash. Changing any
sealed field, or removing a row, breaks the chain; ``clusterbook audit verify`` finds where.
This makes changes evident, not impossible: someone who can rewrite the database can rewrite
the whole chain, which is why the archive also keeps each sealed record next to its notebook.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from clusterbook.errors import ArchiveError, RunNotFound

logger = logging.getLogger(__name__)

FINAL_STATUSES = ("succeeded", "failed", "timed-out", "cancelled", "interrupted")
STATUSES = ("queued", "running", *FINAL_STATUSES)
GENESIS = "0" * 64

#: The fields a seal covers, in a fixed order. Changing any of them breaks the chain.
SEALED_FIELDS = (
    "run_id", "runbook", "params", "cluster", "requester", "channel", "approved_by", "source",
    "status", "created_at", "started_at", "ended_at", "error_summary", "failing_cell",
    "notebook_url", "notebook_sha256", "html_url", "html_sha256", "runbooks_commit",
    "outputs_sha256", "chain_seq", "prev_hash",
)


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


@dataclass
class RunRecord:
    """Everything the index knows about one run. ``params`` are already redacted."""

    run_id: str
    runbook: str
    params: dict[str, Any]
    requester: str
    source: str
    status: str = "queued"
    cluster: str | None = None
    channel: str | None = None
    approved_by: str | None = None
    created_at: str = field(default_factory=utc_now)
    started_at: str | None = None
    ended_at: str | None = None
    error_summary: str | None = None
    failing_cell: int | None = None
    notebook_url: str | None = None
    notebook_sha256: str | None = None
    html_url: str | None = None
    html_sha256: str | None = None
    record_url: str | None = None
    runbooks_commit: str | None = None
    outputs_sha256: str | None = None
    pid: int | None = None
    pid_start: str | None = None
    instance: str | None = None
    work_path: str | None = None
    chain_seq: int | None = None
    prev_hash: str | None = None
    record_hash: str | None = None

    @property
    def finished(self) -> bool:
        return self.status in FINAL_STATUSES

    def sealed_payload(self) -> bytes:
        data = {name: getattr(self, name) for name in SEALED_FIELDS}
        return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()

    def compute_hash(self) -> str:
        return hashlib.sha256(self.sealed_payload()).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_COLUMNS = [f.name for f in dataclasses.fields(RunRecord)]
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS runs (
    {", ".join(f"{c} TEXT" if c not in ("failing_cell", "pid", "chain_seq") else f"{c} INTEGER"
               for c in _COLUMNS)},
    PRIMARY KEY (run_id)
);
CREATE UNIQUE INDEX IF NOT EXISTS runs_chain ON runs (chain_seq);
CREATE INDEX IF NOT EXISTS runs_status ON runs (status);
CREATE INDEX IF NOT EXISTS runs_cluster ON runs (cluster);
"""


class RunIndex:
    """The SQLite run index. Safe to share between threads and processes."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._local = threading.local()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self._connect() as db:
                db.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise ArchiveError(f"cannot open the run index {self.path}: {exc}") from exc

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            self._local.db = db
        yield db

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None

    def insert(self, record: RunRecord) -> None:
        row = _to_row(record)
        marks = ", ".join("?" for _ in _COLUMNS)
        with self._connect() as db:
            db.execute(f"INSERT INTO runs ({', '.join(_COLUMNS)}) VALUES ({marks})",
                       [row[c] for c in _COLUMNS])

    def update(self, run_id: str, **changes: Any) -> None:
        """Change fields of a run that is not sealed yet."""
        if not changes:
            return
        unknown = set(changes) - set(_COLUMNS)
        if unknown:
            raise ArchiveError(f"unknown run index fields: {sorted(unknown)}")
        row = _to_row_partial(changes)
        assignments = ", ".join(f"{k} = ?" for k in row)
        with self._connect() as db:
            cursor = db.execute(
                f"UPDATE runs SET {assignments} WHERE run_id = ? AND record_hash IS NULL",
                [*row.values(), run_id],
            )
        if cursor.rowcount != 1:
            raise ArchiveError(f"run {run_id} is not in the index or is already sealed")

    def claim(self, run_id: str, *, pid: int, pid_start: str | None, instance: str) -> bool:
        """Move a queued run to running for this process; False if someone else took it.

        ``instance`` names the engine's machine (or pod), so that only the same instance
        decides later whether this pid is gone.
        """
        with self._connect() as db:
            cursor = db.execute(
                "UPDATE runs SET status = 'running', started_at = ?, pid = ?, pid_start = ?, "
                "instance = ? WHERE run_id = ? AND status = 'queued'",
                [utc_now(), pid, pid_start, instance, run_id],
            )
        return cursor.rowcount == 1

    def seal(self, record: RunRecord) -> RunRecord:
        """Finish a run: give it the next place in the chain and its hash, atomically."""
        if record.status not in FINAL_STATUSES:
            raise ArchiveError(f"cannot seal run {record.run_id} in status {record.status}")
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                last = db.execute(
                    "SELECT chain_seq, record_hash FROM runs WHERE chain_seq IS NOT NULL "
                    "ORDER BY chain_seq DESC LIMIT 1"
                ).fetchone()
                record.chain_seq = (last["chain_seq"] + 1) if last else 1
                record.prev_hash = last["record_hash"] if last else GENESIS
                record.record_hash = record.compute_hash()
                row = _to_row(record)
                assignments = ", ".join(f"{c} = ?" for c in _COLUMNS if c != "run_id")
                cursor = db.execute(
                    f"UPDATE runs SET {assignments} WHERE run_id = ? AND record_hash IS NULL",
                    [row[c] for c in _COLUMNS if c != "run_id"] + [record.run_id],
                )
                if cursor.rowcount != 1:
                    raise ArchiveError(f"run {record.run_id} is missing or already sealed")
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        return record

    def set_record_url(self, run_id: str, url: str) -> None:
        """Where the sealed record's archived copy lives (not itself part of the seal)."""
        with self._connect() as db:
            db.execute("UPDATE runs SET record_url = ? WHERE run_id = ?", [url, run_id])

    def get(self, run_id: str) -> RunRecord:
        with self._connect() as db:
            row = db.execute("SELECT * FROM runs WHERE run_id = ?", [run_id]).fetchone()
            if row is None:
                matches = db.execute(
                    "SELECT * FROM runs WHERE run_id LIKE ? LIMIT 2", [run_id + "%"]
                ).fetchall()
                row = matches[0] if len(matches) == 1 and len(run_id) >= 4 else None
        if row is None:
            raise RunNotFound(
                f"no run with id {run_id!r}", hint="list runs with `clusterbook runs`"
            )
        return _from_row(row)

    def list(
        self,
        *,
        cluster: str | None = None,
        status: str | None = None,
        runbook: str | None = None,
        limit: int = 50,
    ) -> list[RunRecord]:
        where, args = [], []
        for column, value in (("cluster", cluster), ("status", status), ("runbook", runbook)):
            if value:
                where.append(f"{column} = ?")
                args.append(value)
        sql = "SELECT * FROM runs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_at DESC, rowid DESC LIMIT ?"
        with self._connect() as db:
            return [_from_row(r) for r in db.execute(sql, [*args, limit]).fetchall()]

    def sealed_in_order(self) -> list[RunRecord]:
        with self._connect() as db:
            rows = db.execute(
                "SELECT * FROM runs WHERE chain_seq IS NOT NULL ORDER BY chain_seq"
            ).fetchall()
        return [_from_row(r) for r in rows]

    def unfinished(self) -> list[RunRecord]:
        with self._connect() as db:
            rows = db.execute(
                "SELECT * FROM runs WHERE status IN ('queued', 'running') ORDER BY created_at"
            ).fetchall()
        return [_from_row(r) for r in rows]


def _to_row(record: RunRecord) -> dict[str, Any]:
    return _to_row_partial(record.to_dict())


def _to_row_partial(values: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in values.items():
        out[key] = json.dumps(value, sort_keys=True) if key == "params" else value
    return out


def _from_row(row: sqlite3.Row) -> RunRecord:
    data = {key: row[key] for key in row.keys()}
    data["params"] = json.loads(data["params"] or "{}")
    return RunRecord(**data)


def process_start_time(pid: int) -> str | None:
    """The kernel's start time of a process, to tell a live pid from a reused one."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def process_alive(pid: int | None, start: str | None) -> bool:
    """True if ``pid`` still runs and is the process that started at ``start``.

    A zombie (exited, not yet reaped by its parent) counts as dead: it runs nothing.
    """
    if not pid:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] in ("Z", "X"):
        return False
    return start is None or fields[19] == start

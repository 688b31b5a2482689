"""The engine: turns a request into a run that is executed, archived and sealed.

    prepare()  validate parameters (no kernel yet), write the run as "queued"
    execute()  claim it, take the cluster lock, run the notebook, then always: archive the
               redacted notebook and its HTML, seal the record in the index, release the lock
    run()      both at once
    cancel()   stop a queued or running run of this process
    interrupt_all()  for a shutdown: stop this process's runs, start no more
    recover()  after a crash: runs whose process died become "interrupted", with whatever
               partial notebook they left archived

``CellError`` and ``read_outputs`` (from ``clusterbook.outcome``) are part of this module's
interface too.

Statuses: succeeded, failed (a cell raised, the kernel died, or the notebook called
``sys.exit`` with a non-zero code), timed-out (a cell or the whole run went over its limit),
cancelled, interrupted (the process running it died, or was shut down: ``interrupt_all``).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from clusterbook.archive.files import archive_notebook, archive_record, sha256_hex
from clusterbook.archive.index import RunIndex, RunRecord, process_alive, process_start_time
from clusterbook.archive.stores import open_store
from clusterbook.catalogue import Catalogue, Runbook
from clusterbook.errors import ClusterbookError, EngineClosed, UserInputError
from clusterbook.execution import CellStart, KernelHandle, execute
from clusterbook.locks import acquire_cluster_lock
from clusterbook.logs import run_id_scope
from clusterbook.notebook import CONTEXT_ENV
from clusterbook.outcome import CellError, classify, read_outputs
from clusterbook.parameters import ParameterSet
from clusterbook.redact import Redactor, is_marker
from clusterbook.settings import Settings

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProgressEvent:
    """Where a run is: sent when it starts, at each cell, and when it ends."""

    run_id: str
    runbook: str
    kind: str  # started | cell | finished
    cell_index: int = 0
    cell_total: int = 0
    step_index: int = 0
    step_total: int = 0
    step_title: str = ""
    status: str | None = None

    def describe(self) -> str:
        if self.kind == "finished":
            return f"{self.runbook}: {self.status}"
        if self.step_total:
            return f"step {self.step_index}/{self.step_total} — {self.step_title}"
        return self.step_title or "starting"

    @property
    def fraction(self) -> float:
        if self.kind == "finished":
            return 1.0
        return self.cell_index / self.cell_total if self.cell_total else 0.0


@dataclass
class RunResult:
    run_id: str
    runbook: str
    status: str
    params: dict[str, Any]
    outputs: dict[str, Any]
    error: CellError | None
    duration_s: float
    record: RunRecord
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status == "succeeded"

    @property
    def notebook_path(self) -> str | None:
        return self.record.notebook_url

    @property
    def html_path(self) -> str | None:
        return self.record.html_url


ProgressCallback = Callable[[ProgressEvent], None]


class Engine:
    """Runs runbooks for one set of settings. Thread-safe; one per process is enough."""

    def __init__(self, settings: Settings, *, catalogue: Catalogue | None = None) -> None:
        self.settings = settings
        self.catalogue = catalogue or Catalogue(settings.runbooks_dir)
        self.index = RunIndex(settings.index_path)
        self.store = open_store(
            settings.archive_url,
            endpoint_url=settings.aws_endpoint_url,
            region=settings.aws_region,
        )
        self._pending: dict[str, ParameterSet] = {}
        self._active: dict[str, KernelHandle] = {}
        self._cancelled: set[str] = set()
        self._closing = False
        self._guard = threading.Lock()

    # -- requests -------------------------------------------------------------------------

    def prepare(
        self,
        runbook: str,
        params: Mapping[str, Any],
        *,
        requester: str,
        source: str,
        channel: str | None = None,
        approved_by: str | None = None,
    ) -> RunRecord:
        """Validate and queue a run. Raises before anything is written if input is wrong."""
        book = self.catalogue.get(runbook)
        values = book.parse(params)
        run_id = new_run_id()

        record = RunRecord(
            run_id=run_id,
            runbook=book.name,
            params=values.redacted(),
            cluster=book.cluster_of(values.values),
            requester=requester,
            source=source,
            channel=channel,
            approved_by=approved_by,
            pid=os.getpid(),
            pid_start=process_start_time(os.getpid()),
        )
        self.index.insert(record)
        with self._guard:
            self._pending[run_id] = values
        logger.info("run %s queued: %s by %s (%s)", run_id, book.name, requester, source)
        return record

    def run(
        self,
        runbook: str,
        params: Mapping[str, Any],
        *,
        requester: str,
        source: str = "cli",
        channel: str | None = None,
        approved_by: str | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> RunResult:
        record = self.prepare(
            runbook, params, requester=requester, source=source, channel=channel,
            approved_by=approved_by,
        )
        return self.execute(record.run_id, on_progress=on_progress)

    def cancel(self, run_id: str) -> bool:
        """Cancel a queued run or stop a running one in this process."""
        record = self.index.get(run_id)
        with self._guard:
            handle = self._active.get(record.run_id)
            self._cancelled.add(record.run_id)
        if handle is not None:
            handle.stop("cancelled")
            return True
        if record.status == "running" and record.pid == os.getpid():
            # Claimed here a moment ago, its kernel not registered yet: it is stopped as
            # soon as it is (see _execute_claimed).
            return True
        if record.status == "queued":
            self._finish_unstarted(record, "cancelled", "cancelled before it started")
            return True
        return False

    def interrupt_all(self) -> list[str]:
        """Stop every run executing in this process, for a shutdown: each ends "interrupted",
        sealed with its partial notebook, and runs not started yet are refused from now on
        (they stay queued in the index, for the next start to resume)."""
        with self._guard:
            self._closing = True
            active = dict(self._active)
        for run_id, handle in active.items():
            logger.warning("run %s interrupted: the engine is shutting down", run_id)
            handle.stop("interrupted")
        return list(active)

    # -- execution ------------------------------------------------------------------------

    def execute(self, run_id: str, *, on_progress: ProgressCallback | None = None) -> RunResult:
        """Execute a queued run to its end. Always archives and seals, whatever happens."""
        with run_id_scope(run_id):
            record = self.index.get(run_id)
            if record.status != "queued":
                raise UserInputError(
                    f"run {run_id} cannot start: it is {record.status}",
                    hint="start a new run instead",
                )
            with self._guard:
                if self._closing:
                    raise EngineClosed(
                        f"run {run_id} was not started: the engine is shutting down",
                        hint="it stays queued; the next start resumes or seals it",
                    )
                values = self._pending.pop(run_id, None)
                cancelled_early = run_id in self._cancelled
            if cancelled_early:
                self._finish_unstarted(record, "cancelled", "cancelled before it started")
                return self._result_of(self.index.get(run_id), None, {}, 0.0)
            try:
                book = self.catalogue.get(record.runbook)
                if values is None:
                    values = self._values_from_record(book, record)
            except ClusterbookError as exc:
                self._finish_unstarted(record, "failed", str(exc))
                raise

            claimed = self.index.claim(
                run_id, pid=os.getpid(), pid_start=process_start_time(os.getpid()),
                instance=self.settings.instance_name,
            )
            if not claimed:
                raise UserInputError(f"run {run_id} is not queued (it is {record.status})")

            lock = None
            try:
                if book.changes_cluster and record.cluster:
                    lock = acquire_cluster_lock(
                        self.settings.state_dir / "locks", cluster=record.cluster,
                        run_id=run_id, requester=record.requester,
                    )
            except ClusterbookError as exc:
                self._finish_unstarted(self.index.get(run_id), "failed", str(exc))
                raise

            try:
                return self._execute_claimed(book, self.index.get(run_id), values, on_progress)
            except BaseException as exc:
                # Whatever broke in the engine itself (or an operator's Ctrl-C), the run
                # still ends with a record and whatever partial notebook it left.
                current = self.index.get(run_id)
                if not current.finished:
                    if isinstance(exc, KeyboardInterrupt):
                        status, why = "interrupted", "interrupted by the operator (Ctrl-C)"
                    else:
                        status, why = "failed", f"engine error: {exc!r}"
                    redactor = Redactor(values.secret_values())
                    self._seal_partial(current, status=status, why=why, redactor=redactor)
                raise
            finally:
                if lock is not None:
                    lock.release()

    def _execute_claimed(
        self,
        book: Runbook,
        record: RunRecord,
        values: ParameterSet,
        on_progress: ProgressCallback | None,
    ) -> RunResult:
        run_id = record.run_id
        # The work folder holds the notebook as papermill writes it, secret parameters and
        # all, until it is archived redacted: its owner only may read it.
        work = self.settings.state_dir / "work" / run_id
        work.mkdir(parents=True, exist_ok=True, mode=0o700)
        work.chmod(0o700)
        output_path = work / "notebook.ipynb"
        self.index.update(run_id, work_path=str(output_path))

        context_file = work / "context.json"
        context_file.write_text(json.dumps({
            "run_id": run_id,
            "requester": record.requester,
            "settings": self.settings.to_dict(),
        }))

        handle = KernelHandle()
        with self._guard:
            self._active[run_id] = handle
            # A cancel or a shutdown that came after this run was claimed but before it was
            # registered here found nothing to stop: stop it now, before its kernel starts.
            late_stop = "interrupted" if self._closing else None
            if run_id in self._cancelled:
                late_stop = "cancelled"
        if late_stop is not None:
            handle.stop(late_stop)
        watchdog = threading.Timer(self.settings.run_timeout_s, handle.stop, args=("timed-out",))
        watchdog.daemon = True

        def emit(event: ProgressEvent) -> None:
            if on_progress is not None:
                try:
                    on_progress(event)
                except Exception:
                    logger.exception("progress listener failed")

        def on_cell(cell: CellStart) -> None:
            event = ProgressEvent(
                run_id, book.name, "cell", cell.cell_index, cell.cell_total, cell.step.index,
                cell.step_total, cell.step.title,
            )
            if cell.step.index and cell.step.index != getattr(on_cell, "last_step", None):
                logger.info("run %s: %s", run_id, event.describe())
            on_cell.last_step = cell.step.index  # type: ignore[attr-defined]
            emit(event)

        logger.info("run %s started: %s %s", run_id, book.name, _params_text(values))
        emit(ProgressEvent(run_id, book.name, "started", step_title=book.title))
        started = time.monotonic()
        watchdog.start()
        try:
            execution = execute(
                input_path=book.path,
                output_path=output_path,
                parameters=values.values,
                env={CONTEXT_ENV: str(context_file), "PYTHONUNBUFFERED": "1"},
                cwd=work,
                cell_timeout_s=self.settings.cell_timeout_s,
                handle=handle,
                on_cell_start=on_cell,
            )
        finally:
            watchdog.cancel()
            with self._guard:
                self._active.pop(run_id, None)
                self._cancelled.discard(run_id)
        duration = time.monotonic() - started

        redactor = Redactor(values.secret_values())
        status, error = classify(execution, redactor)
        outputs = redactor.value(read_outputs(execution.notebook))
        result = self._archive_and_seal(
            record, execution.notebook, redactor, status=status, error=error,
            outputs=outputs, duration=duration, work=work,
        )
        logger.info("run %s %s in %.1fs", run_id, status, duration)
        emit(ProgressEvent(run_id, book.name, "finished", status=status, step_title=book.title))
        return result

    def _archive_and_seal(
        self,
        record: RunRecord,
        notebook: Any,
        redactor: Redactor,
        *,
        status: str,
        error: CellError | None,
        outputs: dict[str, Any],
        duration: float,
        work: Path | None,
    ) -> RunResult:
        notebook.metadata["clusterbook"] = {
            **notebook.metadata.get("clusterbook", {}),
            "run": {
                "run_id": record.run_id,
                "status": status,
                "requester": record.requester,
                "source": record.source,
                "approved_by": record.approved_by,
                "params": record.params,
                "error": error.summary() if error else None,
            },
        }
        notes: list[str] = []
        record.status = status
        record.ended_at = _now()
        notebook.cells.insert(0, run_banner(record, error))
        record.error_summary = redactor.text(error.summary()) if error else None
        record.failing_cell = error.cell_index if error else None
        record.runbooks_commit = runbooks_commit(self.settings.runbooks_dir)
        record.outputs_sha256 = sha256_hex(json.dumps(outputs, sort_keys=True).encode())

        try:
            files = archive_notebook(self.store, run_id=record.run_id, nb=notebook,
                                     redactor=redactor)
            record.notebook_url, record.notebook_sha256 = files.notebook_url, files.notebook_sha256
            record.html_url, record.html_sha256 = files.html_url, files.html_sha256
        except ClusterbookError as exc:
            # The run still gets its sealed record; the partial notebook stays in the work
            # folder, and the record says where, so nothing is lost.
            notes.append(f"archive failed, notebook kept at {work}: {exc}")
            record.error_summary = (record.error_summary or "") + f" [archive failed: {exc}]"
            work = None
            logger.error("run %s: archiving failed: %s", record.run_id, exc)

        sealed = self.index.seal(record)
        try:
            self.index.set_record_url(sealed.run_id, archive_record(self.store, sealed))
        except ClusterbookError as exc:
            notes.append(f"record copy not archived: {exc}")
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)
        return self._result_of(self.index.get(record.run_id), error, outputs, duration, notes)

    def _result_of(
        self,
        record: RunRecord,
        error: CellError | None,
        outputs: dict[str, Any],
        duration: float,
        notes: list[str] | None = None,
    ) -> RunResult:
        return RunResult(
            run_id=record.run_id, runbook=record.runbook, status=record.status,
            params=record.params, outputs=outputs, error=error, duration_s=duration,
            record=record, notes=notes or [],
        )

    def _finish_unstarted(self, record: RunRecord, status: str, why: str) -> None:
        import nbformat

        notebook = nbformat.v4.new_notebook()
        notebook.cells.append(nbformat.v4.new_markdown_cell(
            f"# {record.runbook}: {status}\n\nThis run did not execute: {why}"
        ))
        error = CellError(None, None, status, why, "")
        self._archive_and_seal(
            record, notebook, Redactor(), status=status, error=error, outputs={},
            duration=0.0, work=None,
        )

    def _values_from_record(self, book: Runbook, record: RunRecord) -> ParameterSet:
        """Parameters of a run queued by an earlier process (secrets are not kept)."""
        secret = [name for name, spec in book.parameters.items() if spec.secret]
        if any(name in record.params for name in secret):
            raise UserInputError(
                f"run {record.run_id} was queued with secret parameters, which are not kept "
                "across restarts", hint="start the run again",
            )
        return book.parse(record.params)

    # -- crash recovery -------------------------------------------------------------------

    def recover(self, *, resume_sources: tuple[str, ...] = ()) -> list[str]:
        """Seal runs whose process died as "interrupted"; return queued runs to resume.

        A queued run whose creator died is resumed by the caller if its source is in
        ``resume_sources`` (the bot resumes Slack runs), otherwise sealed as interrupted.
        """
        resume: list[str] = []
        here = self.settings.instance_name
        for record in self.index.unfinished():
            if record.instance not in (None, here):
                continue
            if process_alive(record.pid, record.pid_start):
                continue
            if record.status == "queued" and record.source in resume_sources:
                resume.append(record.run_id)
                continue

            with run_id_scope(record.run_id):
                why = f"the process running it (pid {record.pid}) ended before the run did"
                self._seal_partial(record, status="interrupted", why=why, redactor=None)
                logger.warning("run %s marked interrupted: %s", record.run_id, why)
        return resume


    def _seal_partial(
        self, record: RunRecord, *, status: str, why: str, redactor: Redactor | None
    ) -> None:
        """Seal a run that ended outside its notebook's own course, archiving the partial
        notebook its work folder holds (if any). Without a ``redactor`` (the process that
        knew the secret values is gone) they are read back from the partial notebook."""
        import nbformat

        notebook = None
        if record.work_path and Path(record.work_path).is_file():
            try:
                notebook = nbformat.read(record.work_path, as_version=4)
            except (OSError, ValueError) as exc:
                logger.warning("partial notebook of %s unreadable: %s", record.run_id, exc)
        if notebook is None:
            notebook = nbformat.v4.new_notebook()
            notebook.cells.append(nbformat.v4.new_markdown_cell(
                f"# {record.runbook}: {status}\n\nNo partial notebook was left: {why}"
            ))
        if redactor is None:
            redactor = Redactor(self._secret_values_in(record, notebook))

        error = CellError(None, None, status.capitalize(), why, "")
        work = Path(record.work_path).parent if record.work_path else None
        self._archive_and_seal(
            record, notebook, redactor, status=status, error=error,
            outputs=redactor.value(read_outputs(notebook)), duration=0.0, work=work,
        )

    def _secret_values_in(self, record: RunRecord, notebook: Any) -> list[str]:
        """The secret parameter values papermill injected into a partial notebook.

        Secret names come from the runbook (if it is still there) and from the record, whose
        secret values were stored as redaction markers.
        """
        injected = notebook.metadata.get("papermill", {}).get("parameters") or {}
        secret = {name for name, value in record.params.items() if is_marker(value)}
        try:
            book = self.catalogue.get(record.runbook)
            secret |= {name for name, spec in book.parameters.items() if spec.secret}
        except ClusterbookError:
            pass

        values: list[str] = []
        for name in secret & set(injected):
            value = injected[name]
            if isinstance(value, list):
                values.extend(str(item) for item in value)
            else:
                values.append(str(value))
        return values


def run_banner(record: RunRecord, error: CellError | None) -> Any:
    """A first cell for readers of the archive: which run this was and how it ended."""
    import nbformat

    lines = [
        f"**clusterbook run `{record.run_id}`** — `{record.runbook}` — **{record.status}**",
        "",
        f"- requested by {record.requester} via {record.source}"
        + (f" in {record.channel}" if record.channel else ""),
    ]
    if record.approved_by:
        lines.append(f"- approved by {record.approved_by}")
    lines.append(f"- started {record.started_at or record.created_at}, ended {record.ended_at}")
    if error is not None:
        lines.append(f"- error: {error.summary()}")
    cell = nbformat.v4.new_markdown_cell("\n".join(lines))
    cell.metadata["tags"] = ["clusterbook-run-banner"]
    return cell


def new_run_id() -> str:
    """Sortable by time, unique enough: ``20261203-185012-3f9a1c``."""
    return datetime.now(UTC).strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(3)


def runbooks_commit(folder: Path) -> str | None:
    """The git commit of the runbooks folder, with ``+dirty`` if it has local changes."""
    try:
        head = subprocess.run(
            ["git", "-C", str(folder), "rev-parse", "HEAD"],
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(folder), "status", "--porcelain", "--", "."],
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty else "")


def _now() -> str:
    from clusterbook.archive.index import utc_now

    return utc_now()


def _params_text(values: ParameterSet) -> str:
    return " ".join(f"{k}={v!r}" for k, v in values.redacted().items())

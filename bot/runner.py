"""Running what Slack asked for, after the ack: intake, a bounded worker pool, results.

A ``RunRequest`` is one or more runbooks run in order (``up`` is a pipeline) for one person in
one channel. ``submit`` hands it to the intake thread, which records the first run in the run
index as "queued" (so a restart finds it), posts the run's message and queues it for the
worker pool; at most ``workers`` runs execute at once, the rest wait in order.

While a run executes, the engine reports each step; the message is updated through the
throttled ``ChannelWriter``. At the end the message shows status, duration and outputs, the
archived notebook is uploaded in the thread, and a failure gets its step, error and
diagnostics there too.

On start-up ``resume`` asks the engine to mark runs left "running" by a dead process as
"interrupted" (their partial notebooks are archived by the engine), and queues again the runs
this bot had queued. On a graceful stop (SIGTERM) ``shutdown`` does the same work in advance:
runs in progress end "interrupted" with their messages updated, and requests already
acknowledged are recorded and stay queued for the next start.

Known shortcoming: a pipeline records its later runbooks only when the earlier ones succeed,
so after a restart only the run that was queued resumes, not the rest of the pipeline; the
message says which runbooks did not run.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from slack_sdk import WebClient, WebhookClient
from slack_sdk.errors import SlackApiError

from clusterbook.engine import CellError, Engine, ProgressEvent, RunResult
from clusterbook.errors import ClusterbookError, EngineClosed
from clusterbook_bot import messages
from clusterbook_bot.progress import ChannelWriter

logger = logging.getLogger(__name__)

SOURCE = "slack"
#: Requests waiting for or in the worker pool before new ones are refused.
MAX_WAITING = 50
#: How Slack people appear in run records: ``slack:U0123ABC``.
SLACK_USER = "slack:"
MAX_UPLOAD_BYTES = 20 * 1024 * 1024
#: How long a graceful stop waits for interrupted runs to be sealed and their messages
#: updated: inside gunicorn's graceful time-out (20 s) and the 30 s that systemd and
#: Kubernetes give a stopping bot before they kill it.
SHUTDOWN_GRACE_S = 12.0
#: Threads for follow-ups after an ack (opening a modal, answering a button, a notice).
FOLLOW_UP_THREADS = 4


@dataclass(frozen=True)
class Stage:
    runbook: str
    params: dict[str, Any]


@dataclass
class RunRequest:
    """What to run, for whom, where."""

    title: str
    stages: list[Stage]
    requester: str
    channel: str
    approved_by: str | None = None
    #: Set by ``resume``: the first stage is already in the index as this queued run.
    queued_run_id: str | None = None
    #: Where to answer the requester privately if the run cannot even be queued.
    response_url: str | None = None


@dataclass
class _Job:
    request: RunRequest
    ts: str = ""
    run_ids: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    stage_index: int = 0


class RunDispatcher:
    """Owns the intake thread, the worker pool and the run messages."""

    def __init__(
        self,
        *,
        engine: Engine,
        client: WebClient,
        writer: ChannelWriter,
        workers: int,
    ) -> None:
        self.engine = engine
        self.client = client
        self.writer = writer
        self._intake = ThreadPoolExecutor(max_workers=1, thread_name_prefix="intake")
        # Follow-ups have their own threads: a modal must open within the 3 s its trigger
        # lives, however long a run's first post waits for its channel's turn at Slack.
        self._followups = ThreadPoolExecutor(
            max_workers=FOLLOW_UP_THREADS, thread_name_prefix="follow-up"
        )
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="run")
        self._waiting = 0
        self._lock = threading.Lock()
        self._intake_work: set[Future[None]] = set()
        self._pool_work: set[Future[None]] = set()

    def shutdown(self, *, grace_s: float = SHUTDOWN_GRACE_S) -> list[str]:
        """Stop for a restart; returns the runs interrupted.

        Runs executing now are stopped and end "interrupted", sealed with their partial
        notebooks and their messages updated. Requests already acknowledged are still
        recorded, and like runs waiting for a worker they stay queued (their messages say
        so) for the next start to resume. Waits at most ``grace_s`` for all of that.
        """
        deadline = time.monotonic() + grace_s
        interrupted = self.engine.interrupt_all()
        if interrupted:
            logger.warning("shutting down: interrupted %s", ", ".join(interrupted))

        # Follow-ups may confirm a request into the intake, and the intake hands requests
        # to the pool: each must still accept work while the one before it drains.
        self._followups.shutdown(wait=False)
        self._drain(self._intake_work, deadline)
        self._intake.shutdown(wait=False)
        self._drain(self._intake_work, deadline)
        self._pool.shutdown(wait=False)
        if self._drain(self._pool_work, deadline):
            logger.warning("shutting down: runs still finishing after %.0f s", grace_s)
        return interrupted

    def is_full(self) -> bool:
        """True when so many requests wait that a new one should be refused, not queued."""
        with self._lock:
            return self._waiting >= MAX_WAITING

    def submit(self, request: RunRequest) -> None:
        """Queue ``request`` (returns at once; work happens in the intake thread)."""
        with self._lock:
            self._waiting += 1
        self._track(self._intake, self._intake_work, self._intake_job, request)

    def later(self, work: Callable[..., None], *args: Any) -> None:
        """Run a small follow-up of a request (a modal, a notice) after the ack."""
        self._track(self._followups, self._intake_work, work, *args)

    def _track(
        self,
        executor: ThreadPoolExecutor,
        pending: set[Future[None]],
        work: Callable[..., None],
        *args: Any,
    ) -> None:
        future = executor.submit(self._guard, work, *args)
        with self._lock:
            pending.add(future)
        future.add_done_callback(lambda done: self._forget(pending, done))

    def _forget(self, pending: set[Future[None]], future: Future[None]) -> None:
        with self._lock:
            pending.discard(future)

    def _drain(self, pending: set[Future[None]], deadline: float) -> bool:
        """Wait until ``pending`` work (which may grow meanwhile) is done or ``deadline``
        passes; True if some is left."""
        while time.monotonic() < deadline:
            with self._lock:
                left = list(pending)
            if not left:
                return False
            wait(left, timeout=max(0.0, deadline - time.monotonic()))
        with self._lock:
            return bool(pending)

    @staticmethod
    def _guard(work: Callable[..., None], *args: Any) -> None:
        try:
            work(*args)
        except Exception:
            logger.exception("background work %s failed", getattr(work, "__name__", work))

    # -- intake: record as queued, post the message, queue for a worker ---------------------

    def _intake_job(self, request: RunRequest) -> None:
        job = _Job(request)
        try:
            self._post_queued(job)
            first = request.stages[0]
            run_id = request.queued_run_id or self._prepare(request, first)
        except Exception as exc:  # noqa: BLE001 - whatever failed, the requester hears why
            with self._lock:
                self._waiting -= 1
            self._refuse_after_ack(job, exc)
            return

        job.run_ids.append(run_id)
        logger.info("run %s queued for %s in %s", run_id, request.requester, request.channel)
        self._track(self._pool, self._pool_work, self._execute_job, job)

    def _post_queued(self, job: _Job) -> None:
        """The run's message, posted before the run is recorded: if the bot may not post in
        the channel, nothing is queued."""
        request = job.request
        blocks = self._progress(
            job, status="queued", step=0, total=1, heading="waiting for a free worker"
        )
        response = self.writer.send(
            request.channel,
            lambda: self.client.chat_postMessage(
                channel=request.channel, text=f"{request.title}: queued", blocks=blocks
            ),
        )
        job.ts = str(response["ts"])

    def _refuse_after_ack(self, job: _Job, exc: Exception) -> None:
        """Tell the requester why an acknowledged request could not be queued."""
        request = job.request
        if isinstance(exc, SlackApiError):
            text = messages.cannot_post(request.channel, str(exc.response.get("error")))
        elif isinstance(exc, ClusterbookError):
            text = messages.user_error(str(exc))
        else:
            logger.exception("queueing %s failed", request.title, exc_info=exc)
            text = messages.user_error(f"{request.title} could not be queued")
        logger.warning("%s for %s not queued: %s", request.title, request.requester, exc)

        if job.ts:
            self._rewrite(job, status="failed", blocks=[messages.section(text)])
        elif request.response_url:
            WebhookClient(request.response_url).send(text=text, response_type="ephemeral")

    def _prepare(self, request: RunRequest, stage: Stage) -> str:
        record = self.engine.prepare(
            stage.runbook,
            stage.params,
            requester=SLACK_USER + request.requester,
            source=SOURCE,
            channel=request.channel,
            approved_by=SLACK_USER + request.approved_by if request.approved_by else None,
        )
        return record.run_id

    # -- execution in a worker ----------------------------------------------------------------

    def _execute_job(self, job: _Job) -> None:
        try:
            self._execute_stages(job)
        finally:
            with self._lock:
                self._waiting -= 1

    def _execute_stages(self, job: _Job) -> None:
        request = job.request
        outputs: dict[str, Any] = {}
        links: list[str] = []
        uploads: list[tuple[str, str]] = []
        status, failure = "succeeded", None
        held = False

        for index, stage in enumerate(request.stages):
            job.stage_index = index
            if index > 0:
                try:
                    job.run_ids.append(self._prepare(request, stage))
                except ClusterbookError as exc:
                    status, failure = "failed", (stage, _NotStarted(run_id="", message=str(exc)))
                    break
            run_id = job.run_ids[-1]

            try:
                result = self._execute_stage(job, run_id)
            except EngineClosed:
                held = True
                break
            outputs.update(result.outputs or {})
            if result.notebook_path:
                links.append(str(result.notebook_path))
                uploads.append((run_id, str(result.notebook_path)))
            if result.status != "succeeded":
                status, failure = result.status, (stage, result)
                break

        if held:
            self._hold(job, run_id=job.run_ids[-1])
        else:
            self._finish(job, status=status, outputs=outputs, links=links, failure=failure)
        for run_id, location in uploads:
            self._upload_notebook(job, run_id=run_id, location=location)

    def _execute_stage(self, job: _Job, run_id: str) -> StageOutcome:
        def on_progress(event: ProgressEvent) -> None:
            if event.kind != "cell":
                return
            blocks = self._progress(
                job,
                status="running",
                step=event.step_index,
                total=event.step_total,
                heading=event.step_title,
            )
            self.writer.update(job.request.channel, job.ts, text=job.request.title, blocks=blocks)

        record = self.engine.index.get(run_id)
        if record.finished:  # cancelled while it waited for a worker
            return _NotStarted(
                run_id=run_id, message=record.error_summary or "", status=record.status
            )
        try:
            return self.engine.execute(run_id, on_progress=on_progress)
        except EngineClosed:
            raise  # not a failure: the run stays queued (see _hold)
        except ClusterbookError as exc:
            logger.warning("run %s could not start: %s", run_id, exc)
            return _NotStarted(run_id=run_id, message=str(exc))

    def _progress(
        self, job: _Job, *, status: str, step: int, total: int, heading: str
    ) -> list[dict[str, Any]]:
        request = job.request
        stage = None
        if len(request.stages) > 1:
            current = request.stages[job.stage_index].runbook
            stage = f"{job.stage_index + 1}/{len(request.stages)} {current}"
        return messages.progress_blocks(
            title=request.title,
            run_id=job.run_ids[-1] if job.run_ids else None,
            status=status,
            stage=stage,
            step=step,
            total=total,
            heading=heading,
            requester=request.requester,
        )

    def _finish(
        self,
        job: _Job,
        *,
        status: str,
        outputs: dict[str, Any],
        links: list[str],
        failure: tuple[Stage, StageOutcome] | None,
    ) -> None:
        request = job.request
        failed_step = None
        if failure is not None:
            failed_step = f"{failure[0].runbook}: {_step_name(failure[1])}"

        def show(native_table: bool) -> Any:
            blocks = messages.final_blocks(
                title=request.title,
                status=status,
                duration_s=time.monotonic() - job.started,
                run_ids=job.run_ids,
                requester=request.requester,
                approved_by=request.approved_by,
                outputs=outputs,
                notebook_links=links,
                failed_step=failed_step,
                native_table=native_table,
            )
            return self._rewrite(job, status=status, blocks=blocks)

        self.writer.discard(request.channel, job.ts)
        try:
            show(native_table=True)
        except SlackApiError as exc:
            if exc.response.get("error") != "invalid_blocks":
                raise
            # Slack refused the table block (a client or workspace without it): plain text.
            logger.info("table block refused; posting the outputs as text")
            show(native_table=False)
        logger.info("%s for %s ended %s", request.title, request.requester, status)

        if failure is not None:
            text = failure_details(failure[1], step=failed_step or "")
            self.writer.send(
                request.channel,
                lambda: self.client.chat_postMessage(
                    channel=request.channel, thread_ts=job.ts, text=text
                ),
            )

    def _hold(self, job: _Job, *, run_id: str) -> None:
        """The bot is stopping before ``run_id`` could start: it stays queued in the index
        and the next start resumes it; its message says so."""
        request = job.request
        logger.info("run %s stays queued: the bot is stopping", run_id)
        self.writer.discard(request.channel, job.ts)
        blocks = messages.held_for_restart(
            title=request.title, run_id=run_id, requester=request.requester
        )
        self._rewrite(job, status="queued", blocks=blocks)

    def _rewrite(self, job: _Job, *, status: str, blocks: list[dict[str, Any]]) -> Any:
        """Replace the request's message (in its channel's turn); its text says the status."""
        request = job.request
        return self.writer.send(
            request.channel,
            lambda: self.client.chat_update(
                channel=request.channel,
                ts=job.ts,
                text=f"{request.title}: {status}",
                blocks=blocks,
            ),
        )

    def _upload_notebook(self, job: _Job, *, run_id: str, location: str) -> None:
        try:
            content = self.engine.store.read(location)
        except ClusterbookError as exc:
            logger.warning("run %s: cannot read the archived notebook: %s", run_id, exc)
            return
        if len(content) > MAX_UPLOAD_BYTES:
            logger.info("run %s: notebook too large to upload; linked only", run_id)
            return

        channel = job.request.channel
        self.writer.send(
            channel,
            lambda: self.client.files_upload_v2(
                channel=channel,
                thread_ts=job.ts,
                filename=f"{run_id}.ipynb",
                content=content,
                title=f"Executed notebook of run {run_id}",
            ),
        )

    # -- cancel and restart ---------------------------------------------------------------

    def cancel(self, run_id: str) -> None:
        self.engine.cancel(run_id)

    def resume(self) -> None:
        """After a restart: mark dead runs interrupted, re-queue this bot's queued runs."""
        ours = [r for r in self.engine.index.unfinished() if r.source == SOURCE and r.channel]
        to_resume = set(self.engine.recover(resume_sources=(SOURCE,)))

        for old in ours:
            record = self.engine.index.get(old.run_id)
            if record.status == "interrupted" and record.channel:
                self.later(
                    self._notify, record.channel, messages.interrupted_after_restart(record.run_id)
                )
            if record.run_id not in to_resume or not record.channel:
                continue
            logger.info("resuming queued run %s", record.run_id)
            self.submit(
                RunRequest(
                    title=f"{record.runbook} (resumed after a restart)",
                    stages=[Stage(record.runbook, dict(record.params))],
                    requester=record.requester.removeprefix(SLACK_USER),
                    channel=record.channel,
                    approved_by=(record.approved_by or "").removeprefix(SLACK_USER) or None,
                    queued_run_id=record.run_id,
                )
            )

    def _notify(self, channel: str, text: str) -> None:
        self.writer.send(channel, lambda: self.client.chat_postMessage(channel=channel, text=text))


@dataclass(frozen=True)
class _NotStarted:
    """A stage the engine refused to start (lock held, run cancelled while queued)."""

    run_id: str
    message: str
    status: str = "failed"
    outputs: dict[str, Any] = field(default_factory=dict)
    notebook_path: str | None = None
    error: CellError | None = None


#: How one runbook of a request ended: the engine's result, or why it never started.
StageOutcome = RunResult | _NotStarted


def _step_name(result: StageOutcome) -> str:
    if result.error is not None:
        return result.error.step_title or f"cell {result.error.cell_index}"
    if isinstance(result, _NotStarted):
        return result.message or result.status
    return result.status


def failure_details(result: StageOutcome, *, step: str) -> str:
    """The thread reply for a failed runbook: step, error and a diagnostics excerpt (what the
    runbook recorded as ``diagnostics``, else the end of the traceback)."""
    error = result.error
    if error is None:
        why = result.message if isinstance(result, _NotStarted) else ""
        return messages.failure_text(step=step, ename=result.status, evalue=why, diagnostics="")

    diagnostics = result.outputs.get("diagnostics")
    if diagnostics is None:
        excerpt = "\n".join(error.traceback.splitlines()[-15:])
    elif isinstance(diagnostics, str):
        excerpt = diagnostics
    else:
        excerpt = json.dumps(diagnostics, indent=1, ensure_ascii=False)
    return messages.failure_text(
        step=step, ename=error.ename, evalue=error.evalue, diagnostics=excerpt
    )

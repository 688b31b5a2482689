"""What the bot answers to each command, button and form, before and after the ack.

Everything that must happen before Slack's 3-second deadline is cheap: parse the text, check
the access policy, look the runbook up in the (cached) catalogue, convert the parameters, read
the run index. ``show`` and ``status`` also read one archived notebook for its outputs (a file,
or one S3 GET when the archive is in S3). The answer is a ``Reply``: the text of the ack, and
optionally work to do after it (queue a run, open a modal, answer a button). No Slack value is
ever evaluated.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from clusterbook.archive.index import RunIndex, RunRecord
from clusterbook.catalogue import Catalogue, Runbook
from clusterbook.errors import (
    ClusterbookError,
    RunbookNotFound,
    RunNotFound,
    UserInputError,
)
from clusterbook_bot import messages
from clusterbook_bot.access import AccessPolicy
from clusterbook_bot.commands import Command, CommandError, parse_command
from clusterbook_bot.modals import ModalContext, build_modal, read_submission
from clusterbook_bot.pending import PendingActions
from clusterbook_bot.runner import SLACK_USER, RunDispatcher, RunRequest, Stage

logger = logging.getLogger(__name__)

TEARDOWN = "teardown"


@dataclass
class Reply:
    """The ack's content and what to do once Slack has it."""

    text: str
    blocks: list[dict[str, Any]] | None = None
    public: bool = False
    after: Callable[[], None] | None = None
    #: The run request this reply queues or holds for confirmation, if any.
    request: RunRequest | None = None

    def ack_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"text": self.text}
        if self.blocks:
            kwargs["blocks"] = self.blocks
        kwargs["response_type"] = "in_channel" if self.public else "ephemeral"
        return kwargs


@dataclass
class ButtonAnswer:
    """How to answer a button click: replace the message, or tell the clicker privately."""

    text: str
    replace_original: bool = True
    after: list[Callable[[], None]] = field(default_factory=list)


class Handlers:
    """The bot's decisions; Bolt-free so they read (and test) as plain functions."""

    def __init__(
        self,
        *,
        command: str,
        catalogue: Catalogue,
        index: RunIndex,
        access: AccessPolicy,
        dispatcher: RunDispatcher,
        pending: PendingActions,
        post_message: Callable[..., Any],
        open_view: Callable[..., Any],
        outputs_of: Callable[[RunRecord], dict[str, Any]],
    ) -> None:
        self.command = command
        self.catalogue = catalogue
        self.index = index
        self.access = access
        self.dispatcher = dispatcher
        self.pending = pending
        self.post_message = post_message
        self.open_view = open_view
        self.outputs_of = outputs_of

    # -- slash command --------------------------------------------------------------------

    def answer_command(
        self, *, user: str, channel: str, text: str, trigger_id: str, response_url: str = ""
    ) -> Reply:
        """The reply to a slash command; never raises."""
        try:
            command = parse_command(text)
            logger.info("%s in %s: %s %s", user, channel, command.action, command.target or "")
            reply = self._dispatch(command, user=user, channel=channel, trigger_id=trigger_id)
            self._remember_response_url(reply, response_url)
            return reply
        except CommandError as exc:
            return Reply(
                messages.not_understood(exc.message, self.command, show_help=exc.show_help)
            )
        except UserInputError as exc:
            return Reply(messages.user_error(str(exc)))
        except ClusterbookError as exc:
            logger.warning("command from %s refused: %s", user, exc)
            return Reply(messages.user_error(str(exc)))
        except Exception:
            reference = uuid.uuid4().hex[:10]
            logger.exception("command from %s failed (reference %s)", user, reference)
            return Reply(messages.internal_error(reference))

    def _remember_response_url(self, reply: Reply, response_url: str) -> None:
        if reply.request is not None and response_url:
            reply.request.response_url = response_url

    def _dispatch(self, command: Command, *, user: str, channel: str, trigger_id: str) -> Reply:
        action = command.action
        if action == "help":
            return Reply(messages.help_text(self.command))

        runbook_name = self._runbook_for(command)
        decision = self.access.decide(
            user=user, channel=channel, action=action, runbook=runbook_name
        )
        if not decision.allowed and not self._own_run(command, user):
            logger.info("refused %s %s for %s in %s", action, runbook_name or "", user, channel)
            return Reply(messages.refused(action, runbook=runbook_name))

        target = command.target or ""
        if action == "runbooks":
            return Reply(messages.runbook_list(self.catalogue.list()))
        if action == "params":
            return Reply(messages.parameter_list(self.catalogue.get(target), self.command))
        if action == "status":
            records = self.index.list(cluster=target, limit=20)
            last_ok = next((r for r in records if r.status == "succeeded"), None)
            outputs = self.outputs_of(last_ok) if last_ok is not None else {}
            text = messages.cluster_status(target, records)
            return Reply(text, blocks=[messages.section(text), *messages.output_blocks(outputs)])
        if action == "runs":
            return Reply(
                messages.run_list(
                    self.index.list(cluster=command.target, limit=15), cluster=command.target
                )
            )
        if action == "show":
            record = self.index.get(target)
            return Reply(
                messages.run_line(record),
                blocks=messages.run_details(record, self.outputs_of(record)),
            )
        if action == "cancel":
            return self._cancel(target, user=user, channel=channel)
        if action == "run":
            return self._run(
                target, command.params, user=user, channel=channel, trigger_id=trigger_id
            )
        if action == "up":
            return self._up(target, command.params, user=user, channel=channel)
        if action == "down":
            return self._down(target, user=user, channel=channel)
        raise CommandError(f"I don't know the command {action!r}.", show_help=True)

    def _runbook_for(self, command: Command) -> str | None:
        """The runbook an action acts on, for the access decision."""
        if command.action in ("run", "params"):
            return self.catalogue.get(command.target or "").name
        if command.action == "down":
            return self._teardown().name
        if command.action == "cancel":
            return self.index.get(command.target or "").runbook
        return None

    def _own_run(self, command: Command, user: str) -> bool:
        """People may always cancel their own runs (recorded as ``slack:<user id>``)."""
        if command.action != "cancel":
            return False

        try:
            requester = self.index.get(command.target or "").requester
        except RunNotFound:
            return False
        return requester in (user, SLACK_USER + user)

    def _run(
        self, name: str, params: dict[str, str], *, user: str, channel: str, trigger_id: str
    ) -> Reply:
        runbook = self.catalogue.get(name)
        if not params and runbook.parameters:
            context = ModalContext(runbook.name, channel, user)
            view = build_modal(runbook, context=context)
            return Reply(
                messages.modal_opened(runbook.name),
                after=lambda: self.open_view(trigger_id=trigger_id, view=view),
            )

        values = runbook.parse(params).values
        request = RunRequest(runbook.name, [Stage(runbook.name, values)], user, channel)
        return self._start_or_confirm(
            request, runbook=runbook.name, what=f"run {runbook.name}", user=user, channel=channel
        )

    def _up(self, cluster: str, params: dict[str, str], *, user: str, channel: str) -> Reply:
        pipeline = self._pipeline()
        known = {p for rb in pipeline for p in rb.parameters}
        unknown = sorted(set(params) - known)
        if unknown:
            raise UserInputError(
                f"no runbook of `up` takes {', '.join(map(repr, unknown))}",
                hint="parameters: " + ", ".join(sorted(known)),
            )

        stages = []
        for runbook in pipeline:
            if not self.access.decide(
                user=user, channel=channel, action="up", runbook=runbook.name
            ).allowed:
                return Reply(messages.refused("up", runbook=runbook.name))
            own = {k: v for k, v in params.items() if k in runbook.parameters}
            cluster_param = runbook.cluster_param or (
                "cluster" if "cluster" in runbook.parameters else None
            )
            if cluster_param:
                own[cluster_param] = cluster
            stages.append(Stage(runbook.name, runbook.parse(own).values))

        request = RunRequest(f"up {cluster}", stages, user, channel)
        return self._start_or_confirm(
            request, runbook=pipeline[0].name, what=f"up {cluster}", user=user, channel=channel
        )

    def _down(self, cluster: str, *, user: str, channel: str) -> Reply:
        runbook = self._teardown()
        params = {runbook.cluster_param or "cluster": cluster}
        if "confirm" in runbook.parameters:
            # The teardown runbook asks for the name typed twice; the confirm button is that.
            params["confirm"] = cluster
        values = runbook.parse(params).values
        request = RunRequest(f"down {cluster}", [Stage(runbook.name, values)], user, channel)
        pending = self.pending.add(
            request, what=f"tear down cluster {cluster}", runbook=runbook.name
        )
        return Reply(
            pending.what,
            blocks=messages.confirm_blocks(what=pending.what, pending_id=pending.id),
            request=request,
        )

    def _start_or_confirm(
        self, request: RunRequest, *, runbook: str, what: str, user: str, channel: str
    ) -> Reply:
        if any(self.access.is_destructive("run", s.runbook) for s in request.stages):
            pending = self.pending.add(request, what=what, runbook=runbook)
            return Reply(
                what,
                blocks=messages.confirm_blocks(what=what, pending_id=pending.id),
                request=request,
            )
        if self.dispatcher.is_full():
            return Reply(messages.too_busy())
        busy = self._busy_with(request)
        if busy is not None:
            return Reply(messages.cluster_busy(busy))
        cluster = next(
            (str(v) for s in request.stages for k, v in s.params.items() if k == "cluster"), None
        )
        return Reply(
            messages.queued([s.runbook for s in request.stages], cluster=cluster),
            after=lambda: self.dispatcher.submit(request),
            request=request,
        )

    def _busy_with(self, request: RunRequest) -> RunRecord | None:
        """An unfinished run already changing a cluster this request would change.

        The engine's cluster lock is what really keeps two changes apart; this only saves
        the requester a queued run that would fail on the lock.
        """
        for stage in request.stages:
            runbook = self.catalogue.get(stage.runbook)
            cluster = runbook.cluster_of(stage.params) if runbook.changes_cluster else None
            if cluster is None:
                continue
            for status in ("running", "queued"):
                for record in self.index.list(cluster=cluster, status=status, limit=5):
                    if self.catalogue.get(record.runbook).changes_cluster:
                        return record
        return None

    def _pipeline(self) -> list[Runbook]:
        try:
            pipeline = self.catalogue.pipeline(before=TEARDOWN)
        except RunbookNotFound:
            pipeline = [rb for rb in self.catalogue.list() if rb.order and rb.order >= 1]
        if not pipeline:
            raise RunbookNotFound("there is no provisioning runbook yet, so `up` cannot run")
        return pipeline

    def _teardown(self) -> Runbook:
        return self.catalogue.get(TEARDOWN)

    def _cancel(self, run_id: str, *, user: str, channel: str) -> Reply:
        record = self.index.get(run_id)
        if record.finished:
            return Reply(messages.cancel_not_possible(record.run_id, record.status))
        return Reply(
            messages.cancel_requested(record.run_id),
            after=lambda: self.dispatcher.cancel(record.run_id),
        )

    # -- modal submission -------------------------------------------------------------------

    def answer_submission(
        self, *, user: str, private_metadata: str, state_values: dict[str, Any]
    ) -> tuple[dict[str, str], Reply | None]:
        """Field errors (to show in the modal), or the reply to send once it closes."""
        context = ModalContext.load(private_metadata)
        runbook = self.catalogue.get(context.runbook)
        if not self.access.decide(
            user=user, channel=context.channel, action="run", runbook=runbook.name
        ).allowed:
            return {}, Reply(messages.refused("run", runbook=runbook.name))

        values, errors = read_submission(runbook, state_values)
        if errors:
            return errors, None
        request = RunRequest(runbook.name, [Stage(runbook.name, values)], user, context.channel)
        return {}, self._start_or_confirm(
            request,
            runbook=runbook.name,
            what=f"run {runbook.name}",
            user=user,
            channel=context.channel,
        )

    # -- buttons ---------------------------------------------------------------------------

    def answer_button(self, *, action_id: str, value: str, user: str, channel: str) -> ButtonAnswer:
        pending = self.pending.get(value)
        if pending is None:
            return ButtonAnswer(messages.pending_expired())
        request = pending.request

        if action_id in ("clusterbook_confirm", "clusterbook_abort"):
            if user != request.requester:
                return ButtonAnswer(messages.not_requester(), replace_original=False)
            if action_id == "clusterbook_abort":
                self.pending.take(value)
                return ButtonAnswer(messages.aborted(pending.what))
            return self._confirmed(value)

        if action_id in ("clusterbook_approve", "clusterbook_reject"):
            if not pending.confirmed:
                return ButtonAnswer(messages.pending_expired())
            is_requester = user == request.requester
            if action_id == "clusterbook_approve" and is_requester:
                return ButtonAnswer(messages.self_approval(), replace_original=False)
            allowed = self.access.decide(
                user=user, channel=request.channel, action="approve", runbook=pending.runbook
            ).allowed
            if not allowed and not (is_requester and action_id == "clusterbook_reject"):
                return ButtonAnswer(
                    messages.refused("approve", runbook=pending.runbook), replace_original=False
                )
            taken = self.pending.take(value)
            if taken is None:
                return ButtonAnswer(messages.pending_expired())
            if action_id == "clusterbook_reject":
                logger.info("%s rejected by %s", pending.what, user)
                return ButtonAnswer(messages.rejected(pending.what, by=user))
            request.approved_by = user
            logger.info("%s requested by %s approved by %s", pending.what, request.requester, user)
            return ButtonAnswer(
                messages.approved(pending.what, approver=user),
                after=[lambda: self.dispatcher.submit(request)],
            )

        return ButtonAnswer(messages.pending_expired())

    def _confirmed(self, pending_id: str) -> ButtonAnswer:
        pending = self.pending.mark_confirmed(pending_id)
        if pending is None:
            return ButtonAnswer(messages.pending_expired())
        request = pending.request

        if not self.access.second_approver:
            self.pending.take(pending_id)
            return ButtonAnswer(
                messages.confirmed(pending.what), after=[lambda: self.dispatcher.submit(request)]
            )

        blocks = messages.approval_blocks(
            what=pending.what, requester=request.requester, pending_id=pending.id
        )
        return ButtonAnswer(
            messages.approval_waiting(pending.what),
            after=[
                lambda: self.post_message(channel=request.channel, text=pending.what, blocks=blocks)
            ],
        )

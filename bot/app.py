"""The Bolt app: wiring Slack's requests to the handlers, for both transports.

``BotService`` is built once at start-up from ``Settings`` and ``BotConfig``; it owns the Web
API client, the engine, the worker pool and the Bolt ``App``. The app is set up so the ack is
fast and nothing runs for a request Slack did not sign:

- ``process_before_response=True``: listeners only decide and ack (cheap); anything slow is
  handed to the dispatcher, so the ack does not wait on Bolt's 10 ms polling loop;
- a custom ``authorize`` answers from one ``auth.test`` made at start-up, not one per request;
- Bolt verifies the signature and the timestamp (older than 5 minutes → 401); on top of that
  a signature seen once is refused the second time (a replay within the 5 minutes).
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import nbformat
from slack_bolt import App, BoltRequest, BoltResponse
from slack_bolt.authorization import AuthorizeResult
from slack_bolt.authorization.authorize import Authorize
from slack_bolt.context import BoltContext
from slack_bolt.middleware import Middleware
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from clusterbook.archive.index import RunRecord
from clusterbook.engine import Engine, read_outputs
from clusterbook.errors import ClusterbookError, ConfigError, ExternalServiceError
from clusterbook.settings import Settings
from clusterbook_bot import messages
from clusterbook_bot.access import AccessPolicy
from clusterbook_bot.config import BotConfig
from clusterbook_bot.handlers import Handlers, Reply
from clusterbook_bot.modals import CALLBACK_ID, ModalContext
from clusterbook_bot.pending import PendingActions
from clusterbook_bot.progress import ChannelWriter
from clusterbook_bot.runner import RunDispatcher

logger = logging.getLogger(__name__)

BUTTONS = re.compile(r"^clusterbook_(confirm|abort|approve|reject)$")
REPLAY_WINDOW_S = 5 * 60 + 30


class BotService:
    """Everything the bot runs on, built once; ``start`` resumes queued runs."""

    def __init__(self, settings: Settings, config: BotConfig, *, http: bool) -> None:
        config.check(http=http)
        self.settings = settings
        self.config = config
        messages.register_secrets(config.secrets())
        client_args: dict[str, Any] = {"token": config.bot_token.reveal(), "timeout": 15}
        if config.api_url:
            client_args["base_url"] = config.api_url
        self.client = WebClient(**client_args)

        self.engine = Engine(settings)
        self.index = self.engine.index
        self.catalogue = self.engine.catalogue
        self.access = AccessPolicy.load(config.access_file)
        self.access.group_lookup = self._group_members
        self.writer = ChannelWriter(self.client)
        self.dispatcher = RunDispatcher(
            engine=self.engine,
            client=self.client,
            writer=self.writer,
            workers=config.workers,
        )
        self.handlers = Handlers(
            command=config.command,
            catalogue=self.catalogue,
            index=self.index,
            access=self.access,
            dispatcher=self.dispatcher,
            pending=PendingActions(),
            post_message=self._post_message,
            open_view=self._open_view,
            outputs_of=self._outputs_of,
        )
        self.app = build_app(self, verify_requests=http)

    def start(self) -> None:
        self.writer.start()
        self.dispatcher.resume()
        self.catalogue.list()  # warm the catalogue cache before the first command
        for group in self.access.groups():
            self.access.members_of(group)

    def stop(self) -> None:
        """A graceful stop (SIGTERM): see ``RunDispatcher.shutdown`` for what becomes of the
        runs; the writer stops last, once their messages are sent."""
        self.dispatcher.shutdown()
        self.writer.stop()

    def _group_members(self, group: str) -> Iterable[str]:
        # A short time-out: this may run inside the 3 seconds Slack waits for the ack.
        lookup = WebClient(token=self.client.token, base_url=self.client.base_url, timeout=2)
        return lookup.usergroups_users_list(usergroup=group)["users"]

    def _post_message(self, *, channel: str, text: str, blocks: list[dict[str, Any]]) -> None:
        self.writer.send(
            channel, lambda: self.client.chat_postMessage(channel=channel, text=text, blocks=blocks)
        )

    def _outputs_of(self, record: RunRecord) -> dict[str, Any]:
        """The outputs a run recorded, read back from its archived notebook."""
        if not record.notebook_url:
            return {}
        try:
            notebook = nbformat.reads(
                self.engine.store.read(record.notebook_url).decode(), as_version=4
            )
        except (ClusterbookError, ValueError) as exc:
            logger.warning("cannot read the outputs of run %s: %s", record.run_id, exc)
            return {}
        return read_outputs(notebook)

    def _open_view(self, *, trigger_id: str, view: dict[str, Any]) -> None:
        self.client.views_open(trigger_id=trigger_id, view=view)


def build_app(service: BotService, *, verify_requests: bool) -> App:
    handlers = service.handlers
    later = service.dispatcher.later

    # Bolt gets a client without a token: ``authorize`` supplies it per request.
    bolt_client = WebClient(base_url=service.client.base_url, timeout=service.client.timeout)
    app = App(
        client=bolt_client,
        signing_secret=service.config.signing_secret.reveal() or "unused-in-socket-mode",
        authorize=build_authorize(service.client, service.config.bot_token.reveal()),
        process_before_response=True,
        request_verification_enabled=verify_requests,
        logger=logging.getLogger("clusterbook_bot.bolt"),
    )
    if verify_requests:
        app.use(ReplayGuard())

    @app.command(service.config.command)
    def on_command(ack: Callable[..., None], body: dict[str, Any]) -> None:
        reply = handlers.answer_command(
            user=str(body.get("user_id") or ""),
            channel=str(body.get("channel_id") or ""),
            text=str(body.get("text") or ""),
            trigger_id=str(body.get("trigger_id") or ""),
            response_url=str(body.get("response_url") or ""),
        )
        ack(**reply.ack_kwargs())
        if reply.after is not None:
            later(reply.after)

    @app.view(CALLBACK_ID)
    def on_submission(ack: Callable[..., None], body: dict[str, Any]) -> None:
        user = str((body.get("user") or {}).get("id") or "")
        view = body.get("view") or {}
        try:
            channel = ModalContext.load(str(view.get("private_metadata") or "")).channel
            errors, reply = handlers.answer_submission(
                user=user,
                private_metadata=str(view.get("private_metadata") or ""),
                state_values=(view.get("state") or {}).get("values") or {},
            )
        except ClusterbookError as exc:
            # The form cannot be used any more (its runbook is gone or broke): say so in it.
            logger.warning("modal submission from %s refused: %s", user, exc)
            ack(response_action="update", view=messages.modal_problem(str(exc)))
            return
        except Exception:  # noqa: BLE001 - a damaged submission gets a plain answer
            logger.exception("modal submission from %s could not be read", user)
            problem = "this form could not be read; nothing was started. Start again."
            ack(response_action="update", view=messages.modal_problem(problem))
            return
        if errors:
            ack(response_action="errors", errors=errors)
            return
        ack()
        if reply is not None:
            later(_tell_privately, service, reply, channel, user)

    @app.action(BUTTONS)
    def on_button(ack: Callable[..., None], body: dict[str, Any], respond: Any) -> None:
        ack()
        action = (body.get("actions") or [{}])[0]
        answer = handlers.answer_button(
            action_id=str(action.get("action_id") or ""),
            value=str(action.get("value") or ""),
            user=str((body.get("user") or {}).get("id") or ""),
            channel=str((body.get("channel") or {}).get("id") or ""),
        )

        def follow_up() -> None:
            respond(
                text=answer.text,
                replace_original=answer.replace_original,
                response_type="ephemeral",
            )
            for work in answer.after:
                work()

        later(follow_up)

    return app


def _tell_privately(service: BotService, reply: Reply, channel: str, user: str) -> None:
    """After a modal closes: the reply as an ephemeral message, then its follow-up work."""
    kwargs: dict[str, Any] = {"channel": channel, "user": user, "text": reply.text}
    if reply.blocks:
        kwargs["blocks"] = reply.blocks
    service.client.chat_postEphemeral(**kwargs)
    if reply.after is not None:
        reply.after()


def build_authorize(client: WebClient, token: str) -> FixedAuthorize:
    """One ``auth.test`` now; every request is then authorized from memory."""
    try:
        info = client.auth_test(token=token)
    except SlackApiError as exc:
        raise ConfigError(
            f"Slack refused the bot token ({exc.response.get('error')})",
            hint="check SLACK_BOT_TOKEN(_FILE): the app's Bot User OAuth Token, xoxb-…",
        ) from exc
    except OSError as exc:
        raise ExternalServiceError(
            f"cannot reach the Slack Web API at {client.base_url}: {exc}",
            hint="check the network (or SLACK_API_URL); the bot retries when restarted",
        ) from exc
    result = AuthorizeResult(
        enterprise_id=info.get("enterprise_id"),
        team_id=info.get("team_id"),
        bot_user_id=info.get("user_id"),
        bot_id=info.get("bot_id"),
        bot_token=token,
    )
    logger.info("Slack: bot %s in team %s", result.bot_user_id, result.team_id)
    return FixedAuthorize(result)


class FixedAuthorize(Authorize):
    """The one workspace this bot is installed in; requests from any other are refused.

    An ``Authorize`` subclass rather than a function: Bolt calls it directly, without
    inspecting its arguments on every request.
    """

    def __init__(self, result: AuthorizeResult) -> None:
        super().__init__()
        self.result = result

    def __call__(
        self,
        *,
        context: BoltContext,
        enterprise_id: str | None,
        team_id: str | None,
        user_id: str | None,
        **actor: Any,
    ) -> AuthorizeResult | None:
        if team_id and self.result.team_id and team_id != self.result.team_id:
            logger.warning("refused a request from another Slack team %s", team_id)
            return None
        return self.result


class ReplayGuard(Middleware):
    """Bolt middleware: a request signature is accepted once (after Bolt verified it).

    A ``Middleware`` subclass rather than a function: Bolt calls it directly, without
    inspecting its arguments on every request.
    """

    def __init__(self, *, window_s: float = REPLAY_WINDOW_S) -> None:
        self.window_s = window_s
        self._seen: dict[str, float] = {}
        self._lock = threading.Lock()

    def process(
        self, *, req: BoltRequest, resp: BoltResponse, next: Callable[[], BoltResponse]
    ) -> BoltResponse | None:
        if req.mode != "http":
            return next()
        signature = (req.headers.get("x-slack-signature") or [""])[0]
        now = time.monotonic()
        with self._lock:
            if len(self._seen) >= 1000:
                self._seen = {k: t for k, t in self._seen.items() if now - t < self.window_s}
            if signature in self._seen:
                logger.warning("refused a replayed request (signature seen before)")
                return BoltResponse(status=401, body="replayed request")
            self._seen[signature] = now
        return next()

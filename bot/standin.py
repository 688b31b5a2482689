"""A local stand-in for the Slack Web API, for tests and the embedded demo.

It is a real HTTP server on 127.0.0.1 that answers the handful of Web API methods the bot
uses, the way Slack answers them (``{"ok": true, ...}`` JSON, HTTP 429 with ``Retry-After``
when rate limited), and records every call so a test can assert what the bot sent.

Point a ``slack_sdk.WebClient`` at it with ``WebClient(token=..., base_url=standin.api_url)``.

Answered: ``auth.test``, ``chat.postMessage``, ``chat.update``, ``chat.postEphemeral``,
``views.open``, ``views.update``, ``usergroups.users.list``, ``apps.connections.open``
(Socket Mode), files upload v2 (``files.getUploadURLExternal``, the upload URL it hands out,
``files.completeUploadExternal``), and ``response_url`` posts (``/response/<anything>``).

Known shortcoming: it keeps everything in memory and checks only what the bot relies on
(token, channel present, at most one table block per message); it is not a general Slack
emulator.
"""

from __future__ import annotations

import itertools
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self
from urllib.parse import parse_qsl, urlsplit

logger = logging.getLogger(__name__)

#: Methods that post into a channel, for the optional per-channel rate limit.
CHANNEL_WRITES = ("chat.postMessage", "chat.update")


@dataclass(frozen=True)
class SlackCall:
    """One request the stand-in received."""

    method: str
    params: dict[str, Any]
    token: str | None
    at: float
    status: int


@dataclass
class StoredMessage:
    """The current state of one posted message (updates replace text and blocks)."""

    channel: str
    ts: str
    text: str
    blocks: list[dict[str, Any]]
    thread_ts: str | None = None
    updates: int = 0


@dataclass
class UploadedFile:
    file_id: str
    filename: str
    content: bytes = b""
    channel: str | None = None
    thread_ts: str | None = None
    title: str | None = None


@dataclass
class _Limit:
    remaining: int
    retry_after: int


@dataclass
class _State:
    calls: list[SlackCall] = field(default_factory=list)
    messages: dict[tuple[str, str], StoredMessage] = field(default_factory=dict)
    files: dict[str, UploadedFile] = field(default_factory=dict)
    responses: list[dict[str, Any]] = field(default_factory=list)
    limits: dict[str, _Limit] = field(default_factory=dict)
    last_write: dict[str, float] = field(default_factory=dict)


class SlackStandin:
    """The stand-in server. Use as a context manager or call ``start`` / ``stop``."""

    def __init__(
        self,
        *,
        bot_token: str = "xoxb-standin-token",
        app_token: str = "xapp-standin-token",
        team_id: str = "T0STANDIN",
        bot_user_id: str = "U0BOT",
        usergroups: dict[str, list[str]] | None = None,
        channel_interval_s: float | None = None,
    ) -> None:
        self.bot_token = bot_token
        self.app_token = app_token
        self.team_id = team_id
        self.bot_user_id = bot_user_id
        self.usergroups = dict(usergroups or {})
        #: When set, a second write to one channel sooner than this gets a 429.
        self.channel_interval_s = channel_interval_s
        #: What ``apps.connections.open`` hands out (set by a Socket Mode test).
        self.socket_url: str | None = None
        #: Methods that refuse table blocks, like a workspace without them.
        self.refuse_tables: set[str] = set()

        self._state = _State()
        self._lock = threading.Condition()
        self._ts = itertools.count(1)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- life cycle ---------------------------------------------------------------------

    def start(self) -> SlackStandin:
        handler = _make_handler(self)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="slack-standin", daemon=True
        )
        self._thread.start()
        logger.info("Slack Web API stand-in listening on %s", self.base_url)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        if self._server is None:
            raise RuntimeError("the stand-in is not started")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def api_url(self) -> str:
        """What to pass as ``WebClient(base_url=...)`` (ends with a slash, like Slack's)."""
        return self.base_url + "/api/"

    def response_url(self, name: str = "cmd") -> str:
        return f"{self.base_url}/response/{name}"

    # -- controls and inspection for tests ------------------------------------------------

    def rate_limit(self, method: str, *, times: int = 1, retry_after: int = 1) -> None:
        """Answer the next ``times`` calls of ``method`` with 429 and ``Retry-After``."""
        with self._lock:
            self._state.limits[method] = _Limit(times, retry_after)

    def calls(self, method: str | None = None) -> list[SlackCall]:
        with self._lock:
            return [c for c in self._state.calls if method is None or c.method == method]

    def messages(self, channel: str | None = None) -> list[StoredMessage]:
        with self._lock:
            found = self._state.messages.values()
            return [m for m in found if channel is None or m.channel == channel]

    def files(self) -> list[UploadedFile]:
        with self._lock:
            return list(self._state.files.values())

    def responses(self) -> list[dict[str, Any]]:
        """Bodies posted to ``response_url`` (ephemeral replies sent after the ack)."""
        with self._lock:
            return list(self._state.responses)

    def wait_for(self, predicate: Callable[[SlackStandin], Any], *, timeout: float = 30.0) -> Any:
        """Block until ``predicate(self)`` is truthy (re-checked on every call received)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                self._lock.release()
                try:
                    value = predicate(self)
                finally:
                    self._lock.acquire()
                if value:
                    return value
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("the stand-in did not see the expected calls in time")
                self._lock.wait(min(left, 0.2))

    # -- request handling (called from the server threads) ---------------------------------

    def handle_api(self, method: str, params: dict[str, Any], token: str | None) -> _Reply:
        with self._lock:
            reply = self._answer(method, params, token)
            self._state.calls.append(SlackCall(method, params, token, time.time(), reply.status))
            self._lock.notify_all()
        return reply

    def handle_upload(self, file_id: str, content: bytes) -> _Reply:
        with self._lock:
            upload = self._state.files.get(file_id)
            if upload is None:
                return _Reply(404, {"ok": False, "error": "unknown_upload"})
            upload.content = content
            self._state.calls.append(
                SlackCall("upload", {"file_id": file_id}, None, time.time(), 200)
            )
            self._lock.notify_all()
        return _Reply(200, "OK - " + str(len(content)))

    def handle_response_url(self, body: dict[str, Any]) -> _Reply:
        with self._lock:
            self._state.responses.append(body)
            self._state.calls.append(SlackCall("response_url", body, None, time.time(), 200))
            self._lock.notify_all()
        return _Reply(200, "ok")

    def _answer(self, method: str, params: dict[str, Any], token: str | None) -> _Reply:
        limit = self._state.limits.get(method)
        if limit is not None and limit.remaining > 0:
            limit.remaining -= 1
            return _Reply(429, {"ok": False, "error": "ratelimited"}, limit.retry_after)

        expected = self.app_token if method == "apps.connections.open" else self.bot_token
        if token != expected:
            return _Reply(200, {"ok": False, "error": "invalid_auth"})

        channel = str(params.get("channel") or params.get("channel_id") or "")
        if method in CHANNEL_WRITES and self.channel_interval_s is not None:
            now = time.monotonic()
            last = self._state.last_write.get(channel)
            if last is not None and now - last < self.channel_interval_s:
                return _Reply(429, {"ok": False, "error": "ratelimited"}, 1)
            self._state.last_write[channel] = now

        if sum(1 for b in _blocks(params) if b.get("type") == "table") > 1:
            return _Reply(
                200,
                {
                    "ok": False,
                    "error": "invalid_blocks",
                    "errors": ["only one table block is allowed per message"],
                },
            )
        if method in self.refuse_tables and any(b.get("type") == "table" for b in _blocks(params)):
            return _Reply(200, {"ok": False, "error": "invalid_blocks"})

        answer = getattr(self, "_api_" + method.replace(".", "_"), None)
        if answer is None:
            return _Reply(200, {"ok": False, "error": "unknown_method"})
        return answer(params)

    def _api_auth_test(self, params: dict[str, Any]) -> _Reply:
        return _ok(team_id=self.team_id, user_id=self.bot_user_id, bot_id="B0BOT")

    def _api_chat_postMessage(self, params: dict[str, Any]) -> _Reply:
        channel = str(params.get("channel") or "")
        if not channel:
            return _Reply(200, {"ok": False, "error": "channel_not_found"})
        ts = f"{int(time.time())}.{next(self._ts):06d}"
        message = StoredMessage(
            channel=channel,
            ts=ts,
            text=str(params.get("text") or ""),
            blocks=_blocks(params),
            thread_ts=params.get("thread_ts"),
        )
        self._state.messages[(channel, ts)] = message
        return _ok(channel=channel, ts=ts, message={"text": message.text, "ts": ts})

    def _api_chat_update(self, params: dict[str, Any]) -> _Reply:
        key = (str(params.get("channel") or ""), str(params.get("ts") or ""))
        message = self._state.messages.get(key)
        if message is None:
            return _Reply(200, {"ok": False, "error": "message_not_found"})
        message.text = str(params.get("text") or message.text)
        message.blocks = _blocks(params) or message.blocks
        message.updates += 1
        return _ok(channel=key[0], ts=key[1], text=message.text)

    def _api_chat_postEphemeral(self, params: dict[str, Any]) -> _Reply:
        if not params.get("channel") or not params.get("user"):
            return _Reply(200, {"ok": False, "error": "channel_not_found"})
        return _ok(message_ts=f"{int(time.time())}.{next(self._ts):06d}")

    def _api_views_open(self, params: dict[str, Any]) -> _Reply:
        if not params.get("trigger_id"):
            return _Reply(200, {"ok": False, "error": "invalid_trigger_id"})
        return _ok(view=dict(_json(params.get("view")), id="V" + str(next(self._ts))))

    def _api_views_update(self, params: dict[str, Any]) -> _Reply:
        return _ok(view=_json(params.get("view")))

    def _api_usergroups_users_list(self, params: dict[str, Any]) -> _Reply:
        group = str(params.get("usergroup") or "")
        if group not in self.usergroups:
            return _Reply(200, {"ok": False, "error": "no_such_subteam"})
        return _ok(users=list(self.usergroups[group]))

    def _api_apps_connections_open(self, params: dict[str, Any]) -> _Reply:
        if not self.socket_url:
            return _Reply(200, {"ok": False, "error": "socket_mode_not_set_up"})
        return _ok(url=self.socket_url)

    def _api_files_getUploadURLExternal(self, params: dict[str, Any]) -> _Reply:
        filename = str(params.get("filename") or "")
        if not filename or not str(params.get("length") or "").isdigit():
            return _Reply(200, {"ok": False, "error": "invalid_arguments"})
        file_id = f"F{next(self._ts):08d}"
        self._state.files[file_id] = UploadedFile(file_id, filename)
        return _ok(file_id=file_id, upload_url=f"{self.base_url}/upload/{file_id}")

    def _api_files_completeUploadExternal(self, params: dict[str, Any]) -> _Reply:
        done = []
        for item in _json(params.get("files")) or []:
            upload = self._state.files.get(str(item.get("id")))
            if upload is None:
                return _Reply(200, {"ok": False, "error": "file_not_found"})
            upload.title = item.get("title")
            upload.channel = params.get("channel_id")
            upload.thread_ts = params.get("thread_ts")
            done.append(
                {
                    "id": upload.file_id,
                    "name": upload.filename,
                    "title": upload.title,
                    "permalink": f"{self.base_url}/files/{upload.file_id}",
                }
            )
        return _ok(files=done)


@dataclass(frozen=True)
class _Reply:
    status: int
    body: dict[str, Any] | str
    retry_after: int | None = None


def _ok(**values: Any) -> _Reply:
    return _Reply(200, {"ok": True, **values})


def _json(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return {}
    return value if value is not None else {}


def _blocks(params: dict[str, Any]) -> list[dict[str, Any]]:
    blocks = _json(params.get("blocks"))
    return blocks if isinstance(blocks, list) else []


def _make_handler(standin: SlackStandin) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            url = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""

            if url.path.startswith("/upload/"):
                self._send(standin.handle_upload(url.path.rsplit("/", 1)[1], raw))
                return
            if url.path.startswith("/response/"):
                self._send(standin.handle_response_url(_json(raw.decode("utf-8", "replace"))))
                return
            if not url.path.startswith("/api/"):
                self._send(_Reply(404, {"ok": False, "error": "not_found"}))
                return

            params: dict[str, Any] = dict(parse_qsl(url.query))
            content_type = self.headers.get("Content-Type") or ""
            if "json" in content_type:
                body = _json(raw.decode("utf-8", "replace"))
                params.update(body if isinstance(body, dict) else {})
            elif raw:
                params.update(parse_qsl(raw.decode("utf-8", "replace")))
            auth = self.headers.get("Authorization") or ""
            token = auth.removeprefix("Bearer ").strip() or params.pop("token", None)
            method = url.path.removeprefix("/api/").strip("/")
            self._send(standin.handle_api(method, params, token))

        do_GET = do_POST

        def _send(self, reply: _Reply) -> None:
            if isinstance(reply.body, str):
                payload, ctype = reply.body.encode(), "text/plain"
            else:
                payload, ctype = json.dumps(reply.body).encode(), "application/json"
            self.send_response(reply.status)
            self.send_header("Content-Type", ctype + "; charset=utf-8")
            self.send_header("Content-Length", str(len(payload)))
            if reply.retry_after is not None:
                self.send_header("Retry-After", str(reply.retry_after))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:
            logger.debug("stand-in: " + format, *args)

    return Handler

"""The embedded demo: the real bot, served by gunicorn, talking to the local Slack stand-in.

``clusterbook-bot demo`` needs no Slack workspace: it starts the stand-in, starts
``clusterbook-bot http`` on a free port of 127.0.0.1 with fresh random credentials, sends it
one correctly signed slash command the way Slack would, and prints what the bot answered and
posted. The same helpers start the bot for the benchmark.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from clusterbook_bot.standin import SlackStandin

DEMO_USER = "U0DEMO"
DEMO_CHANNEL = "C0DEMO"
DEMO_ACCESS = "rules:\n  - name: demo\n    users: [U0DEMO]\n    actions: ['*']\n"


def sign(body: bytes, *, timestamp: int, secret: str) -> str:
    """Slack's v0 request signature."""
    base = b"v0:" + str(timestamp).encode() + b":" + body
    return "v0=" + hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()


def slash_body(
    text: str,
    *,
    user: str,
    channel: str,
    command: str,
    response_url: str,
    trigger_id: str | None = None,
) -> bytes:
    """A slash command's form body; every one carries a new trigger id, as Slack's do."""
    return urllib.parse.urlencode(
        {
            "team_id": "T0STANDIN",
            "team_domain": "standin",
            "channel_id": channel,
            "channel_name": "demo",
            "user_id": user,
            "user_name": user.lower(),
            "command": command,
            "text": text,
            "api_app_id": "A0CLUSTERBOOK",
            "response_url": response_url,
            "trigger_id": trigger_id or f"{time.time_ns()}.{secrets.token_hex(6)}",
        }
    ).encode()


def post_signed(url: str, body: bytes, *, secret: str, timeout: float = 30) -> tuple[int, str]:
    timestamp = int(time.time())
    request = urllib.request.Request(
        url,
        data=body,
        method="POST",
        headers={
            "Content-Type": "application/x-www-form-urlencoded",
            "X-Slack-Request-Timestamp": str(timestamp),
            "X-Slack-Signature": sign(body, timestamp=timestamp, secret=secret),
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@dataclass
class HttpBot:
    """A ``clusterbook-bot http`` child process."""

    process: subprocess.Popen[str]
    url: str = ""
    log: list[str] = field(default_factory=list)

    @property
    def events_url(self) -> str:
        return self.url + "/slack/events"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_http_bot(
    *,
    standin: SlackStandin,
    state_dir: Path,
    signing_secret: str,
    access_yaml: str,
    env: dict[str, str] | None = None,
    threads: int | None = None,
) -> HttpBot:
    """Start the bot on a free port of 127.0.0.1 and return once ``/healthz`` answers
    (``threads``: its request threads, by default the bot's own default)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    access = state_dir / "access.yaml"
    access.write_text(access_yaml)
    child_env = {
        k: v for k, v in os.environ.items() if not k.startswith(("CLUSTERBOOK_", "SLACK_"))
    }
    child_env.update(
        SLACK_BOT_TOKEN=standin.bot_token,
        SLACK_SIGNING_SECRET=signing_secret,
        SLACK_API_URL=standin.api_url,
        CLUSTERBOOK_STATE_DIR=str(state_dir),
        CLUSTERBOOK_BOT_ACCESS=str(access),
        PYTHONUNBUFFERED="1",
    )
    child_env.update(env or {})
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "clusterbook_bot",
            "http",
            "--bind",
            "127.0.0.1:0",
            *(["--threads", str(threads)] if threads else []),
        ],
        env=child_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    bot = HttpBot(process)
    listening = threading.Event()

    def read_log() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            bot.log.append(line.rstrip())
            match = re.search(r"Listening at: (http://127\.0\.0\.1:\d+)", line)
            if match:
                bot.url = match.group(1)
                listening.set()

    threading.Thread(target=read_log, daemon=True).start()
    deadline = time.monotonic() + 60
    listening.wait(60)
    while time.monotonic() < deadline and bot.url:
        if process.poll() is not None:
            break
        try:
            with urllib.request.urlopen(bot.url + "/healthz", timeout=2) as response:
                if response.status == 200:
                    return bot
        except OSError:
            time.sleep(0.1)
    bot.stop()
    raise RuntimeError("the bot did not start:\n" + "\n".join(bot.log[-30:]))


def run_demo(text: str) -> None:
    """Start everything locally, send ``/clusterbook <text>``, print what happened."""
    signing_secret = secrets.token_hex(16)
    state_dir = Path(tempfile.mkdtemp(prefix="clusterbook-bot-demo-"))
    with SlackStandin(bot_token="xoxb-demo-" + secrets.token_hex(8)) as standin:
        print(f"Slack stand-in on {standin.base_url}; state in {state_dir}")
        bot = start_http_bot(
            standin=standin,
            state_dir=state_dir,
            signing_secret=signing_secret,
            access_yaml=DEMO_ACCESS,
        )
        try:
            print(f"bot (gunicorn) on {bot.url}\n\n> /clusterbook {text}")
            body = slash_body(
                text,
                user=DEMO_USER,
                channel=DEMO_CHANNEL,
                command="/clusterbook",
                response_url=standin.response_url(),
            )
            status, answer = post_signed(bot.events_url, body, secret=signing_secret)
            print(f"ack: HTTP {status}: {json.loads(answer or '{}').get('text', answer)}\n")
            _follow(standin)
        finally:
            bot.stop()


def _follow(standin: SlackStandin, *, timeout: float = 120) -> None:
    """Print the run message as it changes, until it shows how the run ended."""
    shown = ""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        messages = [m for m in standin.messages(DEMO_CHANNEL) if m.thread_ts is None]
        if messages:
            text = "\n".join(_plain(m.blocks) for m in messages)
            if text != shown:
                print("--- message in #demo ---\n" + text)
                shown = text
            if (
                any(
                    m.text.endswith(("succeeded", "failed", "cancelled", "timed-out"))
                    for m in messages
                )
                and standin.files()
            ):
                break
        time.sleep(0.5)
    for upload in standin.files():
        print(f"--- uploaded in the thread: {upload.filename} ({len(upload.content)} bytes)")


def _plain(blocks: list[dict]) -> str:
    lines = []
    for block in blocks:
        text = (block.get("text") or {}).get("text")
        if text:
            lines.append(text)
        for item in block.get("fields") or []:
            lines.append(item.get("text", ""))
        for row in block.get("rows") or []:
            lines.append(" | ".join(cell.get("text", "") for cell in row))
        for item in block.get("elements") or []:
            if isinstance(item, dict) and item.get("text") and isinstance(item["text"], str):
                lines.append(item["text"])
    return "\n".join(lines)

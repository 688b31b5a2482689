"""Slack writes for live progress, kept within Slack's rate limits.

Slack allows about one message write per second per channel and answers faster writers with
HTTP 429 and ``Retry-After``. All of the bot's channel writes go through one ``ChannelWriter``:

- ``update`` (progress) never blocks the run: it stores the newest content for a message and
  a background thread sends it when the channel may be written again. A newer update replaces
  an unsent older one, so a fast run costs a few writes, not one per step.
- ``send`` (new messages, thread replies, final results, uploads) waits for the channel's
  turn and retries after a 429 for as long as ``Retry-After`` says, a bounded number of times.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

logger = logging.getLogger(__name__)

DEFAULT_INTERVAL_S = 1.0
MAX_RETRIES = 5
MAX_RETRY_AFTER_S = 60.0


@dataclass
class _Pending:
    channel: str
    ts: str
    text: str
    blocks: list[dict[str, Any]]


class ChannelWriter:
    """Throttled, 429-aware writes to Slack channels. Start it once; share it."""

    def __init__(self, client: WebClient, *, interval_s: float = DEFAULT_INTERVAL_S) -> None:
        self.client = client
        self.interval_s = interval_s
        self._next_allowed: dict[str, float] = {}
        self._pending: dict[tuple[str, str], _Pending] = {}
        self._inflight: set[tuple[str, str]] = set()
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="slack-progress", daemon=True)
        self._thread.start()

    def stop(self, *, timeout: float = 5.0) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    # -- non-blocking, coalesced progress updates -------------------------------------------

    def update(self, channel: str, ts: str, *, text: str, blocks: list[dict[str, Any]]) -> None:
        with self._cond:
            self._pending[(channel, ts)] = _Pending(channel, ts, text, blocks)
            self._cond.notify_all()

    def discard(self, channel: str, ts: str) -> None:
        """Drop an unsent progress update and wait out one being sent (the final replaces it)."""
        with self._cond:
            self._pending.pop((channel, ts), None)
            while (channel, ts) in self._inflight:
                self._cond.wait(0.1)

    def _loop(self) -> None:
        while True:
            with self._cond:
                if self._stopping:
                    return
                item, wait = self._next_due()
                if item is None:
                    self._cond.wait(wait)
                    continue
                key = (item.channel, item.ts)
                del self._pending[key]
                self._inflight.add(key)
                self._next_allowed[item.channel] = time.monotonic() + self.interval_s

            try:
                self.client.chat_update(
                    channel=item.channel, ts=item.ts, text=item.text, blocks=item.blocks
                )
            except SlackApiError as exc:
                self._after_error(item, exc)
            except Exception as exc:  # noqa: BLE001 - progress must never stop a run
                logger.warning("progress update for %s failed: %s", item.ts, exc)
            finally:
                with self._cond:
                    self._inflight.discard(key)
                    self._hold(item.channel)
                    self._cond.notify_all()

    def _next_due(self) -> tuple[_Pending | None, float]:
        now = time.monotonic()
        soonest = 1.0
        for item in self._pending.values():
            ready_at = self._next_allowed.get(item.channel, 0.0)
            if ready_at <= now:
                return item, 0.0
            soonest = min(soonest, ready_at - now)
        return None, soonest

    def _after_error(self, item: _Pending, exc: SlackApiError) -> None:
        retry_after = _retry_after(exc)
        if retry_after is None:
            logger.warning("progress update for %s refused: %s", item.ts, _error_name(exc))
            return
        logger.info("Slack rate limit on %s; next update in %.0f s", item.channel, retry_after)
        with self._cond:
            self._next_allowed[item.channel] = time.monotonic() + retry_after
            self._pending.setdefault((item.channel, item.ts), item)
            self._cond.notify_all()

    # -- blocking writes that must arrive ---------------------------------------------------

    def send(self, channel: str, call: Callable[[], Any]) -> Any:
        """Run ``call`` (a Web API call writing to ``channel``) in the channel's turn."""
        for attempt in range(MAX_RETRIES + 1):
            self._wait_turn(channel)
            try:
                return call()
            except SlackApiError as exc:
                retry_after = _retry_after(exc)
                if retry_after is None or attempt == MAX_RETRIES:
                    raise
                logger.info("Slack rate limit on %s; retrying in %.0f s", channel, retry_after)
                with self._cond:
                    self._next_allowed[channel] = time.monotonic() + retry_after
            finally:
                with self._cond:
                    self._hold(channel)
        raise AssertionError("unreachable")

    def _hold(self, channel: str) -> None:
        """The next write waits a full interval after this one *completed* (lock held):
        counting from the start would let network jitter bring two writes closer."""
        ready = time.monotonic() + self.interval_s
        self._next_allowed[channel] = max(self._next_allowed.get(channel, 0.0), ready)

    def _wait_turn(self, channel: str) -> None:
        with self._cond:
            while True:
                wait = self._next_allowed.get(channel, 0.0) - time.monotonic()
                if wait <= 0:
                    self._next_allowed[channel] = time.monotonic() + self.interval_s
                    return
                self._cond.wait(wait)


def _retry_after(exc: SlackApiError) -> float | None:
    response = exc.response
    if getattr(response, "status_code", None) != 429:
        return None
    headers = {k.lower(): v for k, v in (getattr(response, "headers", None) or {}).items()}
    raw = headers.get("retry-after")
    if isinstance(raw, list):
        raw = raw[0] if raw else None
    try:
        return min(max(float(raw), 0.0), MAX_RETRY_AFTER_S)
    except (TypeError, ValueError):
        return 1.0


def _error_name(exc: SlackApiError) -> str:
    return str(exc.response.get("error") or type(exc).__name__)

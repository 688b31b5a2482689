"""Destructive requests waiting for the requester's confirmation or a second approval.

A request that would destroy something (``down``, a teardown runbook) is held here under a
random id; the id is the value of the confirm / approve buttons, so a click can only act on
a request the bot itself created. Entries expire after ``TTL_S``.

Known shortcoming: pending requests are kept in memory, so a bot restart forgets them and the
buttons answer "expired"; the requester asks again. Nothing destructive runs by mistake.
"""

from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass, field

from clusterbook_bot.runner import RunRequest

TTL_S = 15 * 60


@dataclass
class PendingAction:
    id: str
    request: RunRequest
    what: str
    runbook: str
    confirmed: bool = False
    created: float = field(default_factory=time.monotonic)


class PendingActions:
    """Thread-safe store of pending destructive requests."""

    def __init__(self, *, ttl_s: float = TTL_S) -> None:
        self.ttl_s = ttl_s
        self._items: dict[str, PendingAction] = {}
        self._lock = threading.Lock()

    def add(self, request: RunRequest, *, what: str, runbook: str) -> PendingAction:
        action = PendingAction(secrets.token_urlsafe(16), request, what, runbook)
        with self._lock:
            self._expire()
            self._items[action.id] = action
        return action

    def get(self, action_id: str) -> PendingAction | None:
        with self._lock:
            self._expire()
            return self._items.get(action_id)

    def mark_confirmed(self, action_id: str) -> PendingAction | None:
        """Confirm once: a second click on the same button finds nothing to confirm."""
        with self._lock:
            action = self._items.get(action_id)
            if action is None or action.confirmed:
                return None
            action.confirmed = True
            return action

    def take(self, action_id: str) -> PendingAction | None:
        """Remove and return the action; only one caller ever gets it."""
        with self._lock:
            self._expire()
            return self._items.pop(action_id, None)

    def _expire(self) -> None:
        now = time.monotonic()
        for key in [k for k, v in self._items.items() if now - v.created > self.ttl_s]:
            del self._items[key]

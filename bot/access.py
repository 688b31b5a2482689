"""Who may do what from Slack: the access file, and the decisions taken from it.

The access file (YAML) lists rules; a request is allowed when at least one rule matches the
person (Slack user id, or membership of a Slack user group), the place (channel id), the
action and, for actions that run something, the runbook::

    approval:
      second_approver: true          # destructive actions also need another person's approval
      destructive_runbooks: ["*teardown*"]
    rules:
      - name: everyone-reads
        users: ["*"]
        actions: [help, runbooks, params, status, runs, show]
      - name: platform-team
        usergroups: [S0PLATFORM]
        channels: [C0OPS]             # only from this channel
        actions: [run, up, down, cancel, approve]
        runbooks: ["*"]

A rule without ``users`` and ``usergroups`` matches anyone in its channels; a rule without
``channels`` matches everywhere. Runbook names and ids are ``fnmatch`` patterns. Without an
access file, everyone may only read (help, runbooks, params, status, runs, show).

Actions: help, runbooks, params, status, runs, show (reading); run, up, down, cancel,
approve (acting). ``down`` and running a destructive runbook need the requester to confirm,
and with ``second_approver`` a second person allowed to ``approve`` it.
"""

from __future__ import annotations

import fnmatch
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from clusterbook.errors import ConfigError

logger = logging.getLogger(__name__)

READ_ACTIONS = frozenset({"help", "runbooks", "params", "status", "runs", "show"})
WRITE_ACTIONS = frozenset({"run", "up", "down", "cancel", "approve"})
ALL_ACTIONS = READ_ACTIONS | WRITE_ACTIONS
GROUP_CACHE_S = 300.0
#: After a failed look-up, deny for this long before asking Slack again (keeps acks fast).
GROUP_FAILURE_CACHE_S = 30.0

#: Looks up the members of a Slack user group (``usergroups.users.list``).
GroupLookup = Callable[[str], Iterable[str]]


@dataclass(frozen=True)
class Rule:
    name: str
    users: frozenset[str] = frozenset()
    usergroups: frozenset[str] = frozenset()
    channels: frozenset[str] = frozenset()
    actions: frozenset[str] = frozenset()
    runbooks: tuple[str, ...] = ("*",)


@dataclass(frozen=True)
class Decision:
    allowed: bool
    rule: str | None = None


@dataclass
class AccessPolicy:
    """The parsed access file; ``decide`` answers one request."""

    rules: list[Rule] = field(default_factory=list)
    second_approver: bool = False
    destructive_runbooks: tuple[str, ...] = ("*teardown*",)
    group_lookup: GroupLookup | None = None
    source: str = "(built-in read-only default)"

    def __post_init__(self) -> None:
        #: group -> (valid until, members)
        self._groups: dict[str, tuple[float, frozenset[str]]] = {}
        self._groups_lock = threading.Lock()

    @classmethod
    def read_only(cls) -> AccessPolicy:
        rule = Rule("read-only default", users=frozenset({"*"}), actions=READ_ACTIONS)
        return cls(rules=[rule])

    @classmethod
    def load(cls, path: Path | None) -> AccessPolicy:
        if path is None:
            return cls.read_only()
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read access file {path}: {exc}") from exc
        policy = parse_policy(data, source=str(path))
        logger.info("access: %d rule(s) from %s", len(policy.rules), path)
        return policy

    def is_destructive(self, action: str, runbook: str | None) -> bool:
        if action == "down":
            return True
        if action in ("run", "up") and runbook:
            return any(fnmatch.fnmatchcase(runbook, p) for p in self.destructive_runbooks)
        return False

    def decide(
        self, *, user: str, channel: str, action: str, runbook: str | None = None
    ) -> Decision:
        for rule in self.rules:
            if action not in rule.actions:
                continue
            if runbook is not None and action in WRITE_ACTIONS and not _matches(runbook, rule):
                continue
            if rule.channels and channel not in rule.channels and "*" not in rule.channels:
                continue
            if not self._matches_person(rule, user):
                continue
            return Decision(True, rule.name)
        return Decision(False)

    def _matches_person(self, rule: Rule, user: str) -> bool:
        if not rule.users and not rule.usergroups:
            return True
        if "*" in rule.users or user in rule.users:
            return True
        return any(user in self.members_of(group) for group in rule.usergroups)

    def members_of(self, group: str) -> frozenset[str]:
        """Members of a user group, cached for a few minutes; empty when the lookup fails."""
        if self.group_lookup is None:
            return frozenset()
        now = time.monotonic()
        with self._groups_lock:
            cached = self._groups.get(group)
            if cached is not None and now < cached[0]:
                return cached[1]
        try:
            members = frozenset(self.group_lookup(group))
        except Exception as exc:  # noqa: BLE001 - a failed lookup must deny, not crash
            logger.warning("access: cannot list members of user group %s: %s", group, exc)
            with self._groups_lock:
                self._groups[group] = (now + GROUP_FAILURE_CACHE_S, frozenset())
            return frozenset()
        with self._groups_lock:
            self._groups[group] = (now + GROUP_CACHE_S, members)
        return members

    def groups(self) -> set[str]:
        return {g for rule in self.rules for g in rule.usergroups}


def _matches(runbook: str, rule: Rule) -> bool:
    return any(fnmatch.fnmatchcase(runbook, pattern) for pattern in rule.runbooks)


def parse_policy(data: Any, *, source: str) -> AccessPolicy:
    if not isinstance(data, dict):
        raise ConfigError(f"access file {source}: expected a mapping with 'rules'")
    unknown = set(data) - {"rules", "approval"}
    if unknown:
        raise ConfigError(f"access file {source}: unknown key(s) {', '.join(sorted(unknown))}")

    approval = data.get("approval") or {}
    if not isinstance(approval, dict):
        raise ConfigError(f"access file {source}: 'approval' must be a mapping")
    destructive = _strings(approval.get("destructive_runbooks", ["*teardown*"]), "approval")

    rules = []
    for index, raw in enumerate(data.get("rules") or []):
        rules.append(_parse_rule(raw, index=index, source=source))
    return AccessPolicy(
        rules=rules,
        second_approver=bool(approval.get("second_approver", False)),
        destructive_runbooks=tuple(destructive),
        source=source,
    )


def _parse_rule(raw: Any, *, index: int, source: str) -> Rule:
    where = f"access file {source}, rule {index + 1}"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping")
    unknown = set(raw) - {"name", "users", "usergroups", "channels", "actions", "runbooks"}
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")

    actions = frozenset(_strings(raw.get("actions", []), where))
    if "*" in actions:
        actions = ALL_ACTIONS
    bad = sorted(actions - ALL_ACTIONS)
    if bad or not actions:
        raise ConfigError(
            f"{where}: actions must be some of {', '.join(sorted(ALL_ACTIONS))}"
            + (f"; unknown: {', '.join(bad)}" if bad else "")
        )

    rule = Rule(
        name=str(raw.get("name") or f"rule {index + 1}"),
        users=frozenset(_strings(raw.get("users", []), where)),
        usergroups=frozenset(_strings(raw.get("usergroups", []), where)),
        channels=frozenset(_strings(raw.get("channels", []), where)),
        actions=actions,
        runbooks=tuple(_strings(raw.get("runbooks", ["*"]), where)),
    )
    if not (rule.users or rule.usergroups or rule.channels):
        raise ConfigError(f"{where}: say who it is for (users, usergroups or channels)")
    return rule


def _strings(value: Any, where: str) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, (str, int)) for v in value):
        raise ConfigError(f"{where}: expected a list of names, got {value!r}")
    return [str(v) for v in value]

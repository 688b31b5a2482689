"""The access policy: who may do what, from which channel; bad access files are refused."""

from __future__ import annotations

import pytest

from clusterbook.errors import ConfigError
from clusterbook_bot.access import AccessPolicy, parse_policy

POLICY = {
    "approval": {"second_approver": True, "destructive_runbooks": ["*teardown*", "9?_*"]},
    "rules": [
        {"name": "readers", "users": ["*"], "actions": ["runbooks", "status"]},
        {"name": "ops channel", "channels": ["C0OPS"], "actions": ["run"], "runbooks": ["00_*"]},
        {"name": "group", "usergroups": ["S0ADMINS"], "actions": ["*"]},
    ],
}


def policy(lookup=None) -> AccessPolicy:
    parsed = parse_policy(POLICY, source="test")
    parsed.group_lookup = lookup
    return parsed


def test_rules_match_person_channel_action_and_runbook():
    members = {"S0ADMINS": ["U0ADMIN"]}
    access = policy(lambda group: members[group])

    assert access.decide(user="U0ANY", channel="C0X", action="status").allowed
    assert not access.decide(user="U0ANY", channel="C0X", action="run", runbook="00_hello").allowed
    assert access.decide(user="U0ANY", channel="C0OPS", action="run", runbook="00_hello").allowed
    assert not access.decide(
        user="U0ANY", channel="C0OPS", action="run", runbook="01_provision"
    ).allowed
    assert access.decide(
        user="U0ADMIN", channel="C0X", action="down", runbook="04_teardown"
    ).allowed
    assert access.decide(user="U0ADMIN", channel="C0X", action="approve").rule == "group"


def test_group_lookups_are_cached_also_when_they_fail():
    calls = []

    def broken(group: str) -> list[str]:
        calls.append(group)
        raise RuntimeError("Slack is down")

    access = policy(broken)
    for _ in range(3):
        assert not access.decide(user="U0ADMIN", channel="C0X", action="run", runbook="x").allowed

    working = policy(lambda group: calls.append(group) or ["U0ADMIN"])
    for _ in range(3):
        assert working.decide(user="U0ADMIN", channel="C0X", action="cancel").allowed
    assert calls == ["S0ADMINS", "S0ADMINS"]  # one failed look-up, one good one, each cached


def test_destructive_actions():
    access = policy()
    assert access.is_destructive("down", None)
    assert access.is_destructive("run", "04_teardown")
    assert access.is_destructive("run", "99_anything")
    assert not access.is_destructive("run", "00_hello")
    assert access.second_approver


def test_without_an_access_file_everyone_may_only_read():
    access = AccessPolicy.load(None)
    assert access.decide(user="U1", channel="C1", action="runbooks").allowed
    for action in ("run", "up", "down", "cancel", "approve"):
        assert not access.decide(user="U1", channel="C1", action=action, runbook="x").allowed


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([], "expected a mapping"),
        ({"rules": [{"users": ["U1"], "actions": ["destroy"]}]}, "unknown: destroy"),
        ({"rules": [{"actions": ["run"]}]}, "say who it is for"),
        ({"rules": [{"users": "U1", "actions": ["run"], "colour": "red"}]}, "unknown key"),
        ({"rules": [{"users": [{"id": 1}], "actions": ["run"]}]}, "list of names"),
        ({"rule": []}, "unknown key"),
    ],
)
def test_bad_access_files_are_refused_with_the_reason(data, message):
    with pytest.raises(ConfigError, match=message):
        parse_policy(data, source="test")


def test_access_file_that_is_not_yaml(tmp_path):
    path = tmp_path / "access.yaml"
    path.write_text("rules: [unclosed")
    with pytest.raises(ConfigError, match="cannot read access file"):
        AccessPolicy.load(path)

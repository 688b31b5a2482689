"""Starting the bot with missing or wrong credentials fails with a message that says what to
fix, never with a traceback, and never echoes a credential."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from clusterbook_bot.standin import SlackStandin


def start(args: list[str], env: dict[str, str], tmp_path) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "CLUSTERBOOK_"))}
    clean.update(env, CLUSTERBOOK_STATE_DIR=str(tmp_path / "state"))
    return subprocess.run(
        [sys.executable, "-m", "clusterbook_bot", *args],
        env=clean,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["http"], {}, "no Slack bot token"),
        (["http"], {"SLACK_BOT_TOKEN": "xoxb-1"}, "no signing secret"),
        (["socket"], {"SLACK_BOT_TOKEN": "xoxb-1"}, "app-level token"),
        (["http"], {"SLACK_BOT_TOKEN_FILE": "/nonexistent/token"}, "cannot read"),
        (["http"], {"CLUSTERBOOK_BOT_WORKERS": "many"}, "CLUSTERBOOK_BOT_WORKERS"),
        (["http"], {"CLUSTERBOOK_BOT_COMMAND": "clusterbook"}, "must look like /name"),
    ],
)
def test_missing_or_bad_settings_are_named(args, env, message, tmp_path):
    ran = start(args, env, tmp_path)

    assert ran.returncode == 2
    assert message in ran.stderr
    assert "Traceback" not in ran.stderr


@pytest.mark.parametrize("transport", ["socket", "http"])
def test_a_token_slack_refuses_stops_the_bot_with_a_clear_message(transport, tmp_path):
    with SlackStandin() as standin:
        env = {
            "SLACK_BOT_TOKEN": "xoxb-wrong-token-0000",
            "SLACK_APP_TOKEN": "xapp-wrong-token-0000",
            "SLACK_SIGNING_SECRET": "signing-secret-0000",
            "SLACK_API_URL": standin.api_url,
        }
        args = [transport] + (["--bind", "127.0.0.1:0"] if transport == "http" else [])
        ran = start(args, env, tmp_path)

    assert ran.returncode != 0
    assert "Slack refused the bot token (invalid_auth)" in ran.stderr
    assert "xoxb-wrong-token-0000" not in ran.stderr
    assert "signing-secret-0000" not in ran.stderr
    assert "Traceback" not in ran.stderr

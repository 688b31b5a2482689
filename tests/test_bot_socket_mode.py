"""Socket Mode: the bot process connects to a local WebSocket server that speaks Slack's
envelope format, answers slash commands over it and runs what they ask."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from clusterbook_bot.standin import SlackStandin
from fixtures.slack import APP_TOKEN, BOT_TOKEN, REPO, SocketModeServer


def slash_payload(text: str, *, channel: str, user: str = "U0ALICE") -> dict:
    return {
        "token": "unused",
        "team_id": "T0STANDIN",
        "team_domain": "standin",
        "channel_id": channel,
        "channel_name": "test",
        "user_id": user,
        "user_name": "alice",
        "command": "/cb",
        "text": text,
        "api_app_id": "A0CLUSTERBOOK",
        "response_url": "http://127.0.0.1:9/unused",
        "trigger_id": "1.2.3",
    }


def test_socket_mode_answers_commands_and_runs(tmp_path):
    access = tmp_path / "access.yaml"
    access.write_text("rules:\n  - users: [U0ALICE]\n    actions: ['*']\n")
    server = SocketModeServer()
    with SlackStandin(bot_token=BOT_TOKEN, app_token=APP_TOKEN) as standin:
        standin.socket_url = server.url
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "CLUSTERBOOK_"))}
        env.update(
            SLACK_BOT_TOKEN=BOT_TOKEN,
            SLACK_APP_TOKEN=APP_TOKEN,
            SLACK_API_URL=standin.api_url,
            CLUSTERBOOK_STATE_DIR=str(tmp_path / "state"),
            CLUSTERBOOK_BOT_COMMAND="/cb",
            CLUSTERBOOK_BOT_ACCESS=str(access),
            CLUSTERBOOK_RUNBOOKS_DIR=str(REPO / "runbooks"),
        )
        bot = subprocess.Popen(
            [sys.executable, "-m", "clusterbook_bot", "socket"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            server.wait_connected()

            unknown = server.send("slash_commands", slash_payload("nonsense", channel="C0S"))
            assert "/cb runbooks" in unknown["payload"]["text"]

            reply = server.send(
                "slash_commands", slash_payload("run 00_hello name=socket", channel="C0S")
            )
            assert "Queued" in reply["payload"]["text"]
            assert reply["payload"]["response_type"] == "ephemeral"

            final = standin.wait_for(
                lambda s: [m for m in s.messages("C0S") if m.text.endswith("succeeded")], timeout=90
            )
            assert "Hello, socket!" in json.dumps(final[0].blocks)
            assert standin.calls("apps.connections.open")[0].token == APP_TOKEN

            # The parameter form, over the same socket: open it, then submit it.
            server.send("slash_commands", slash_payload("run 00_hello", channel="C0FORM"))
            opened = standin.wait_for(lambda s: s.calls("views.open"))
            view = opened[0].params["view"]
            view = json.loads(view) if isinstance(view, str) else view
            values = {
                "name": {"value": {"type": "plain_text_input", "value": "form"}},
                "times": {"value": {"type": "number_input", "value": "0"}},
            }
            submission = {
                "type": "view_submission",
                "user": {"id": "U0ALICE"},
                "team": {"id": "T0STANDIN"},
                "api_app_id": "A0CLUSTERBOOK",
                "view": dict(view, id="V1", state={"values": values}),
            }
            refused = server.send("interactive", submission)
            assert refused["payload"]["response_action"] == "errors"
            assert set(refused["payload"]["errors"]) == {"times"}

            values["times"] = {"value": {"type": "number_input", "value": "2"}}
            server.send(
                "interactive", dict(submission, view=dict(view, id="V1", state={"values": values}))
            )
            formed = standin.wait_for(
                lambda s: [m for m in s.messages("C0FORM") if m.text.endswith("succeeded")],
                timeout=90,
            )
            assert json.dumps(formed[0].blocks).count("Hello, form!") == 2
        finally:
            bot.terminate()
            try:
                _, err = bot.communicate(timeout=20)
            except subprocess.TimeoutExpired:
                bot.kill()
                _, err = bot.communicate()
            server.close()
        assert "Traceback" not in err, err
        assert BOT_TOKEN not in err and APP_TOKEN not in err
        assert bot.returncode == 0, err

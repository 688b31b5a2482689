"""The bot as Slack drives it: signed HTTP requests to a real gunicorn-served bot process.

Runs execute for real (papermill, ipykernel) with the repository's 00_hello and small test
runbooks; what the bot posts is read back from the Slack stand-in, what it recorded from the
run index.
"""

from __future__ import annotations

import json
import time
from typing import Any

import nbformat
import pytest

from clusterbook.archive.index import RunIndex
from clusterbook_bot.standin import SlackStandin, StoredMessage
from fixtures.slack import write_runbook


def index_of(bot: Any) -> RunIndex:
    return RunIndex(bot.state_dir / "runs.sqlite3")


def final_message(standin: SlackStandin, channel: str, *, timeout: float = 90) -> StoredMessage:
    """The run message of ``channel`` once it shows how the run ended."""
    ended = (":white_check_mark:", ":x:", ":no_entry_sign:", ":alarm_clock:", ":warning:")

    def done(s: SlackStandin) -> StoredMessage | None:
        for message in s.messages(channel):
            if (
                message.thread_ts is None
                and message.text.split(": ")[-1]
                in ("succeeded", "failed", "cancelled", "timed-out", "interrupted")
                and any(icon in json.dumps(message.blocks) for icon in ended)
            ):
                return message
        return None

    return standin.wait_for(done, timeout=timeout)


def wait_for_call(standin: SlackStandin, method: str, *, channel: str, timeout: float = 30):
    def found(s: SlackStandin):
        return [
            c
            for c in s.calls(method)
            if c.params.get("channel", c.params.get("channel_id")) == channel
        ]

    return standin.wait_for(found, timeout=timeout)


def test_help_and_unknown_words_answer_with_help(bot):
    _process, slack = bot

    for text in ("", "help", "HELP", "frobnicate the cluster"):
        reply = slack.slash(text)
        assert reply.status == 200
        data = reply.json()
        assert data["response_type"] == "ephemeral"
        assert "/clusterbook runbooks" in data["text"]


def test_run_with_parameters_posts_progress_outputs_and_the_notebook(bot, slack_standin):
    process, slack = bot
    channel = "C0RUN"

    reply = slack.slash('run 00_hello name="Zoë & <friends>" times=2 style=table', channel=channel)

    assert reply.status == 200
    assert "Queued" in reply.json()["text"]
    message = final_message(slack_standin, channel)
    assert "succeeded" in message.text
    table = next(b for b in message.blocks if b["type"] == "table")
    assert [cell["text"] for cell in table["rows"][0]] == ["n", "text"]
    assert [cell["text"] for cell in table["rows"][2]] == ["2", "Hello, Zoë & <friends>!"]
    assert message.updates >= 1

    uploads = slack_standin.wait_for(
        lambda s: [f for f in s.files() if f.channel == channel and f.content]
    )
    notebook = nbformat.reads(uploads[0].content.decode(), as_version=4)
    assert uploads[0].thread_ts == message.ts
    assert notebook.metadata["clusterbook"]["run"]["status"] == "succeeded"

    record = index_of(process).list(runbook="00_hello", limit=50)
    mine = [r for r in record if r.channel == channel]
    assert len(mine) == 1
    assert mine[0].requester == "slack:U0ALICE"
    assert mine[0].source == "slack"
    assert mine[0].params["name"] == "Zoë & <friends>"


def test_outputs_fall_back_to_text_where_table_blocks_are_refused(bot, slack_standin):
    _process, slack = bot
    slack_standin.refuse_tables.add("chat.update")
    try:
        slack.slash('run 00_hello name="x<y>" times=2 style=table', channel="C0NOTABLE")
        message = final_message(slack_standin, "C0NOTABLE")
    finally:
        slack_standin.refuse_tables.clear()

    assert "succeeded" in message.text
    assert not [b for b in message.blocks if b["type"] == "table"]
    assert "Hello, x&lt;y&gt;!" in json.dumps(message.blocks)  # escaped, never markup


def test_values_from_slack_are_data_not_code(bot, slack_standin):
    process, slack = bot
    channel = "C0DATA"
    hostile = "$(touch /tmp/pwned-by-slack); `id` {{7*7}} __import__('os').system('id')"

    reply = slack.slash(f'run 00_hello name="{hostile}"', channel=channel)

    assert reply.status == 200
    message = final_message(slack_standin, channel)
    assert "succeeded" in message.text
    record = next(r for r in index_of(process).list(limit=100) if r.channel == channel)
    assert record.params["name"] == hostile


def test_failure_posts_the_step_error_and_diagnostics_in_the_thread(bot, slack_standin):
    _process, slack = bot
    channel = "C0FAIL"

    slack.slash("run 50_fail reason=testing", channel=channel)

    message = final_message(slack_standin, channel)
    assert "failed" in message.text
    assert "Break things" in json.dumps(message.blocks)
    replies = slack_standin.wait_for(
        lambda s: [m for m in s.messages(channel) if m.thread_ts == message.ts]
    )
    assert "RuntimeError" in replies[0].text
    assert "broken testing" in replies[0].text
    assert "Break things" in replies[0].text


def test_parameter_modal_validates_fields_then_runs(bot, slack_standin):
    _process, slack = bot
    channel = "C0MODAL"

    reply = slack.slash("run 00_hello", channel=channel)

    assert reply.status == 200
    opened = slack_standin.wait_for(
        lambda s: [c for c in s.calls("views.open") if channel in json.dumps(c.params)]
    )
    view = opened[-1].params["view"]
    view = json.loads(view) if isinstance(view, str) else view
    fields = {b["block_id"]: b for b in view["blocks"] if b["type"] == "input"}
    assert set(fields) == {"name", "times", "shout", "style"}
    assert fields["times"]["element"]["type"] == "number_input"
    assert fields["times"]["element"]["max_value"] == "10"
    assert fields["style"]["element"]["type"] == "static_select"
    assert fields["name"]["element"]["initial_value"] == "world"
    assert fields["name"]["hint"]["text"] == "who to greet"

    bad = {
        "name": {"value": {"type": "plain_text_input", "value": "modal"}},
        "times": {"value": {"type": "number_input", "value": "99"}},
        "shout": {"value": {"type": "static_select", "selected_option": {"value": "maybe"}}},
        "style": {"value": {"type": "static_select", "selected_option": {"value": "table"}}},
    }
    refused = slack.submit_view(view, bad)
    assert refused.status == 200
    errors = refused.json()
    assert errors["response_action"] == "errors"
    assert set(errors["errors"]) == {"times", "shout"}
    assert "maximum 10" in errors["errors"]["times"]

    good = dict(
        bad,
        times={"value": {"type": "number_input", "value": "3"}},
        shout={"value": {"type": "static_select", "selected_option": {"value": "true"}}},
    )
    accepted = slack.submit_view(view, good)
    assert accepted.status == 200
    assert accepted.body in ("", "{}") or "errors" not in accepted.json()
    message = final_message(slack_standin, channel)
    assert "HELLO, MODAL!" in json.dumps(message.blocks)


def test_a_form_whose_runbook_went_away_says_so_in_the_modal(bot, slack_standin):
    process, slack = bot
    channel = "C0GONE"
    folder = process.state_dir / "runbooks"
    write_runbook(folder, "54_vanishing", params='who: str = "x"  # someone', steps=[])

    slack.slash("run 54_vanishing", channel=channel)
    opened = slack_standin.wait_for(
        lambda s: [c for c in s.calls("views.open") if channel in json.dumps(c.params)]
    )
    view = opened[-1].params["view"]
    view = json.loads(view) if isinstance(view, str) else view
    (folder / "54_vanishing.ipynb").unlink()

    values = {"who": {"value": {"type": "plain_text_input", "value": "y"}}}
    answer = slack.submit_view(view, values).json()

    assert answer["response_action"] == "update"
    assert "54_vanishing" in json.dumps(answer["view"])
    assert not [r for r in slack_standin.messages(channel)]


def test_forged_old_and_replayed_requests_are_refused(bot, slack_standin):
    process, slack = bot
    before = len(slack_standin.calls())
    runs_before = len(index_of(process).list(limit=1000))

    forged = slack.slash("run 00_hello name=forged", channel="C0FORGE")
    assert forged.status == 200  # a correct one first, to have something to replay
    body, headers = slack.sent[-1]

    replayed = slack.post_raw(body, headers)
    assert replayed.status == 401

    wrong_secret = slack.post(
        body, content_type=headers["Content-Type"], signature="v0=" + "0" * 64
    )
    assert wrong_secret.status == 401

    old = int(time.time()) - 6 * 60
    stale = slack.post(body, content_type=headers["Content-Type"], timestamp=old)
    assert stale.status == 401

    unsigned = slack.post_raw(body, {"Content-Type": headers["Content-Type"]})
    assert unsigned.status == 401

    other_team = slack.slash("run 00_hello name=stranger", channel="C0FORGE", team_id="T0OTHER")
    assert "Queued" not in other_team.body

    final_message(slack_standin, "C0FORGE")
    runs = [r for r in index_of(process).list(limit=1000) if r.channel == "C0FORGE"]
    assert len(runs) == 1  # only the one correct request ran
    assert len(index_of(process).list(limit=1000)) == runs_before + 1
    assert len(slack_standin.calls()) > before


@pytest.mark.parametrize(
    ("user", "channel", "text", "allowed"),
    [
        ("U0MALLORY", "C0TEST", "run 00_hello name=m", False),
        ("U0MALLORY", "C0TEST", "down demo", False),
        ("U0MALLORY", "C0TEST", "runbooks", True),
        ("U0CAROL", "C0TEST", "run 00_hello name=c", False),
        ("U0CAROL", "C0OPS", "run 51_sleep seconds=1", False),
    ],
)
def test_access_rules_refuse_with_a_clear_message(bot, user, channel, text, allowed):
    process, slack = bot
    runs_before = len(index_of(process).list(limit=1000))

    reply = slack.slash(text, user=user, channel=channel)

    assert reply.status == 200
    data = reply.json()
    assert data["response_type"] == "ephemeral"
    if allowed:
        assert "not allowed" not in data["text"]
    else:
        assert "not allowed" in data["text"]
    time.sleep(0.3)
    assert len(index_of(process).list(limit=1000)) == runs_before


def test_user_group_member_may_run_from_the_allowed_channel(bot, slack_standin):
    _process, slack = bot

    reply = slack.slash("run 00_hello name=carol", user="U0CAROL", channel="C0OPS")

    assert "Queued" in reply.json()["text"]
    message = final_message(slack_standin, "C0OPS")
    assert "succeeded" in message.text


def confirm_value(reply) -> tuple[str, list[dict]]:
    blocks = reply.json()["blocks"]
    actions = next(b for b in blocks if b["type"] == "actions")
    return actions["elements"][0]["value"], actions["elements"]


def test_down_needs_confirmation_and_a_second_approver(bot, slack_standin):
    process, slack = bot
    channel = "C0DOWN"

    reply = slack.slash("down demo", channel=channel)
    pending, buttons = confirm_value(reply)
    assert [b["action_id"] for b in buttons] == ["clusterbook_confirm", "clusterbook_abort"]
    assert not [r for r in index_of(process).list(limit=1000) if r.channel == channel]

    slack.click(
        "clusterbook_confirm", pending, user="U0BOB", channel=channel, response_name="bob-confirm"
    )
    answer = slack_standin.wait_for(
        lambda s: [r for r in s.responses() if "Only the person" in r.get("text", "")]
    )
    assert answer[0]["replace_original"] is False

    slack.click("clusterbook_confirm", pending, user="U0ALICE", channel=channel)
    posted = slack_standin.wait_for(
        lambda s: [m for m in s.messages(channel) if "clusterbook_approve" in json.dumps(m.blocks)]
    )
    approve_value = next(
        e for b in posted[0].blocks if b["type"] == "actions" for e in b["elements"]
    )["value"]
    assert approve_value == pending

    slack.click("clusterbook_approve", pending, user="U0ALICE", channel=channel)
    slack_standin.wait_for(
        lambda s: [r for r in s.responses() if "cannot approve your own" in r.get("text", "")]
    )
    slack.click("clusterbook_approve", pending, user="U0MALLORY", channel=channel)
    slack_standin.wait_for(
        lambda s: [r for r in s.responses() if "not allowed to `approve`" in r.get("text", "")]
    )
    assert not [r for r in index_of(process).list(limit=1000) if r.channel == channel]

    slack.click("clusterbook_approve", pending, user="U0BOB", channel=channel)
    message = final_message(slack_standin, channel)
    assert "succeeded" in message.text
    record = [r for r in index_of(process).list(limit=1000) if r.channel == channel]
    assert len(record) == 1
    assert record[0].runbook == "99_teardown"
    assert record[0].requester == "slack:U0ALICE"
    assert record[0].approved_by == "slack:U0BOB"
    assert record[0].params == {"cluster": "demo"}

    slack.click("clusterbook_approve", pending, user="U0BOB", channel=channel, response_name="late")
    slack_standin.wait_for(lambda s: [r for r in s.responses() if "expired" in r.get("text", "")])
    assert len([r for r in index_of(process).list(limit=1000) if r.channel == channel]) == 1


def test_aborted_destructive_request_runs_nothing(bot, slack_standin):
    process, slack = bot
    channel = "C0ABORT"

    pending, _ = confirm_value(slack.slash("run 99_teardown cluster=keep", channel=channel))
    slack.click("clusterbook_abort", pending, user="U0ALICE", channel=channel)
    slack_standin.wait_for(
        lambda s: [r for r in s.responses() if "Cancelled: run 99_teardown" in r.get("text", "")]
    )
    slack.click("clusterbook_confirm", pending, user="U0ALICE", channel=channel)
    slack_standin.wait_for(lambda s: [r for r in s.responses() if "expired" in r.get("text", "")])
    time.sleep(0.3)
    assert not [r for r in index_of(process).list(limit=1000) if r.channel == channel]


def _wait_until_running(process, standin, channel: str) -> list:
    """The runs of ``channel`` that are running, once there is one."""
    return standin.wait_for(
        lambda s: [
            r
            for r in index_of(process).list(limit=1000)
            if r.channel == channel and r.status == "running"
        ],
        timeout=30,
    )


def test_cancel_stops_a_running_run(bot, slack_standin):
    process, slack = bot
    channel = "C0CANCEL"

    slack.slash("run 51_sleep seconds=120", channel=channel)
    running = _wait_until_running(process, slack_standin, channel)
    run_id = running[0].run_id

    live = slack_standin.wait_for(
        lambda s: [m for m in s.messages(channel) if "step 1/2: Sleep" in json.dumps(m.blocks)]
    )
    assert "0/2 steps done" in json.dumps(live[0].blocks)

    refused = slack.slash(f"cancel {run_id}", user="U0MALLORY")
    assert "not allowed" in refused.json()["text"]
    reply = slack.slash(f"cancel {run_id}")
    assert "Cancelling" in reply.json()["text"]

    message = final_message(slack_standin, channel, timeout=60)
    assert "cancelled" in message.text
    assert index_of(process).get(run_id).status == "cancelled"


def test_people_may_cancel_their_own_runs_without_the_cancel_right(bot, slack_standin):
    process, slack = bot
    channel = "C0OWNCANCEL"

    slack.slash("run 51_sleep seconds=120", user="U0DAVE", channel=channel)
    running = _wait_until_running(process, slack_standin, channel)
    run_id = running[0].run_id
    assert running[0].requester == "slack:U0DAVE"

    refused = slack.slash(f"cancel {run_id}", user="U0MALLORY")
    assert "not allowed" in refused.json()["text"]
    unknown = slack.slash("cancel 20990101-000000-000000", user="U0DAVE")
    assert "no run with id" in unknown.json()["text"]
    reply = slack.slash(f"cancel {run_id}", user="U0DAVE")
    assert "Cancelling" in reply.json()["text"]

    message = final_message(slack_standin, channel, timeout=60)
    assert "cancelled" in message.text
    assert index_of(process).get(run_id).status == "cancelled"


def test_status_runs_and_show_read_the_run_index(bot, slack_standin):
    process, slack = bot
    slack.slash("run 99_teardown cluster=zeta", channel="C0SHOW")  # asks to confirm only

    slack.slash("run 00_hello name=show", channel="C0SHOW")
    final_message(slack_standin, "C0SHOW")
    run_id = next(r for r in index_of(process).list(limit=1000) if r.channel == "C0SHOW").run_id

    shown = slack.slash(f"show {run_id}")
    assert run_id in shown.text and "00_hello" in shown.text and "succeeded" in shown.text
    listed = slack.slash("runs")
    assert run_id in listed.json()["text"]
    status = slack.slash("status nosuchcluster")
    assert "No run has touched" in status.json()["text"]
    missing = slack.slash("show 20990101-000000-abcdef")
    assert "no run with id" in missing.json()["text"]


def test_credentials_never_reach_runbooks_or_messages(bot, slack_standin):
    from fixtures.slack import BOT_TOKEN, SIGNING_SECRET

    process, slack = bot
    channel = "C0SECRET"

    slack.slash("run 52_environment variable=SLACK_BOT_TOKEN_FILE", channel=channel)
    slack.slash(f"run 00_hello name={BOT_TOKEN}", channel=channel)

    messages = slack_standin.wait_for(
        lambda s: (
            [m for m in s.messages(channel) if m.text.endswith("succeeded")]
            if len([m for m in s.messages(channel) if m.text.endswith("succeeded")]) == 2
            else None
        ),
        timeout=90,
    )
    uploads = slack_standin.wait_for(
        lambda s: (
            [f for f in s.files() if f.channel == channel and f.content]
            if len([f for f in s.files() if f.channel == channel and f.content]) == 2
            else None
        )
    )
    seen = json.dumps([m.blocks for m in messages])
    assert "SLACK_API_URL" in seen  # the kernel sees the plain settings ...
    for name in ("SLACK_BOT_TOKEN", "SLACK_SIGNING_SECRET"):  # ... but no credential, nor file
        assert name not in seen
    everything = json.dumps([c.params for c in slack_standin.calls()], ensure_ascii=False)
    everything += "".join(f.content.decode() for f in uploads)
    for secret in (BOT_TOKEN, SIGNING_SECRET):
        assert secret not in everything
    assert "REDACTED" in seen
    assert "Traceback" not in process.log_text()


def test_channel_the_bot_cannot_post_in_queues_nothing_and_says_why(bot, slack_standin):
    process, slack = bot
    runs_before = len(index_of(process).list(limit=1000))

    reply = slack.slash("run 00_hello name=nowhere", channel="")

    assert reply.status == 200
    told = slack_standin.wait_for(
        lambda s: [r for r in s.responses() if "cannot post" in r.get("text", "")]
    )
    assert "channel_not_found" in told[0]["text"]
    assert told[0]["response_type"] == "ephemeral"
    time.sleep(0.3)
    assert len(index_of(process).list(limit=1000)) == runs_before


def test_a_cluster_being_changed_refuses_a_second_change(bot, slack_standin):
    process, slack = bot
    first = slack.slash("run 53_cluster_sleep cluster=busy seconds=60", channel="C0BUSY")
    assert "Queued" in first.json()["text"]
    running = slack_standin.wait_for(
        lambda s: [r for r in index_of(process).list(cluster="busy") if r.status == "running"]
    )

    second = slack.slash("run 53_cluster_sleep cluster=busy seconds=1", channel="C0BUSY2")
    other = slack.slash("run 53_cluster_sleep cluster=idle seconds=0", channel="C0IDLE")

    assert "being changed by run" in second.json()["text"]
    assert running[0].run_id in second.json()["text"]
    assert "Queued" in other.json()["text"]
    slack.slash(f"cancel {running[0].run_id}")
    assert "cancelled" in final_message(slack_standin, "C0BUSY").text
    assert "succeeded" in final_message(slack_standin, "C0IDLE").text


def test_up_runs_the_pipeline_in_order_and_stops_at_the_first_failure(bot, slack_standin):
    process, slack = bot
    channel = "C0PIPE"

    unknown = slack.slash("up pipe nosuch=1", channel=channel)
    assert "no runbook of `up` takes 'nosuch'" in unknown.json()["text"]

    reply = slack.slash("up pipe reason=pipeline seconds=0", channel=channel)
    assert "`50_fail`, `51_sleep`" in reply.json()["text"]

    message = final_message(slack_standin, channel)
    assert message.text == "up pipe: failed"
    assert "50_fail: Break things" in json.dumps(message.blocks)
    runs = [r for r in index_of(process).list(limit=1000) if r.channel == channel]
    assert [r.runbook for r in runs] == ["50_fail"]  # later runbooks never started
    assert runs[0].params == {"reason": "pipeline"}


def test_oversized_requests_are_refused_before_they_are_read(bot):
    process, slack = bot
    body = b"payload=" + b"x" * (2 * 1024 * 1024)

    reply = slack.post(body, content_type="application/x-www-form-urlencoded")

    assert reply.status == 413

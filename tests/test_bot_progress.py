"""Live progress within Slack's limits, and what a bot restart does to runs in flight."""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path
from typing import Any

from slack_sdk import WebClient

from clusterbook.archive.index import RunIndex
from clusterbook_bot.progress import ChannelWriter
from clusterbook_bot.standin import SlackStandin
from fixtures.slack import BOT_TOKEN, make_test_runbooks, start_bot


def wait_until_gone(pid: int | None, timeout: float = 20) -> None:
    """A killed process stays visible until its parent (here: init) reaps it."""
    deadline = time.monotonic() + timeout
    while pid and Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)


def writer_for(standin: SlackStandin, interval_s: float = 1.0) -> tuple[ChannelWriter, WebClient]:
    client = WebClient(token=standin.bot_token, base_url=standin.api_url)
    writer = ChannelWriter(client, interval_s=interval_s)
    writer.start()
    return writer, client


def test_updates_are_coalesced_to_one_per_second_per_channel():
    with SlackStandin() as standin:
        writer, client = writer_for(standin)
        posted = writer.send("C1", lambda: client.chat_postMessage(channel="C1", text="start"))
        started = time.monotonic()

        for step in range(30):
            writer.update("C1", posted["ts"], text=f"step {step}", blocks=[])
            time.sleep(0.05)
        standin.wait_for(lambda s: s.messages("C1")[0].text == "step 29", timeout=10)
        elapsed = time.monotonic() - started
        writer.stop()

        updates = standin.calls("chat.update")
        assert len(updates) <= elapsed / 1.0 + 1
        assert len(updates) < 30
        gaps = [b.at - a.at for a, b in itertools.pairwise(updates)]
        assert all(gap >= 0.95 for gap in gaps), gaps


def test_rate_limited_update_waits_for_retry_after_and_then_lands():
    with SlackStandin() as standin:
        writer, client = writer_for(standin, interval_s=0.1)
        posted = client.chat_postMessage(channel="C2", text="start")
        standin.rate_limit("chat.update", times=1, retry_after=2)

        writer.update("C2", posted["ts"], text="first", blocks=[])
        standin.wait_for(lambda s: s.calls("chat.update"), timeout=5)
        writer.update("C2", posted["ts"], text="second", blocks=[])
        standin.wait_for(lambda s: s.messages("C2")[0].text == "second", timeout=10)
        writer.stop()

        calls = standin.calls("chat.update")
        assert [c.status for c in calls] == [429, 200]
        assert calls[1].at - calls[0].at >= 1.9


def test_send_retries_after_429():
    with SlackStandin() as standin:
        writer, client = writer_for(standin, interval_s=0.1)
        standin.rate_limit("chat.postMessage", times=2, retry_after=1)

        started = time.monotonic()
        response = writer.send("C3", lambda: client.chat_postMessage(channel="C3", text="hi"))
        writer.stop()

        assert response["ok"]
        assert time.monotonic() - started >= 1.9
        assert [c.status for c in standin.calls("chat.postMessage")] == [429, 429, 200]


def test_bot_run_never_trips_the_per_channel_limit(tmp_path):
    with SlackStandin(bot_token=BOT_TOKEN, channel_interval_s=1.0) as standin:
        runbooks = make_test_runbooks(tmp_path / "runbooks")
        bot = start_bot(standin=standin, state_dir=tmp_path / "state", runbooks_dir=runbooks)
        try:
            from fixtures.slack import SlackClientSim

            slack = SlackClientSim(bot.url + "/slack/events", standin)
            slack.slash("run 51_sleep seconds=0", channel="C0LIMIT")
            slack.slash("run 00_hello name=limit", channel="C0LIMIT")
            standin.wait_for(
                lambda s: len([f for f in s.files() if f.channel == "C0LIMIT" and f.content]) == 2,
                timeout=90,
            )
        finally:
            bot.stop()

        writes = [c for c in standin.calls() if c.params.get("channel") == "C0LIMIT"]
        assert len(writes) >= 4
        assert all(c.status == 200 for c in writes), [(c.method, c.status) for c in writes]
        finals = [m.text for m in standin.messages("C0LIMIT") if m.thread_ts is None]
        assert sorted(finals) == ["00_hello: succeeded", "51_sleep: succeeded"]


def test_the_bot_obeys_retry_after_and_its_messages_still_land(tmp_path):
    """Slack answers the bot's first post and first updates with 429: the bot waits as long
    as Retry-After says, then its run message, progress and result all arrive."""
    from fixtures.slack import SlackClientSim

    with SlackStandin(bot_token=BOT_TOKEN) as standin:
        runbooks = make_test_runbooks(tmp_path / "runbooks")
        bot = start_bot(standin=standin, state_dir=tmp_path / "state", runbooks_dir=runbooks)
        try:
            standin.rate_limit("chat.postMessage", times=1, retry_after=2)
            standin.rate_limit("chat.update", times=2, retry_after=1)
            slack = SlackClientSim(bot.url + "/slack/events", standin)
            reply = slack.slash("run 00_hello name=limited", channel="C0429")
            assert reply.status == 200
            standin.wait_for(
                lambda s: [m for m in s.messages("C0429") if m.text == "00_hello: succeeded"],
                timeout=60,
            )
        finally:
            bot.stop()

        posts = [c for c in standin.calls("chat.postMessage") if c.params["channel"] == "C0429"]
        assert [c.status for c in posts][:2] == [429, 200]
        assert posts[1].at - posts[0].at >= 1.9
        updates = [c for c in standin.calls("chat.update") if c.params["channel"] == "C0429"]
        assert [c.status for c in updates][:3] == [429, 429, 200]
        assert updates[1].at - updates[0].at >= 0.9 and updates[2].at - updates[1].at >= 0.9


def test_a_modal_opens_while_a_run_waits_for_its_turn_at_slack(tmp_path):
    """A form's trigger lives 3 s: opening it must not wait behind a run's first post, held
    up here by Slack's Retry-After."""
    from fixtures.slack import SlackClientSim

    with SlackStandin(bot_token=BOT_TOKEN) as standin:
        runbooks = make_test_runbooks(tmp_path / "runbooks")
        bot = start_bot(standin=standin, state_dir=tmp_path / "state", runbooks_dir=runbooks)
        try:
            standin.rate_limit("chat.postMessage", times=1, retry_after=4)
            slack = SlackClientSim(bot.url + "/slack/events", standin)
            slack.slash("run 00_hello name=first", channel="C0BUSY")
            standin.wait_for(lambda s: s.calls("chat.postMessage"), timeout=10)
            slack.slash("run 00_hello", channel="C0FORM")
            opened = standin.wait_for(lambda s: s.calls("views.open"), timeout=10)
            posted = standin.wait_for(
                lambda s: [c for c in s.calls("chat.postMessage") if c.status == 200],
                timeout=20,
            )
        finally:
            bot.stop()

        assert opened[0].at < posted[0].at


def _one_worker_bot_files(tmp_path: Path) -> tuple[Path, Path, dict[str, str]]:
    """Runbooks, state folder and environment of a bot with one run worker."""
    runbooks = make_test_runbooks(tmp_path / "runbooks")
    return runbooks, tmp_path / "state", {"CLUSTERBOOK_BOT_WORKERS": "1"}


def _one_running_one_queued(
    standin: SlackStandin, runbooks: Path, state: Path, env: dict[str, str]
) -> tuple[Any, RunIndex]:
    """A bot with one worker, busy with a long run (channel C0LONG) while a second one
    (C0NEXT) waits for it."""
    from fixtures.slack import SlackClientSim

    bot = start_bot(standin=standin, state_dir=state, runbooks_dir=runbooks, extra_env=env)
    index = RunIndex(state / "runs.sqlite3")
    try:
        slack = SlackClientSim(bot.url + "/slack/events", standin)
        slack.slash("run 51_sleep seconds=300", channel="C0LONG")
        standin.wait_for(lambda s: [r for r in index.list() if r.status == "running"], timeout=30)
        slack.slash("run 00_hello name=after", channel="C0NEXT")
        standin.wait_for(lambda s: [r for r in index.list() if r.status == "queued"], timeout=30)
    except BaseException:
        bot.kill()
        raise
    return bot, index


def test_restart_marks_running_runs_interrupted_and_resumes_queued_ones(tmp_path):
    with SlackStandin(bot_token=BOT_TOKEN) as standin:
        runbooks, state, env = _one_worker_bot_files(tmp_path)
        bot, index = _one_running_one_queued(standin, runbooks, state, env)
        bot.kill()

        long_run = next(r for r in index.list() if r.channel == "C0LONG")
        next_run = next(r for r in index.list() if r.channel == "C0NEXT")
        assert (long_run.status, next_run.status) == ("running", "queued")
        wait_until_gone(long_run.pid)

        again = start_bot(standin=standin, state_dir=state, runbooks_dir=runbooks, extra_env=env)
        try:
            standin.wait_for(lambda s: index.get(next_run.run_id).status == "succeeded", timeout=90)
            notice = standin.wait_for(
                lambda s: [
                    m for m in s.messages("C0LONG") if "interrupted by a bot restart" in m.text
                ]
            )
        finally:
            again.stop()

        interrupted = index.get(long_run.run_id)
        assert interrupted.status == "interrupted"
        assert interrupted.notebook_url
        assert long_run.run_id in notice[0].text
        resumed = [m for m in standin.messages("C0NEXT") if "resumed" in json.dumps(m.blocks)]
        assert resumed and "succeeded" in resumed[-1].text
        assert index.get(next_run.run_id).requester == "slack:U0ALICE"


def test_sigterm_seals_the_running_run_and_keeps_the_queued_one(tmp_path):
    """A graceful stop (what systemd and Kubernetes send) ends the running run "interrupted"
    with its notebook archived and its message final; the queued run stays queued, says so,
    and the next start runs it."""
    with SlackStandin(bot_token=BOT_TOKEN) as standin:
        runbooks, state, env = _one_worker_bot_files(tmp_path)
        bot, index = _one_running_one_queued(standin, runbooks, state, env)
        try:
            started = time.monotonic()
            bot.process.terminate()
            exit_status = bot.process.wait(timeout=40)
            stop_s = time.monotonic() - started
        finally:
            bot.kill()

        assert exit_status == 0, bot.log_text()
        assert stop_s < 20, f"the stop took {stop_s:.1f} s"
        long_run = next(r for r in index.list() if r.channel == "C0LONG")
        next_run = next(r for r in index.list() if r.channel == "C0NEXT")
        assert long_run.status == "interrupted"
        assert "shut down" in (long_run.error_summary or "")
        assert long_run.notebook_url and Path(long_run.notebook_url).is_file()
        assert next_run.status == "queued"
        long_messages = [m for m in standin.messages("C0LONG") if m.thread_ts is None]
        assert [m.text for m in long_messages] == ["51_sleep: interrupted"]
        next_messages = [m for m in standin.messages("C0NEXT") if m.thread_ts is None]
        assert len(next_messages) == 1
        assert "stays queued" in json.dumps(next_messages[0].blocks)
        assert next_run.run_id in json.dumps(next_messages[0].blocks)

        again = start_bot(standin=standin, state_dir=state, runbooks_dir=runbooks, extra_env=env)
        try:
            standin.wait_for(lambda s: index.get(next_run.run_id).status == "succeeded", timeout=90)
        finally:
            again.stop()
        # Sealed at the stop: the next start finds nothing of it to recover or announce.
        assert not [m for m in standin.messages("C0LONG") if "bot restart" in m.text]

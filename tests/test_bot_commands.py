"""Command text from Slack: a corpus of malformed and hostile commands, and the parser itself.

Every command of the corpus goes to a real bot over signed HTTP; each must get a clear
ephemeral answer, start no run and leave the bot serving.
"""

from __future__ import annotations

import time
import urllib.request

import pytest

from clusterbook.archive.index import RunIndex
from clusterbook_bot.commands import Command, CommandError, parse_command

HOSTILE = [
    # quoting
    'run 00_hello name="unterminated',
    "run 00_hello name='unterminated",
    'run "00_hello',
    "run 00_hello name=\\",
    '"""',
    "''",
    # unknown things
    "deploy everything",
    "rm -rf /",
    "run nosuchrunbook",
    "run nosuchrunbook name=x",
    "params nosuchrunbook",
    "run 00_hello nosuchparam=1",
    "run 00_hello name=a name=b",
    "run 00_hello =value",
    "run 00_hello justaword",
    "run",
    "params",
    "show",
    "cancel",
    "down",
    "status",
    "up",
    "up demo nosuchparam=1",
    "show 20990101-000000-000000",
    "cancel 20990101-000000-000000",
    "help me please now",
    "runbooks extra words",
    # wrong types and ranges
    "run 00_hello times=abc",
    "run 00_hello times=1.5",
    "run 00_hello times=0",
    "run 00_hello times=11",
    "run 00_hello times=-1",
    "run 00_hello times=99999999999999999999999",
    "run 00_hello shout=maybe",
    "run 00_hello style=fancy",
    "run 00_hello style=",
    "run 51_sleep seconds=1e9",
    "run 51_sleep seconds=601",
    # injection attempts in names and ids
    "run 00_hello;id",
    "run ../../etc/passwd",
    "run /etc/passwd",
    "params ../00_hello",
    "run `id`",
    "run $(id)",
    "show '; DROP TABLE runs; --",
    "show 1' OR '1'='1",
    "cancel $(reboot)",
    "status ../../root",
    "status Demo_Cluster!",
    "down ../demo",
    "down demo; rm -rf /",
    "up UPPER",
    "run 00_hello __import__('os').system('id')=1",
    "run 00_hello {{7*7}}=1",
    "run 00_hello name=x times=__import__('os').getpid()",
    "run 00_hello times=os.system('id')",
    "<@U0BOB> run 00_hello",
    "run <!channel>",
    "&lt;script&gt;alert(1)&lt;/script&gt;",
    # unicode and control characters
    "rün 00_hello",
    "run 00_hëllo",
    "ＲＵＮ 00_hello",
    "run\u200b 00_hello",
    "run 00_hello\u0000name=x",
    "run 00_hello name=x\u0007",
    "\u202erun 00_hello",
    "run 00_hello times=three",
    "🚀🚀🚀",
    "status 🚀",
    # size
    "x" * 5000,
    "run 00_hello name=" + "a" * 3990,
    "run 00_hello " + " ".join(f"p{i}=1" for i in range(80)),
    "show " + "a" * 200,
]


def test_corpus_is_big_enough():
    assert len(HOSTILE) >= 50
    assert len(set(HOSTILE)) == len(HOSTILE)


def test_hostile_commands_get_a_clear_answer_and_start_nothing(bot, slack_standin):
    process, slack = bot
    index = RunIndex(process.state_dir / "runs.sqlite3")
    runs_before = len(index.list(limit=1000))

    for number, text in enumerate(HOSTILE):
        channel = f"C0HOSTILE{number}"
        reply = slack.slash(text, channel=channel)

        assert reply.status == 200, text
        data = reply.json()
        assert data["response_type"] == "ephemeral", text
        assert data["text"].strip(), text
        assert "Traceback" not in reply.body and "Something went wrong" not in reply.body, text
        assert (
            ":warning:" in data["text"]
            or ":thinking_face:" in data["text"]
            or "not allowed" in data["text"]
            or "No run" in data["text"]
        ), (text, data["text"])

    time.sleep(1.0)
    assert len(index.list(limit=1000)) == runs_before
    assert not [
        c
        for c in slack_standin.calls("chat.postMessage")
        if str(c.params.get("channel", "")).startswith("C0HOSTILE")
    ]
    assert not slack_standin.calls("views.open")
    with urllib.request.urlopen(process.url + "/healthz", timeout=5) as response:
        assert response.status == 200
    assert "Traceback" not in process.log_text()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", Command("help")),
        ("RUN 00_hello", Command("run", "00_hello")),
        (
            'run 00_hello name="two words" times=2',
            Command("run", "00_hello", {"name": "two words", "times": "2"}),
        ),
        (
            "run 00_hello name=\u201ccurly quotes\u201d",
            Command("run", "00_hello", {"name": "curly quotes"}),
        ),
        ("run 00_hello name=a&amp;b&lt;c&gt;", Command("run", "00_hello", {"name": "a&b<c>"})),
        ("run 00_hello name=Zoë", Command("run", "00_hello", {"name": "Zoë"})),
        ("up demo workers=3", Command("up", "demo", {"workers": "3"})),
        ("runs", Command("runs")),
        ("runs demo", Command("runs", "demo")),
        ("down demo", Command("down", "demo")),
    ],
)
def test_parse_command(text, expected):
    assert parse_command(text) == expected


@pytest.mark.parametrize("text", ["down Demo", "run a b", "show", "x" * 4001, "run 'a"])
def test_parse_command_refuses(text):
    with pytest.raises(CommandError):
        parse_command(text)

"""Reading the text of a slash command into a ``Command``; nothing here runs anything.

The text is data from Slack: it is unescaped (Slack sends ``&amp; &lt; &gt;``), smart quotes
are made plain, and it is split like a shell would (``shlex``, so ``msg="two words"`` works),
but never evaluated. Names are checked against strict patterns here; parameter values stay
text until the library's parameter parser converts them against the runbook's declared types.
"""

from __future__ import annotations

import re
import shlex
import unicodedata
from dataclasses import dataclass, field

from clusterbook.errors import UserInputError

MAX_TEXT = 4000
MAX_WORDS = 64
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
CLUSTER = re.compile(r"^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$")
RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,79}$")
PARAM_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")

_QUOTES = str.maketrans({"\u201c": '"', "\u201d": '"', "\u2018": "'", "\u2019": "'"})

#: action -> (what the first argument is, whether k=v parameters may follow)
ACTIONS: dict[str, tuple[str | None, bool]] = {
    "help": (None, False),
    "runbooks": (None, False),
    "params": ("runbook", False),
    "run": ("runbook", True),
    "up": ("cluster", True),
    "down": ("cluster", False),
    "status": ("cluster", False),
    "runs": ("cluster?", False),
    "show": ("run", False),
    "cancel": ("run", False),
}


class CommandError(UserInputError):
    """The command text cannot be understood; the message says why, the bot adds help."""

    def __init__(self, message: str, *, show_help: bool = False) -> None:
        super().__init__(message)
        self.show_help = show_help


@dataclass(frozen=True)
class Command:
    action: str
    target: str | None = None
    params: dict[str, str] = field(default_factory=dict)


def parse_command(text: str) -> Command:
    """The command in ``text``, or a ``CommandError`` whose message can be shown as is."""
    if len(text) > MAX_TEXT:
        raise CommandError(f"that command is {len(text)} characters long; the limit is {MAX_TEXT}")
    words = split_words(text)
    if not words:
        return Command("help")

    action = words[0].lower()
    if action not in ACTIONS:
        raise CommandError(f"I don't know the command {shorten(words[0])!r}.", show_help=True)
    kind, takes_params = ACTIONS[action]
    rest = words[1:]

    target = None
    if kind is not None:
        optional = kind.endswith("?")
        kind = kind.rstrip("?")
        if not rest or "=" in rest[0]:
            if not optional:
                raise CommandError(f"`{action}` needs a {kind} name: `{action} {kind.upper()}`")
        else:
            target = check_name(rest[0], kind=kind)
            rest = rest[1:]

    if not takes_params and rest:
        raise CommandError(f"`{action}` takes no further words, but got {shorten(rest[0])!r}")
    return Command(action, target, split_params(rest) if takes_params else {})


def split_words(text: str) -> list[str]:
    text = text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
    text = unicodedata.normalize("NFC", text.translate(_QUOTES))
    if any(unicodedata.category(ch) == "Cc" and ch not in "\t\n\r" for ch in text):
        raise CommandError("the command contains control characters; please retype it")
    try:
        words = shlex.split(text, comments=False, posix=True)
    except ValueError as exc:
        raise CommandError(f"I could not read the quoting in that command ({exc}).") from None
    if len(words) > MAX_WORDS:
        raise CommandError(f"that command has {len(words)} words; the limit is {MAX_WORDS}")
    return words


def check_name(word: str, *, kind: str) -> str:
    pattern = {"cluster": CLUSTER, "run": RUN_ID}.get(kind, NAME)
    if not pattern.match(word):
        rules = {
            "cluster": "lower-case letters, digits and '-', at most 40",
            "run": "letters, digits and . _ : -",
        }.get(kind, "letters, digits and . _ -")
        raise CommandError(f"{shorten(word)!r} is not a valid {kind} name ({rules})")
    return word


def split_params(words: list[str]) -> dict[str, str]:
    params: dict[str, str] = {}
    for word in words:
        key, sep, value = word.partition("=")
        if not sep:
            raise CommandError(f"{shorten(word)!r} is not a parameter; write name=value")
        if not PARAM_KEY.match(key):
            raise CommandError(f"{shorten(key)!r} is not a valid parameter name")
        if key in params:
            raise CommandError(f"parameter {key!r} is given twice")
        params[key] = value
    return params


def shorten(text: str, limit: int = 40) -> str:
    """A word quoted back to the user, cut short and stripped of Slack markup characters."""
    clean = "".join(ch for ch in text if ch not in "<>&`*_~|" and ch.isprintable())
    return clean if len(clean) <= limit else clean[: limit - 1] + "…"

"""The bot's own settings: Slack credentials, command name, access file, worker pool.

Built once at start-up from the environment (``BotConfig.from_environ``) and passed down.
Credentials come only from environment variables or from secret files (a Kubernetes Secret
mounted as files, systemd's ``LoadCredential=``): for each of them, ``NAME_FILE`` names a
file holding the value and wins over ``NAME``. They are never taken from the command line
(visible in ``ps``) or a config file in the repository.

    SLACK_BOT_TOKEN / SLACK_BOT_TOKEN_FILE            xoxb-…, the bot's Web API token
    SLACK_SIGNING_SECRET / SLACK_SIGNING_SECRET_FILE  verifies HTTP requests (HTTP mode)
    SLACK_APP_TOKEN / SLACK_APP_TOKEN_FILE            xapp-…, Socket Mode only
    SLACK_API_URL                 Web API base URL (the local stand-in); Slack's by default
    CLUSTERBOOK_BOT_COMMAND       slash command name, default /clusterbook
    CLUSTERBOOK_BOT_ACCESS        YAML access file (who may run what); see access.py
    CLUSTERBOOK_BOT_WORKERS       runs executed at the same time, default 2
"""

from __future__ import annotations

import os
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path

from clusterbook.errors import ConfigError

DEFAULT_COMMAND = "/clusterbook"
CREDENTIAL_VARIABLES = ("SLACK_BOT_TOKEN", "SLACK_SIGNING_SECRET", "SLACK_APP_TOKEN")
MAX_WORKERS = 16


class Secret:
    """A credential that never shows itself in a repr, a log line or a traceback."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __repr__(self) -> str:
        return "Secret('***')" if self._value else "Secret('')"

    __str__ = __repr__


@dataclass(frozen=True)
class BotConfig:
    """Everything the bot needs besides the library's ``Settings``."""

    bot_token: Secret = field(default_factory=lambda: Secret(""))
    signing_secret: Secret = field(default_factory=lambda: Secret(""))
    app_token: Secret = field(default_factory=lambda: Secret(""))
    api_url: str | None = None
    command: str = DEFAULT_COMMAND
    access_file: Path | None = None
    workers: int = 2

    def check(self, *, http: bool, socket_mode: bool = False) -> None:
        """Refuse to start without the credentials the chosen transport needs."""
        if not self.bot_token:
            raise ConfigError("no Slack bot token: set SLACK_BOT_TOKEN or SLACK_BOT_TOKEN_FILE")
        if http and not self.signing_secret:
            raise ConfigError(
                "no signing secret: set SLACK_SIGNING_SECRET or SLACK_SIGNING_SECRET_FILE "
                "(without it requests cannot be verified, so the bot refuses to serve HTTP)"
            )
        if socket_mode and not self.app_token:
            raise ConfigError(
                "Socket Mode needs the app-level token: set SLACK_APP_TOKEN or "
                "SLACK_APP_TOKEN_FILE (an xapp- token with the connections:write scope)"
            )

    def secrets(self) -> list[str]:
        """The literal credential values, for the redactor."""
        return [s.reveal() for s in (self.bot_token, self.signing_secret, self.app_token) if s]

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> BotConfig:
        environ = os.environ if environ is None else environ

        command = environ.get("CLUSTERBOOK_BOT_COMMAND", "").strip() or DEFAULT_COMMAND
        if not command.startswith("/") or len(command) < 2 or " " in command:
            raise ConfigError(f"CLUSTERBOOK_BOT_COMMAND must look like /name, not {command!r}")

        workers_text = environ.get("CLUSTERBOOK_BOT_WORKERS", "").strip() or "2"
        if not workers_text.isdigit() or not 1 <= int(workers_text) <= MAX_WORKERS:
            raise ConfigError(
                f"CLUSTERBOOK_BOT_WORKERS must be a whole number from 1 to {MAX_WORKERS}, "
                f"not {workers_text!r}"
            )

        access = environ.get("CLUSTERBOOK_BOT_ACCESS", "").strip()
        access_file = Path(access).expanduser() if access else None
        if access_file is not None and not access_file.is_file():
            raise ConfigError(
                f"access file {access_file} (from CLUSTERBOOK_BOT_ACCESS) does not exist",
                hint="see deploy/access.example.yaml",
            )

        return cls(
            bot_token=read_secret("SLACK_BOT_TOKEN", environ),
            signing_secret=read_secret("SLACK_SIGNING_SECRET", environ),
            app_token=read_secret("SLACK_APP_TOKEN", environ),
            api_url=environ.get("SLACK_API_URL", "").strip() or None,
            command=command,
            access_file=access_file,
            workers=int(workers_text),
        )


def scrub_credentials(environ: MutableMapping[str, str]) -> None:
    """Remove the credential variables once read, so runbook kernels (which inherit the
    bot's environment) never see the values or where the files are."""
    for name in CREDENTIAL_VARIABLES:
        environ.pop(name, None)
        environ.pop(name + "_FILE", None)


def read_secret(name: str, environ: Mapping[str, str]) -> Secret:
    """``NAME_FILE`` (a path) wins over ``NAME`` (the value); surrounding blanks are dropped."""
    path = environ.get(name + "_FILE", "").strip()
    if path:
        try:
            return Secret(Path(path).read_text().strip())
        except OSError as exc:
            raise ConfigError(f"cannot read {name}_FILE ({path}): {exc.strerror}") from exc
    return Secret(environ.get(name, "").strip())

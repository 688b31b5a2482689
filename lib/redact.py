"""Redaction: secrets are replaced by a visible marker before anything is shown or kept.

Applied to recorded outputs, tracebacks, parameters, logs and whole executed notebooks before
they are archived, printed or posted. Two kinds of rule:

- patterns for secrets that look like themselves wherever they appear: kubeadm bootstrap
  tokens and certificate keys, PEM private keys, AWS access key ids and secret keys, Slack
  tokens, kubeconfig client keys and bearer tokens;
- literal values known to be secret at run time: parameters declared ``(secret)`` and the
  credentials in the process environment.

The marker names the kind, e.g. ``[REDACTED:bootstrap-token]``, so a reader knows something was
there and what it was, without seeing it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from typing import Any

MARKER = "[REDACTED:{kind}]"
_MARKER_RE = re.compile(r"\[REDACTED:[a-z0-9-]+\]")

#: Environment variables whose values are credentials wherever they show up.
SECRET_ENV_VARS = (
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_ACCESS_KEY_ID",
    "SLACK_BOT_TOKEN",
    "SLACK_APP_TOKEN",
    "SLACK_SIGNING_SECRET",
)

_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")

# (kind, pattern, group to replace: 0 = whole match)
_PATTERNS: list[tuple[str, re.Pattern[str], int]] = [
    (
        "private-key",
        re.compile(
            r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----.*?(?:-----END [A-Z0-9 ]*PRIVATE KEY-----|\Z)",
            re.DOTALL,
        ),
        0,
    ),
    # Escaped newlines, as a PEM key looks inside JSON or a repr().
    (
        "private-key",
        re.compile(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----(?:\\\\?n|[A-Za-z0-9+/=\s])*"
                   r"(?:-----END [A-Z0-9 ]*PRIVATE KEY-----)?"),
        0,
    ),
    (
        "kubeconfig-key",
        re.compile(r"((?:client-key-data|client_key_data)[\"']?\s*[:=]\s*[\"']?)([A-Za-z0-9+/=]{16,})"),
        2,
    ),
    (
        "bearer-token",
        re.compile(r"((?:^|[\s{,\"'])(?:token|id-token|refresh-token)[\"']?\s*[:=]\s*[\"']?)"
                   r"([A-Za-z0-9._~+/=-]{16,})", re.IGNORECASE | re.MULTILINE),
        2,
    ),
    ("bearer-token", re.compile(r"(Bearer\s+)([A-Za-z0-9._~+/=-]{16,})"), 2),
    ("jwt", re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"), 0),
    ("bootstrap-token", re.compile(r"\b[a-z0-9]{6}\.[a-z0-9]{16}\b"), 0),
    (
        "certificate-key",
        re.compile(r"(certificate[-_ ]?key[\"']?\s*[:=]?\s*[\"']?)([a-fA-F0-9]{64})\b",
                   re.IGNORECASE),
        2,
    ),
    ("aws-access-key-id", re.compile(r"\b(?:AKIA|ASIA|AROA|AIDA|AGPA|ANPA)[A-Z0-9]{16}\b"), 0),
    (
        "aws-secret-key",
        re.compile(r"((?:aws_secret_access_key|secret_?access_?key|SecretAccessKey)[\"']?\s*"
                   r"[:=]\s*[\"']?)([A-Za-z0-9/+=]{40})", re.IGNORECASE),
        2,
    ),
    ("slack-token", re.compile(r"\bxox[abposre]-[A-Za-z0-9-]{8,}"), 0),
    ("slack-token", re.compile(r"\bxapp-\d-[A-Za-z0-9-]{8,}"), 0),
]


def strip_ansi(text: str) -> str:
    """Remove terminal colour codes (tracebacks from the kernel carry them)."""
    return _ANSI.sub("", text)


def is_marker(value: object) -> bool:
    """True for a value that is exactly a redaction marker, like ``[REDACTED:secret]``."""
    return isinstance(value, str) and _MARKER_RE.fullmatch(value) is not None


class Redactor:
    """Replaces secrets by markers. Holds the literal secret values of one run."""

    def __init__(self, literals: Iterable[str] = (), *, environ: Mapping[str, str] | None = None):
        environ = os.environ if environ is None else environ
        values = {v for v in literals if v and len(v) >= 4}
        values |= {environ[k] for k in SECRET_ENV_VARS if len(environ.get(k, "")) >= 4}
        # Longest first, so a secret that contains another is replaced whole.
        self._literals = sorted(values, key=len, reverse=True)

    def text(self, text: str) -> str:
        if not text:
            return text
        for value in self._literals:
            if value in text:
                text = text.replace(value, MARKER.format(kind="secret"))
        for kind, pattern, group in _PATTERNS:
            text = pattern.sub(_replacer(kind, group), text)
        return text

    def value(self, value: Any) -> Any:
        """Redact every string inside a JSON-like value (dict keys included)."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, Mapping):
            return {self.text(str(k)): self.value(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.value(v) for v in value]
        return value


def _replacer(kind: str, group: int):
    marker = MARKER.format(kind=kind)

    def replace(match: re.Match[str]) -> str:
        if group == 0:
            return marker
        start, end = match.span(group)
        whole_start = match.start(0)
        text = match.group(0)
        return text[: start - whole_start] + marker + text[end - whole_start :]

    return replace


_default = Redactor()


def redact_text(text: str) -> str:
    """Redact by pattern and by the credentials in this process's environment."""
    return _default.text(text)


def redact_value(value: Any) -> Any:
    return _default.value(value)

"""Logs gathered from nodes when something failed: the journal and status of systemd units.

``collect_journal`` reads the tail of each unit's journal from one node (``journalctl -u UNIT
-n LINES --no-pager -o short-iso``); ``collect_diagnostics`` does that, plus ``systemctl
status`` of each unit, on many nodes at once, and never raises for one unreachable node: a
failure report should carry what could be read, and say what could not.

Every unit costs nothing extra on the wire: one node's texts come back in one SSH command,
sections separated by marker lines carrying a random nonce. Each text is bounded on the node
(the last ``MAX_TEXT_BYTES`` bytes; a cut first line is dropped, so no half secret survives to
slip past the patterns) and then passed through ``clusterbook.redact.redact_text``: join
tokens, certificate keys and private keys never leave this module.
"""

from __future__ import annotations

import logging
import re
import secrets
import shlex
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from clusterbook.errors import HostError, UserInputError
from clusterbook.nodes.ssh import MAX_PARALLEL, NodeConnection
from clusterbook.redact import redact_text

logger = logging.getLogger(__name__)

DEFAULT_LINES = 200
MAX_LINES = 5000
#: Upper bound of one unit's journal (or status) text, in bytes, kept from its end.
MAX_TEXT_BYTES = 64 * 1024
DIAGNOSTICS_TIMEOUT_S = 120.0
#: What the units of a kubeadm node are, for callers that want the usual set.
KUBERNETES_UNITS = ("kubelet.service", "containerd.service")

_UNIT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9:_.@\\-]*$")
_CUT_NOTE = f"[earlier output cut: only the last {MAX_TEXT_BYTES // 1024} KiB are kept]"


@dataclass(frozen=True)
class NodeDiagnostics:
    """The redacted journal and status of some units on one node, or why it could not be read."""

    node: str
    journals: dict[str, str] = field(default_factory=dict)
    statuses: dict[str, str] = field(default_factory=dict)
    error: str | None = None

    def as_row(self) -> dict[str, Any]:
        """A short row for ``record(...)`` tables (the texts themselves are too long)."""
        return {
            "node": self.node,
            "units": ", ".join(self.journals),
            "journal_lines": sum(len(t.splitlines()) for t in self.journals.values()),
            "error": self.error or "",
        }

    def as_text(self) -> str:
        """Everything, as one readable text: per unit its status, then its journal."""
        if self.error:
            return f"=== {self.node}: {self.error}\n"
        parts = []
        for unit in self.journals:
            parts.append(f"=== {self.node}: systemctl status {unit}\n{self.statuses.get(unit, '')}")
            parts.append(f"=== {self.node}: journalctl -u {unit}\n{self.journals[unit]}")
        return "\n".join(parts) + "\n"


def collect_journal(
    connection: NodeConnection,
    units: list[str],
    *,
    since: str | None = None,
    lines: int = DEFAULT_LINES,
    sudo: bool = True,
) -> dict[str, str]:
    """The last ``lines`` journal lines of each unit on one node, redacted, keyed by unit.

    ``since`` is anything ``journalctl --since`` takes (``-10min``, ``2026-12-03 20:00``).
    ``sudo`` reads through ``sudo -n`` (a user outside the ``systemd-journal`` and ``adm``
    groups sees only their own entries). Raises HostError if the node cannot be read.
    """
    commands = {unit: journal_command(unit, since=since, lines=lines) for unit in units}
    return _run_sections(connection, commands, sudo=sudo)


def collect_diagnostics(
    connections: list[NodeConnection],
    units: list[str],
    *,
    since: str | None = None,
    lines: int = DEFAULT_LINES,
    sudo: bool = True,
) -> list[NodeDiagnostics]:
    """Journal and ``systemctl status`` of ``units`` on every node, in the order given.

    A node that cannot be read gets a ``NodeDiagnostics`` with ``error`` set instead of
    raising: this runs after something already failed and should report all it can.
    """
    commands: dict[str, str] = {}
    for unit in units:
        commands[f"status:{unit}"] = status_command(unit)
        commands[f"journal:{unit}"] = journal_command(unit, since=since, lines=lines)

    def collect_one(connection: NodeConnection) -> NodeDiagnostics:
        name = connection.node.name
        try:
            texts = _run_sections(connection, commands, sudo=sudo)
        except HostError as exc:
            logger.warning("could not read the logs of %s: %s", name, redact_text(exc.message))
            return NodeDiagnostics(node=name, error=redact_text(exc.message))
        return NodeDiagnostics(
            node=name,
            journals={u: texts[f"journal:{u}"] for u in units},
            statuses={u: texts[f"status:{u}"] for u in units},
        )

    workers = max(1, min(MAX_PARALLEL, len(connections)))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        gathered = list(pool.map(collect_one, connections))
    logger.info(
        "gathered the logs of %s from %d of %d nodes",
        ", ".join(units),
        sum(1 for g in gathered if g.error is None),
        len(gathered),
    )
    return gathered


def journal_command(unit: str, *, since: str | None = None, lines: int = DEFAULT_LINES) -> str:
    """The ``journalctl`` command line for one unit (validated and quoted)."""
    _check_unit(unit)
    if not 1 <= lines <= MAX_LINES:
        raise UserInputError(f"lines must be between 1 and {MAX_LINES}, not {lines}")
    command = f"journalctl -u {shlex.quote(unit)} -n {lines} --no-pager -o short-iso"
    if since:
        command += f" --since {shlex.quote(since)}"
    return command


def status_command(unit: str) -> str:
    """``systemctl status`` of one unit, without its journal lines (those come separately)."""
    _check_unit(unit)
    return f"systemctl status {shlex.quote(unit)} --no-pager --full --lines=0"


def _run_sections(
    connection: NodeConnection, commands: dict[str, str], *, sudo: bool
) -> dict[str, str]:
    """Run each command on one node in a single SSH command; their redacted, bounded texts."""
    if not commands:
        return {}
    nonce = secrets.token_hex(8)
    script = "\n".join(
        f"printf '\\n%s\\n' {shlex.quote(_marker(nonce, key))}\n{_bounded(command)}"
        for key, command in commands.items()
    )
    result = connection.run(script, sudo=sudo, check=False, timeout_s=DIAGNOSTICS_TIMEOUT_S)
    if not result.ok:
        raise HostError(
            f"reading logs on {connection.node.name} failed with exit status "
            f"{result.exit_status}",
            host=connection.node.name,
            command=redact_text(result.command),
            exit_status=result.exit_status,
            stderr_tail=redact_text("\n".join(result.stderr.strip().splitlines()[-15:])),
        )
    return _split_sections(result.stdout, nonce=nonce, keys=list(commands))


def _bounded(command: str) -> str:
    """Shell text running ``command`` and printing at most the last MAX_TEXT_BYTES bytes.

    When output was cut, the first (partial) line is dropped and a note says so.
    """
    limit = MAX_TEXT_BYTES
    # Two bytes more than the limit: the shell strips the trailing newline, and one more
    # byte tells "cut" from "exactly the limit".
    return (
        f"out=$({command} 2>&1 | tail -c {limit + 2}); "
        f'if [ "$(printf %s "$out" | wc -c)" -gt {limit} ]; then '
        f"printf '%s\\n' {shlex.quote(_CUT_NOTE)}; printf '%s\\n' \"$out\" | sed 1d; "
        "else printf '%s\\n' \"$out\"; fi"
    )


def _split_sections(stdout: str, *, nonce: str, keys: list[str]) -> dict[str, str]:
    texts: dict[str, str] = {}
    lines = stdout.split("\n")
    positions: dict[str, int] = {}
    for index, line in enumerate(lines):
        for key in keys:
            if line == _marker(nonce, key):
                positions[key] = index
    ordered = sorted(positions.items(), key=lambda item: item[1])
    for number, (key, start) in enumerate(ordered):
        end = ordered[number + 1][1] if number + 1 < len(ordered) else len(lines)
        # Each marker is printed after a blank line, which belongs to no section.
        body = "\n".join(lines[start + 1 : end]).strip("\n")
        texts[key] = redact_text(body)
    for key in keys:
        texts.setdefault(key, "")
    return texts


def _marker(nonce: str, key: str) -> str:
    return f"==== clusterbook {nonce} {key} ===="


def _check_unit(unit: str) -> None:
    if not _UNIT_NAME.match(unit):
        raise UserInputError(
            f"{unit!r} is not a systemd unit name",
            hint="use a name such as kubelet.service or containerd",
        )

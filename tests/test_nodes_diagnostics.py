"""Journal and unit status gathered from real sandbox hosts: our own login shows, secrets do
not, sizes are bounded, an unreachable node is reported instead of raised."""

from __future__ import annotations

import re
import secrets
import shlex
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from clusterbook.errors import UserInputError
from clusterbook.nodes.diagnostics import (
    MAX_TEXT_BYTES,
    collect_diagnostics,
    collect_journal,
    journal_command,
)
from clusterbook.nodes.ssh import NodeConnection, connect_inventory

JOIN_TOKEN = "abcdef.0123456789abcdef"
CERTIFICATE_KEY = "f" * 8 + "0123456789abcdef" * 3 + "e" * 8


@pytest.fixture(scope="module")
def connections(sandbox: Any, sandbox_cluster: Any) -> Iterator[list[NodeConnection]]:
    opened = connect_inventory(sandbox.settings, sandbox_cluster)
    yield opened
    for connection in opened:
        connection.close()


def run_unit(connection: NodeConnection, script: str, *, last_words: str) -> str:
    """Run ``script`` as a transient service on the node (its output goes to the journal).

    journald stores a service's output a moment after the service ends: wait until the
    journal shows ``last_words``.
    """
    unit = f"clusterbook-test-{secrets.token_hex(4)}.service"
    connection.run(
        f"systemd-run --unit={unit} --wait --quiet --collect sh -c {shlex.quote(script)}",
        sudo=True,
    )
    deadline = time.monotonic() + 20
    while last_words not in connection.run(f"journalctl -u {unit} -n 3 --no-pager").stdout:
        assert time.monotonic() < deadline, f"{unit}: {last_words!r} never reached the journal"
        time.sleep(0.2)
    return unit


def test_the_ssh_journal_holds_our_own_login(connections: list[NodeConnection]) -> None:
    connection = connections[0]
    client_ip, client_port, _ = connection.run("echo $SSH_CLIENT").stdout.split()

    journal = collect_journal(connection, ["ssh.service"], lines=50)

    assert set(journal) == {"ssh.service"}
    assert f"Accepted publickey for ubuntu from {client_ip} port {client_port}" in (
        journal["ssh.service"]
    )
    first = journal["ssh.service"].splitlines()[-1]
    assert connection.node.private_dns.split(".")[0] in first  # short-iso: time, host, unit


def test_a_join_token_in_the_journal_comes_back_redacted(
    connections: list[NodeConnection],
) -> None:
    connection = connections[0]
    line = (
        f"kubeadm join 10.0.0.4:6443 --token {JOIN_TOKEN} --control-plane "
        f"--certificate-key {CERTIFICATE_KEY}"
    )
    unit = run_unit(
        connection, f"logger -s -t kubeadm {shlex.quote(line)}", last_words="kubeadm join"
    )
    raw = connection.run(f"journalctl -u {unit} --no-pager", sudo=True).stdout
    assert JOIN_TOKEN in raw  # the secret really is in the node's journal

    journal = collect_journal(connection, [unit])[unit]

    assert "kubeadm join 10.0.0.4:6443 --token [REDACTED:bootstrap-token]" in journal
    assert "[REDACTED:certificate-key]" in journal
    assert JOIN_TOKEN not in journal and CERTIFICATE_KEY not in journal
    assert "0123456789abcdef" not in journal


def test_diagnostics_of_every_node_with_status_and_missing_units(
    connections: list[NodeConnection],
) -> None:
    gathered = collect_diagnostics(connections, ["ssh.service", "kubelet.service"], lines=20)

    assert [d.node for d in gathered] == [c.node.name for c in connections]
    for diagnostics in gathered:
        assert diagnostics.error is None
        assert "Active: active (running)" in diagnostics.statuses["ssh.service"]
        assert "Accepted publickey for ubuntu" in diagnostics.journals["ssh.service"]
        assert "could not be found" in diagnostics.statuses["kubelet.service"]
        assert diagnostics.journals["kubelet.service"] == "-- No entries --"
        assert diagnostics.as_row()["units"] == "ssh.service, kubelet.service"
        assert "=== " + diagnostics.node + ": journalctl -u ssh.service" in diagnostics.as_text()


def test_line_count_and_size_are_bounded(connections: list[NodeConnection]) -> None:
    connection = connections[1]
    # 1,500 lines of ~110 bytes: about 160 KiB, more than one text may hold.
    unit = run_unit(
        connection,
        'i=0; while [ $i -lt 1500 ]; do echo "line $i $(printf "%0100d" 0)"; '
        "i=$((i+1)); done",
        last_words="line 1499",
    )

    few = collect_journal(connection, [unit], lines=5)[unit]
    many = collect_journal(connection, [unit], lines=5000)[unit]

    assert len(few.splitlines()) == 5
    assert output_of(few)[-1].split()[4] == "1499"
    assert many.startswith("[earlier output cut")
    assert len(many.encode()) <= MAX_TEXT_BYTES + 100
    body = many.splitlines()[1:]
    assert len(body) < 1500
    # Every kept line is whole: the partial first line was dropped.
    assert all(re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", row) for row in body)
    assert output_of(many)[-1].split()[4] == "1499"


def output_of(journal: str) -> list[str]:
    """The lines the unit's shell printed (systemd adds its own about the unit)."""
    return [row for row in journal.splitlines() if " sh[" in row]


def test_an_unreachable_node_is_reported_not_raised(
    sandbox: Any, sandbox_cluster: Any, connections: list[NodeConnection], tmp_path: Path
) -> None:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "stranger")],
        check=True,
    )
    node = sandbox_cluster.nodes[1]
    stranger = NodeConnection(sandbox.settings, node, key_path=tmp_path / "stranger")

    with stranger:
        [good, bad] = collect_diagnostics([connections[0], stranger], ["ssh.service"])

    assert good.error is None and good.journals["ssh.service"]
    assert bad.node == node.name and bad.journals == {}
    assert bad.error is not None and "SSH failed" in bad.error


def test_unit_names_and_line_counts_are_checked() -> None:
    with pytest.raises(UserInputError, match="not a systemd unit name"):
        journal_command("ssh; rm -rf /")
    with pytest.raises(UserInputError, match="lines must be between"):
        journal_command("ssh.service", lines=0)
    assert journal_command("ssh.service", since="-10min").endswith(" --since -10min")
    since = journal_command("ssh.service", since="2026-12-03 20:00; reboot")
    assert since.endswith(" --since '2026-12-03 20:00; reboot'")

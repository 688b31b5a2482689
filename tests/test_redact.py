"""Redaction: a notebook that prints every kind of secret leaves none in the archive, the
index, the CLI output or the logs."""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import subprocess
import sys

import pytest

from clusterbook.redact import Redactor, redact_text
from fixtures.engine import FIXTURE_RUNBOOKS

SECRETS = [
    "abcdef.0123456789abcdef",                                   # kubeadm bootstrap token
    "f0e1d2c3b4a5" * 5 + "f0e1",                                 # kubeadm certificate key
    "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQ",                # PEM private key body
    "AKIAIOSFODNN7EXAMPLE",                                      # AWS access key id
    "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",                  # AWS secret key
    "xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx",  # Slack token
    "LS0tLS1CRUdJTiBSU0EgUFJJVkFURSBLRVktLS0tLQo=",              # kubeconfig client key
    "eyJhbGciOiJSUzI1NiIsImtpZCI6IkFCQyJ9",                      # bearer token (JWT)
    "caller-given-token-9c1f",                                   # a (secret) parameter
]


@pytest.mark.parametrize("text, kind", [
    ("kubeadm join --token abcdef.0123456789abcdef", "bootstrap-token"),
    ("certificate key:\n" + "0a" * 32, "certificate-key"),
    ("-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA\n-----END RSA PRIVATE KEY-----",
     "private-key"),
    ('"-----BEGIN OPENSSH PRIVATE KEY-----\\nb3BlbnNzaC1rZXk\\n-----END OPENSSH PRIVATE KEY-----"',
     "private-key"),
    ("key AKIAIOSFODNN7EXAMPLE", "aws-access-key-id"),
    ("SecretAccessKey: wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "aws-secret-key"),
    ("xapp-1-A0123456789-1234567890123-abcdef", "slack-token"),
    ("    client-key-data: LS0tLS1CRUdJTiBSU0E=", "kubeconfig-key"),
    ("Authorization: Bearer abcdefghijklmnopqrstuvwxyz012345", "bearer-token"),
])
def test_each_secret_kind_is_replaced_by_a_named_marker(text, kind):
    out = redact_text(text)
    assert f"[REDACTED:{kind}]" in out


def test_ordinary_text_is_left_alone():
    text = "sha256:" + "a" * 64 + " node ip-10-0-1-5.ec2.internal ready; 3/3 pods; v1.37.2"
    assert redact_text(text) == text


def test_literal_secrets_and_environment_credentials():
    redactor = Redactor(["hunter2-password"], environ={"SLACK_SIGNING_SECRET": "sig-secret-1"})
    out = redactor.text("pw hunter2-password and sig-secret-1")
    assert "hunter2" not in out and "sig-secret-1" not in out
    assert redactor.value({"a": ["hunter2-password"]}) == {"a": ["[REDACTED:secret]"]}


def test_a_run_printing_every_secret_leaves_none_anywhere(tmp_path, caplog):
    state = tmp_path / "state"
    env = {
        **os.environ,
        "CLUSTERBOOK_STATE_DIR": str(state),
        "CLUSTERBOOK_RUNBOOKS_DIR": str(FIXTURE_RUNBOOKS),
    }
    cli = [sys.executable, "-m", "clusterbook.cli", "-v"]
    ran = subprocess.run(
        [*cli, "run", "15_prints_secrets", "-p", f"api_token={SECRETS[-1]}"],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert ran.returncode == 1 and "status     FAILED" in ran.stdout, ran.stderr
    run_id = json.loads(subprocess.run(
        [*cli, "runs", "--json"], capture_output=True, text=True, env=env, check=True
    ).stdout)[0]["run_id"]
    shown = subprocess.run([*cli, "show", run_id], capture_output=True, text=True, env=env)

    places = {
        "cli run output": ran.stdout + ran.stderr,
        "cli show output": shown.stdout + shown.stderr,
        "index": "\n".join(
            str(row) for row in sqlite3.connect(state / "runs.sqlite3").execute(
                "SELECT * FROM runs")
        ),
    }
    for path in (state / "archive").rglob("*"):
        if path.is_file():
            places[str(path)] = path.read_text(errors="replace")
    assert len(places) >= 6  # notebook, html and record were archived

    for where, text in places.items():
        for secret in SECRETS:
            assert secret not in text, f"{secret[:12]}… leaked into {where}"
    notebook = next(t for w, t in places.items() if w.endswith("notebook.ipynb"))
    for kind in ("bootstrap-token", "certificate-key", "private-key", "aws-access-key-id",
                 "aws-secret-key", "slack-token", "kubeconfig-key", "secret"):
        assert f"[REDACTED:{kind}]" in notebook
    assert "RuntimeError" in places["cli run output"]


def test_log_lines_are_redacted_and_carry_the_run_id(capsys):
    from clusterbook.logs import configure_service_logging, run_id_scope

    configure_service_logging(logging.INFO)
    log = logging.getLogger("clusterbook.test")
    with run_id_scope("run-42"):
        log.info("joining with %s", "abcdef.0123456789abcdef")
    err = capsys.readouterr().err
    assert "[run-42]" in err and "[REDACTED:bootstrap-token]" in err
    assert "0123456789abcdef" not in err


def test_logged_tracebacks_are_redacted(capsys):
    from clusterbook.logs import configure_service_logging

    configure_service_logging(logging.INFO)
    log = logging.getLogger("clusterbook.test")
    try:
        raise RuntimeError("kubeadm join --token abcdef.0123456789abcdef failed")
    except RuntimeError:
        log.exception("join failed")
    err = capsys.readouterr().err
    assert "Traceback" in err and "RuntimeError" in err
    assert "[REDACTED:bootstrap-token]" in err
    assert "0123456789abcdef" not in err

"""The run archive: hash chain, audit verify, crash recovery and the S3 store."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from clusterbook.archive.audit import verify_archive
from clusterbook.engine import Engine
from fixtures.engine import FIXTURE_RUNBOOKS


def test_records_form_a_chain(engine):
    results = [engine.run("10_succeeds", {"value": str(i)}, requester="t", source="cli")
               for i in range(3)]
    sealed = engine.index.sealed_in_order()
    assert [r.run_id for r in sealed] == [r.run_id for r in results]
    assert sealed[0].prev_hash == "0" * 64
    assert sealed[1].prev_hash == sealed[0].record_hash
    assert sealed[2].prev_hash == sealed[1].record_hash
    report = verify_archive(engine.index, engine.store)
    assert report.ok and report.checked == 3


def test_audit_finds_an_edited_notebook(engine):
    first = engine.run("10_succeeds", {}, requester="t", source="cli")
    engine.run("10_succeeds", {}, requester="t", source="cli")
    path = Path(first.record.notebook_url)
    path.write_text(path.read_text().replace('"double"', '"triple"'))

    report = verify_archive(engine.index, engine.store)
    assert [(f.run_id, f.what) for f in report.findings] == [(first.run_id, "notebook")]
    assert str(path) in report.findings[0].detail


def test_audit_finds_an_edited_record(engine):
    engine.run("10_succeeds", {}, requester="t", source="cli")
    second = engine.run("11_raises", {}, requester="t", source="cli")
    engine.run("10_succeeds", {}, requester="t", source="cli")
    db = sqlite3.connect(engine.settings.index_path)
    db.execute("UPDATE runs SET status = 'succeeded', error_summary = NULL WHERE run_id = ?",
               [second.run_id])
    db.commit()

    report = verify_archive(engine.index, engine.store)
    assert [(f.run_id, f.what) for f in report.findings] == [(second.run_id, "record")]


def test_audit_finds_a_removed_record(engine):
    runs = [engine.run("10_succeeds", {}, requester="t", source="cli") for _ in range(3)]
    db = sqlite3.connect(engine.settings.index_path)
    db.execute("DELETE FROM runs WHERE run_id = ?", [runs[1].run_id])
    db.commit()

    report = verify_archive(engine.index, engine.store, check_files=False)
    assert {(f.run_id, f.what) for f in report.findings} == {(runs[2].run_id, "chain")}


def test_audit_finds_an_edited_archived_record_copy(engine):
    engine.run("10_succeeds", {}, requester="t", source="cli")
    failed = engine.run("11_raises", {}, requester="t", source="cli")
    path = Path(failed.record.record_url)
    copy = json.loads(path.read_text())
    copy["status"], copy["error_summary"] = "succeeded", None
    path.write_text(json.dumps(copy))

    report = verify_archive(engine.index, engine.store)
    assert [(f.run_id, f.what) for f in report.findings] == [(failed.run_id, "record-copy")]
    assert "edited after it was sealed" in report.findings[0].detail


def test_audit_finds_the_newest_records_removed(engine):
    runs = [engine.run("10_succeeds", {}, requester="t", source="cli") for _ in range(3)]
    assert verify_archive(engine.index, engine.store).ok
    db = sqlite3.connect(engine.settings.index_path)
    db.execute("DELETE FROM runs WHERE run_id IN (?, ?)", [runs[1].run_id, runs[2].run_id])
    db.commit()

    report = verify_archive(engine.index, engine.store)
    assert [(f.run_id, f.what) for f in report.findings] == [(runs[2].run_id, "chain")]
    assert "records were removed" in report.findings[0].detail


def _cli_env(state: Path) -> dict[str, str]:
    return {
        **os.environ,
        "CLUSTERBOOK_STATE_DIR": str(state),
        "CLUSTERBOOK_RUNBOOKS_DIR": str(FIXTURE_RUNBOOKS),
    }


def _rows_if_ready(index: Path) -> list:
    """The run rows, or none while the CLI is still creating the index file and its schema."""
    if not index.exists():
        return []
    try:
        return sqlite3.connect(index).execute("SELECT status, work_path FROM runs").fetchall()
    except sqlite3.OperationalError:  # the file exists a moment before its table does
        return []


#: A secret parameter value that matches no pattern: only the declared `(secret)` hides it.
SECRET = "plain-words-only-the-declaration-hides"


def _start_sleeping_run(state: Path) -> tuple[subprocess.Popen, Path]:
    """`clusterbook run 12_sleeps` with a secret, once its first step has run."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "clusterbook.cli", "run", "12_sleeps", "-p", "seconds=120",
         "-p", f"api_token={SECRET}"],
        env=_cli_env(state), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    index = state / "runs.sqlite3"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        rows = _rows_if_ready(index)
        if rows and rows[0][0] == "running" and rows[0][1] and Path(rows[0][1]).exists():
            work = Path(rows[0][1])
            if '"started"' in work.read_text():
                return proc, work
        time.sleep(0.2)
    proc.kill()
    raise AssertionError("the run never started")


def _only_run(state: Path) -> dict:
    listed = subprocess.run(
        [sys.executable, "-m", "clusterbook.cli", "runs", "--json"],
        env=_cli_env(state), capture_output=True, text=True, check=True,
    )
    (run,) = json.loads(listed.stdout)
    return run


def _assert_partial_notebook_archived_without_the_secret(state: Path, run: dict) -> None:
    archived = Path(run["notebook_url"]).read_text()
    assert '"started"' in archived  # the cells that ran are in the archived partial notebook
    assert "[REDACTED:secret]" in archived
    for path in [*state.rglob("*"), state / "runs.sqlite3"]:
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), f"secret in {path}"
    audit = subprocess.run(
        [sys.executable, "-m", "clusterbook.cli", "audit", "verify"],
        env=_cli_env(state), capture_output=True, text=True,
    )
    assert audit.returncode == 0, audit.stdout + audit.stderr


def test_killed_engine_leaves_an_interrupted_run_with_its_partial_notebook(tmp_path):
    state = tmp_path / "state"
    proc, work = _start_sleeping_run(state)
    assert work.parent.stat().st_mode & 0o777 == 0o700  # holds the secret until archived

    proc.send_signal(signal.SIGKILL)
    proc.wait(10)

    run = _only_run(state)  # the next CLI start recovers the orphan
    assert run["status"] == "interrupted"
    assert "ended before the run did" in run["error_summary"]
    assert not work.exists()
    _assert_partial_notebook_archived_without_the_secret(state, run)


@pytest.mark.parametrize("signum, exit_code, why", [
    (signal.SIGINT, 130, "Ctrl-C"),      # an operator at the terminal
    (signal.SIGTERM, 143, "shut down"),  # systemd, a CI job being stopped, `kill`
])
def test_a_stopped_cli_seals_the_run_interrupted_with_its_partial_notebook(
    tmp_path, signum, exit_code, why
):
    state = tmp_path / "state"
    proc, work = _start_sleeping_run(state)

    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=60)

    assert proc.returncode == exit_code, stderr
    run = _only_run(state)
    assert run["status"] == "interrupted"
    assert why in run["error_summary"]
    assert not work.exists()
    _assert_partial_notebook_archived_without_the_secret(state, run)


def test_s3_archive_against_moto(engine_settings, moto_endpoint, monkeypatch):
    import dataclasses

    import boto3

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    s3 = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    s3.create_bucket(Bucket="audit-trail")
    settings = dataclasses.replace(
        engine_settings, archive_url="s3://audit-trail/clusterbook", aws_endpoint_url=moto_endpoint,
    )
    engine = Engine(settings)

    result = engine.run("10_succeeds", {"value": "5"}, requester="t", source="cli")
    assert result.record.notebook_url.startswith("s3://audit-trail/clusterbook/runs/")
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket="audit-trail")["Contents"])
    assert keys == ["clusterbook/chain-head.json"] + [
        f"clusterbook/runs/{result.run_id}/{name}"
        for name in ("notebook.html", "notebook.ipynb", "record.json")
    ]
    assert verify_archive(engine.index, engine.store).ok

    key = f"clusterbook/runs/{result.run_id}/notebook.ipynb"
    body = s3.get_object(Bucket="audit-trail", Key=key)["Body"].read()
    s3.put_object(Bucket="audit-trail", Key=key, Body=body.replace(b"10", b"11"))
    findings = verify_archive(engine.index, engine.store).findings
    assert [(f.run_id, f.what) for f in findings] == [(result.run_id, "notebook")]


def test_unknown_archive_scheme_is_refused(engine_settings):
    import dataclasses

    from clusterbook.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown scheme"):
        Engine(dataclasses.replace(engine_settings, archive_url="ftp://x/y"))

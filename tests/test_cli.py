"""The CLI driven as a user would, in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fixtures.engine import FIXTURE_RUNBOOKS

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def cli(tmp_path):
    env = {
        **os.environ,
        "CLUSTERBOOK_STATE_DIR": str(tmp_path / "state"),
        "CLUSTERBOOK_RUNBOOKS_DIR": str(FIXTURE_RUNBOOKS),
    }

    def run(*args: str, runbooks: Path | None = None) -> subprocess.CompletedProcess:
        if runbooks:
            env["CLUSTERBOOK_RUNBOOKS_DIR"] = str(runbooks)
        return subprocess.run([sys.executable, "-m", "clusterbook.cli", *args], env=env,
                              capture_output=True, text=True, timeout=120)

    return run


def test_help_guides_a_newcomer(cli):
    out = cli("--help")
    assert out.returncode == 0
    for command in ("runbooks", "run", "runs", "show", "audit"):
        assert command in out.stdout
    assert "clusterbook run 00_hello" in out.stdout


def test_runbooks_lists_parameters_and_json(cli):
    listed = cli("runbooks", runbooks=REPO / "runbooks")
    assert "00_hello — Hello, clusterbook" in listed.stdout
    assert "one of plain, table" in listed.stdout
    data = json.loads(cli("runbooks", "--json", runbooks=REPO / "runbooks").stdout)
    hello = next(rb for rb in data if rb["name"] == "00_hello")
    assert [p["name"] for p in hello["parameters"]] == ["name", "times", "shout", "style"]


def test_run_show_runs_and_exit_codes(cli):
    ok = cli("run", "10_succeeds", "-p", "value=4", "--quiet")
    assert ok.returncode == 0, ok.stderr
    assert "status     ok" in ok.stdout and "double: 8" in ok.stdout

    failed = cli("run", "11_raises", "-p", "message=no quota", "--json")
    assert failed.returncode == 1
    result = json.loads(failed.stdout)
    assert result["status"] == "failed" and result["error"]["evalue"] == "no quota"

    shown = cli("show", result["run_id"])
    assert "error      ValueError" in shown.stdout and "notebook" in shown.stdout
    listed = json.loads(cli("runs", "--status", "failed", "--json").stdout)
    assert [r["run_id"] for r in listed] == [result["run_id"]]
    assert cli("audit", "verify").returncode == 0


@pytest.mark.parametrize("args, code, fragment", [
    (["run", "nope"], 2, "no runbook named 'nope'"),
    (["run", "10_succeeds", "-p", "value=ten"], 2, "is not an integer"),
    (["run", "10_succeeds", "-p", "nothing"], 2, "write name=value"),
    (["show", "no-such-run"], 2, "no run with id"),
])
def test_bad_input_gets_a_clear_error_and_exit_code(cli, args, code, fragment):
    out = cli(*args)
    assert out.returncode == code
    assert fragment in out.stderr and "Traceback" not in out.stderr
    listed = json.loads(cli("runs", "--json").stdout)
    assert listed == []  # refused before anything ran


def test_progress_is_shown_while_running(cli):
    out = cli("run", "10_succeeds")
    assert "step 3/3 — Record" in out.stderr
    assert "10_succeeds: succeeded" in out.stderr


def test_audit_verify_exit_code_on_tampering(cli, tmp_path):
    run = json.loads(cli("run", "10_succeeds", "--json").stdout)
    notebook = Path(run["notebook"])
    notebook.write_text(notebook.read_text() + " ")
    out = cli("audit", "verify")
    assert out.returncode == 7
    assert f"run {run['run_id']}: notebook" in out.stdout


def test_one_broken_notebook_leaves_the_other_runbooks_usable(cli, tmp_path):
    import shutil

    import nbformat

    folder = tmp_path / "runbooks"
    folder.mkdir()
    shutil.copy(FIXTURE_RUNBOOKS / "10_succeeds.ipynb", folder)
    broken = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 1")])
    nbformat.write(broken, folder / "20_no_parameters.ipynb")
    (folder / "21_not_json.ipynb").write_text("{ this is not a notebook")

    listed = cli("runbooks", runbooks=folder)
    assert listed.returncode == 0, listed.stderr
    assert "10_succeeds" in listed.stdout
    assert "not usable: 20_no_parameters: runbook 20_no_parameters has no cell tagged" in (
        listed.stderr
    )
    assert "not usable: 21_not_json" in listed.stderr

    ran = cli("run", "10_succeeds", runbooks=folder)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    refused = cli("run", "20_no_parameters", runbooks=folder)
    assert refused.returncode == 2
    assert "has no cell tagged 'parameters'" in refused.stderr


def test_a_locked_cluster_is_exit_code_3_naming_the_holder(cli, tmp_path):
    env = {
        **os.environ,
        "CLUSTERBOOK_STATE_DIR": str(tmp_path / "state"),
        "CLUSTERBOOK_RUNBOOKS_DIR": str(FIXTURE_RUNBOOKS),
    }
    holder = subprocess.Popen(
        [sys.executable, "-m", "clusterbook.cli", "run", "16_changes_cluster",
         "-p", "cluster=alpha", "-p", "seconds=30", "--quiet"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while not [r for r in json.loads(cli("runs", "--json").stdout)
                   if r["status"] == "running"]:
            assert time.monotonic() < deadline, "the holding run never started"
            time.sleep(0.2)

        second = cli("run", "16_changes_cluster", "-p", "cluster=alpha")
        other = cli("run", "16_changes_cluster", "-p", "cluster=beta", "--quiet")
    finally:
        holder.terminate()
        holder.wait(60)

    assert second.returncode == 3, second.stderr
    assert "alpha" in second.stderr and "Traceback" not in second.stderr
    assert other.returncode == 0, other.stderr
    on_alpha = json.loads(cli("runs", "--cluster", "alpha", "--json").stdout)
    assert {r["cluster"] for r in on_alpha} == {"alpha"}
    assert sorted(r["status"] for r in on_alpha) == ["failed", "interrupted"]

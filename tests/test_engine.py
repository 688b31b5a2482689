"""The engine with a real ipykernel: every way a run can end, progress, outputs, archive."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from pathlib import Path

import nbformat
import pytest

from clusterbook.engine import Engine
from clusterbook.errors import EngineClosed, LockHeldError


def _archived(result) -> nbformat.NotebookNode:
    return nbformat.read(result.record.notebook_url, as_version=4)


def test_success_records_outputs_progress_and_archive(engine):
    events = []
    result = engine.run("10_succeeds", {"value": "21"}, requester="ada", source="cli",
                        on_progress=events.append)

    assert result.status == "succeeded" and result.error is None
    assert result.outputs == {"double": 42, "label": "x"}
    kinds = [e.kind for e in events]
    assert kinds[0] == "started" and kinds[-1] == "finished"
    described = [e.describe() for e in events if e.kind == "cell"]
    assert "step 3/3 — Record" in described
    record = result.record
    assert record.requester == "ada" and record.status == "succeeded"
    assert Path(record.notebook_url).is_file() and Path(record.html_url).is_file()
    assert "<html" in Path(record.html_url).read_text().lower()
    archived = _archived(result)
    assert archived.metadata["clusterbook"]["run"]["status"] == "succeeded"
    banner = archived.cells[0]
    assert banner.metadata["tags"] == ["clusterbook-run-banner"]
    assert result.run_id in banner.source and "**succeeded**" in banner.source
    assert "requested by ada via cli" in banner.source
    assert record.chain_seq == 1 and record.record_hash
    head = subprocess.run(
        ["git", "-C", str(engine.settings.runbooks_dir), "rev-parse", "HEAD"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()
    assert record.runbooks_commit.removesuffix("+dirty") == head


def test_raising_cell_fails_with_cell_error_and_clean_traceback(engine):
    result = engine.run("11_raises", {"message": "disk full"}, requester="t", source="cli")

    assert result.status == "failed"
    assert result.error.ename == "ValueError" and result.error.evalue == "disk full"
    assert result.error.step_title == "Fail"
    assert "error: ValueError in cell" in _archived(result).cells[0].source
    assert "\x1b[" not in result.error.traceback and "ValueError" in result.error.traceback
    assert result.outputs == {"before": True}
    assert "ValueError in cell" in result.record.error_summary
    assert _archived(result).metadata["papermill"]["exception"] is True


def test_cell_time_out_is_timed_out_not_success(engine_settings):
    import dataclasses

    settings = dataclasses.replace(engine_settings, cell_timeout_s=2)
    result = Engine(settings).run("12_sleeps", {"seconds": "30"}, requester="t", source="cli")

    assert result.status == "timed-out"
    assert result.error.ename == "CellTimeoutError" and result.error.step_title == "Sleep"
    archived = _archived(result)
    assert archived.metadata["papermill"]["exception"] is True
    failed = [c for c in archived.cells
              if c.metadata.get("papermill", {}).get("status") == "failed"]
    assert len(failed) == 1 and "time.sleep(seconds)" in failed[0].source
    assert result.outputs == {"started": True}


def test_run_time_limit_stops_the_run(engine_settings):
    import dataclasses

    settings = dataclasses.replace(engine_settings, run_timeout_s=3)
    started = time.monotonic()
    result = Engine(settings).run("12_sleeps", {"seconds": "60"}, requester="t", source="cli")

    assert result.status == "timed-out"
    assert time.monotonic() - started < 30
    assert "time limit" in result.error.evalue


@pytest.mark.parametrize("code, status", [(3, "failed"), (0, "succeeded")])
def test_sys_exit(engine, code, status):
    result = engine.run("13_exits", {"code": str(code)}, requester="t", source="cli")
    assert result.status == status
    if status == "failed":
        assert result.error.ename == "SystemExit" and result.error.evalue == "3"
    assert "after" not in result.outputs


def test_kernel_that_dies_fails_the_run(engine):
    result = engine.run("14_kills_kernel", {}, requester="t", source="cli")
    assert result.status == "failed"
    assert result.error.ename == "DeadKernelError"
    assert result.error.step_title == "Die"


def _execute_in_background(engine, run_id: str) -> tuple[threading.Thread, dict]:
    """Execute ``run_id`` in a thread; return once its kernel runs the notebook. The result
    lands in the dict under "r"."""
    outcome: dict = {}
    worker = threading.Thread(target=lambda: outcome.update(r=engine.execute(run_id)))
    worker.start()
    deadline = time.monotonic() + 30
    while engine.index.get(run_id).status != "running" or not engine._active:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    time.sleep(1.5)
    return worker, outcome


def test_cancel_stops_a_running_run(engine):
    record = engine.prepare("12_sleeps", {"seconds": "60"}, requester="t", source="cli")
    worker, outcome = _execute_in_background(engine, record.run_id)

    assert engine.cancel(record.run_id)
    worker.join(30)
    assert outcome["r"].status == "cancelled"
    assert engine.index.get(record.run_id).status == "cancelled"


def test_interrupt_all_seals_running_runs_and_starts_no_more(engine):
    running = engine.prepare("12_sleeps", {"seconds": "60"}, requester="t", source="slack")
    waiting = engine.prepare("10_succeeds", {}, requester="t", source="slack")
    worker, outcome = _execute_in_background(engine, running.run_id)

    assert engine.interrupt_all() == [running.run_id]
    worker.join(30)
    result = outcome["r"]
    assert result.status == "interrupted"
    assert "shut down" in result.error.evalue
    assert nbformat.read(result.record.notebook_url, as_version=4).cells

    with pytest.raises(EngineClosed):
        engine.execute(waiting.run_id)
    assert engine.index.get(waiting.run_id).status == "queued"


def test_cancel_a_queued_run_seals_it(engine):
    record = engine.prepare("10_succeeds", {}, requester="t", source="cli")
    assert engine.cancel(record.run_id)
    sealed = engine.index.get(record.run_id)
    assert sealed.status == "cancelled" and sealed.notebook_url and sealed.record_hash


def test_second_changing_run_on_a_cluster_is_refused_and_recorded(engine):
    holder = engine.prepare("16_changes_cluster", {"cluster": "alpha", "seconds": "8"},
                            requester="ada", source="cli")
    worker = threading.Thread(target=engine.execute, args=(holder.run_id,))
    worker.start()
    deadline = time.monotonic() + 30
    while engine.index.get(holder.run_id).status != "running":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(0.5)

    with pytest.raises(LockHeldError) as caught:
        engine.run("16_changes_cluster", {"cluster": "alpha"}, requester="bob", source="cli")
    assert holder.run_id in str(caught.value) and "ada" in str(caught.value)
    other = engine.run("16_changes_cluster", {"cluster": "beta"}, requester="bob", source="cli")
    assert other.status == "succeeded"
    worker.join(60)

    refused = engine.index.list(status="failed")
    assert len(refused) == 1 and "locked" in refused[0].error_summary
    again = engine.run("16_changes_cluster", {"cluster": "alpha"}, requester="bob", source="cli")
    assert again.status == "succeeded"


def test_record_helper_refuses_non_json(engine_settings, tmp_path):
    from clusterbook.errors import UserInputError
    from clusterbook.notebook import record

    with pytest.raises(UserInputError, match="not JSON-able"):
        record("thing", object())
    with pytest.raises(UserInputError, match="letters, digits"):
        record("bad name!", 1)


def test_context_file_holds_no_secret(engine, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
    result = engine.run("10_succeeds", {}, requester="t", source="cli")
    text = Path(result.record.notebook_url).read_text()
    assert "wJalrXUtnFEMI" not in text
    assert json.loads(Path(result.record.record_url).read_text())["run_id"] == result.run_id


def test_a_sealed_run_cannot_be_executed_again(engine):
    from clusterbook.errors import UserInputError

    record = engine.prepare("10_succeeds", {}, requester="t", source="cli")
    engine.cancel(record.run_id)
    with pytest.raises(UserInputError, match="it is cancelled"):
        engine.execute(record.run_id)


def test_a_zombie_process_counts_as_dead():
    import os
    import subprocess

    from clusterbook.archive.index import process_alive, process_start_time

    child = subprocess.Popen(["true"])
    start = process_start_time(child.pid)
    deadline = time.monotonic() + 10
    while Path(f"/proc/{child.pid}/stat").read_text().split(") ")[1][0] != "Z":
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert not process_alive(child.pid, start)
    assert process_alive(os.getpid(), process_start_time(os.getpid()))
    child.wait()
    assert not process_alive(child.pid, start)


def test_runs_of_another_instance_are_left_to_it(engine_settings):
    import dataclasses

    other = Engine(dataclasses.replace(engine_settings, instance_name="pod-a"))
    record = other.prepare("10_succeeds", {}, requester="t", source="cli")
    other.index.claim(record.run_id, pid=999_999_999, pid_start=None, instance="pod-a")

    assert Engine(dataclasses.replace(engine_settings, instance_name="pod-b")).recover() == []
    assert other.index.get(record.run_id).status == "running"
    other.recover()
    assert other.index.get(record.run_id).status == "interrupted"


def test_a_runbook_gone_before_execution_still_ends_with_a_record(engine_settings, tmp_path):
    import dataclasses
    import shutil

    from clusterbook.errors import RunbookNotFound

    folder = tmp_path / "runbooks"
    folder.mkdir()
    shutil.copy(engine_settings.runbooks_dir / "10_succeeds.ipynb", folder)
    engine = Engine(dataclasses.replace(engine_settings, runbooks_dir=folder))
    record = engine.prepare("10_succeeds", {}, requester="t", source="slack")
    (folder / "10_succeeds.ipynb").unlink()

    with pytest.raises(RunbookNotFound):
        engine.execute(record.run_id)
    sealed = engine.index.get(record.run_id)
    assert sealed.status == "failed" and "no runbook named" in sealed.error_summary
    assert sealed.record_hash and Path(sealed.notebook_url).is_file()


def test_an_engine_failure_mid_run_still_ends_with_a_record(engine, monkeypatch):
    import clusterbook.engine as engine_module

    def broken(*args, **kwargs):
        raise OSError("disk vanished")

    monkeypatch.setattr(engine_module, "execute", broken)
    record = engine.prepare("10_succeeds", {}, requester="t", source="cli")
    with pytest.raises(OSError):
        engine.execute(record.run_id)
    sealed = engine.index.get(record.run_id)
    assert sealed.status == "failed" and "disk vanished" in sealed.error_summary


def test_an_unreadable_recorded_output_is_skipped_not_fatal():
    from clusterbook.engine import read_outputs
    from clusterbook.notebook import OUTPUT_MIME

    cell = nbformat.v4.new_code_cell("record(...)")
    cell.outputs = [
        nbformat.v4.new_output("display_data", {OUTPUT_MIME: {"name": "kept", "value": 1}}),
        nbformat.v4.new_output("display_data", {OUTPUT_MIME: "{not json"}),
        nbformat.v4.new_output("display_data", {OUTPUT_MIME: {"value": "no name"}}),
    ]
    notebook = nbformat.v4.new_notebook(cells=[cell])

    assert read_outputs(notebook) == {"kept": 1}

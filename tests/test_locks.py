"""Cluster locks: exclusive per cluster, named holder, released when the holder dies."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from clusterbook.errors import LockHeldError, UserInputError
from clusterbook.locks import acquire_cluster_lock, read_holder


def test_second_holder_is_refused_with_who_and_since(tmp_path):
    with acquire_cluster_lock(tmp_path, cluster="alpha", run_id="r1", requester="ada"):
        with pytest.raises(LockHeldError) as caught:
            acquire_cluster_lock(tmp_path, cluster="alpha", run_id="r2", requester="bob")
        assert "run r1 of ada since 20" in str(caught.value)
        with acquire_cluster_lock(tmp_path, cluster="beta", run_id="r3", requester="bob"):
            pass
    with acquire_cluster_lock(tmp_path, cluster="alpha", run_id="r4", requester="bob"):
        assert read_holder(tmp_path / "alpha.lock")["run_id"] == "r4"


def test_lock_of_a_killed_process_is_released(tmp_path, caplog):
    holder = subprocess.Popen([sys.executable, "-c", f"""
import time
from pathlib import Path
from clusterbook.locks import acquire_cluster_lock
lock = acquire_cluster_lock(Path({str(tmp_path)!r}), cluster="alpha", run_id="dead-run",
                            requester="ada")
print("held", flush=True)
time.sleep(600)
"""], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(LockHeldError):
        acquire_cluster_lock(tmp_path, cluster="alpha", run_id="r2", requester="bob")

    holder.kill()
    holder.wait(10)
    caplog.set_level("INFO", logger="clusterbook.locks")
    deadline = time.monotonic() + 5
    while True:
        try:
            lock = acquire_cluster_lock(tmp_path, cluster="alpha", run_id="r2", requester="bob")
            break
        except LockHeldError:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    lock.release()
    assert "lock left by run dead-run" in caplog.text


@pytest.mark.parametrize("name", ["", "../etc", "a b", "-x", "x" * 80])
def test_cluster_names_that_are_not_file_safe_are_refused(tmp_path, name):
    with pytest.raises(UserInputError, match="is not valid"):
        acquire_cluster_lock(tmp_path, cluster=name, run_id="r", requester="u")

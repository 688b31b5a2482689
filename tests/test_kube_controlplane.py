"""The control plane's life cycle and the official Python client against it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from kubernetes import client as kube_client

from clusterbook.errors import KubeError
from clusterbook.kube.controlplane import ControlPlane, remove_stale_work_dirs
from clusterbook.kube.processes import is_port_open
from clusterbook.kube.toolchain import BINARY_NAMES, KubeBinaries


def _processes_mentioning(text: str) -> list[int]:
    """Pids of live processes whose command line contains ``text``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if text in cmdline:
            found.append(int(entry.name))
    return found


def test_python_client_talks_to_the_control_plane(control_plane: ControlPlane) -> None:
    with control_plane.api_client() as api:
        version = kube_client.VersionApi(api).get_code()
        assert version.git_version == control_plane.binaries.versions.kubernetes

        core = kube_client.CoreV1Api(api)
        workers = core.list_node(label_selector="node-role.kubernetes.io/worker")
        assert len(workers.items) == 3

        core.create_namespace({"metadata": {"name": "python-client"}})
        try:
            core.create_namespaced_config_map(
                "python-client", {"metadata": {"name": "greeting"}, "data": {"hello": "world"}}
            )
            read = core.read_namespaced_config_map("greeting", "python-client")
            assert read.data == {"hello": "world"}
        finally:
            core.delete_namespace("python-client")


def test_stop_leaves_no_process_port_or_folder(kube_binaries: KubeBinaries, tmp_path: Path) -> None:
    plane = ControlPlane(kube_binaries, workers=1, parent_dir=tmp_path)
    plane.start()
    try:
        pids = [process.pid for process in plane.processes]
        port = int(plane.server.rsplit(":", 1)[1])
        work_dir = plane.work_dir
        assert len(pids) == 5 and all(pids)
        assert is_port_open(port)
    finally:
        plane.stop()

    assert work_dir is not None and not work_dir.exists()
    assert not is_port_open(port)
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert _processes_mentioning(str(tmp_path)) == []


def test_failed_start_cleans_up_and_shows_the_log(
    kube_binaries: KubeBinaries, tmp_path: Path
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in BINARY_NAMES:
        (bin_dir / name).symlink_to(kube_binaries.path(name))
    (bin_dir / "kube-apiserver").unlink()
    broken = bin_dir / "kube-apiserver"
    broken.write_text("#!/bin/sh\necho 'refusing to serve on purpose' >&2\nexit 7\n")
    broken.chmod(0o755)
    work_parent = tmp_path / "work"
    work_parent.mkdir()

    plane = ControlPlane(
        KubeBinaries(versions=kube_binaries.versions, bin_dir=bin_dir), parent_dir=work_parent
    )
    with pytest.raises(KubeError) as caught:
        plane.start()

    assert "kube-apiserver exited with status 7" in str(caught.value)
    assert "refusing to serve on purpose" in str(caught.value)
    assert list(work_parent.iterdir()) == []
    assert _processes_mentioning(str(work_parent)) == []


OWNER_SCRIPT = """
import sys, threading, time
from pathlib import Path
from clusterbook.kube.controlplane import ControlPlane
from clusterbook.kube.toolchain import KubeBinaries, read_pinned_versions
binaries = KubeBinaries(versions=read_pinned_versions(), bin_dir=Path(sys.argv[1]))
plane = ControlPlane(binaries, workers=0, parent_dir=Path(sys.argv[2]))
if sys.argv[3] == "thread":
    starter = threading.Thread(target=plane.start)
    starter.start()
    starter.join()
    time.sleep(2)  # the thread that started the components is gone: they must still serve
else:
    plane.start()
print(plane.run_kubectl("get", "--raw", "/readyz").stdout.strip(), flush=True)
print(" ".join(str(p.pid) for p in plane.processes), flush=True)
time.sleep(600)
"""


def _start_plane_then_kill_its_owner(binaries: KubeBinaries, folder: Path, how: str) -> None:
    """A control plane started (from the main thread, or another ``thread``) by a process
    that is then killed, as a crashed test run or bot would be."""
    owner = subprocess.Popen(
        [sys.executable, "-c", OWNER_SCRIPT, str(binaries.bin_dir), str(folder), how],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert owner.stdout is not None
        assert owner.stdout.readline().strip() == "ok"
        pids = [int(pid) for pid in owner.stdout.readline().split()]
        assert len(pids) == 5
    finally:
        owner.kill()
        owner.wait()
        if owner.stdout is not None:
            owner.stdout.close()


def _wait_until_nothing_runs_from(folder: Path) -> None:
    deadline = time.monotonic() + 15
    while _processes_mentioning(str(folder)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _processes_mentioning(str(folder)) == []


def test_components_die_with_a_killed_owner_and_its_folder_is_swept(
    kube_binaries: KubeBinaries, tmp_path: Path
) -> None:
    _start_plane_then_kill_its_owner(kube_binaries, tmp_path, "main")

    _wait_until_nothing_runs_from(tmp_path)
    left = list(tmp_path.glob("clusterbook-kube-*"))
    assert len(left) == 1
    assert remove_stale_work_dirs(tmp_path) == left
    assert not left[0].exists()


def test_a_plane_started_from_a_thread_outlives_it_and_a_crash_is_swept(
    kube_binaries: KubeBinaries, tmp_path: Path
) -> None:
    _start_plane_then_kill_its_owner(kube_binaries, tmp_path, "thread")

    left = list(tmp_path.glob("clusterbook-kube-*"))
    assert len(left) == 1
    assert remove_stale_work_dirs(tmp_path) == left
    _wait_until_nothing_runs_from(tmp_path)
    assert not left[0].exists()


def test_sweep_keeps_folders_of_live_owners(tmp_path: Path) -> None:
    mine = tmp_path / "clusterbook-kube-mine"
    mine.mkdir()
    (mine / "owner.pid").write_text(str(os.getpid()))
    unowned = tmp_path / "clusterbook-kube-unowned"
    unowned.mkdir()

    assert remove_stale_work_dirs(tmp_path) == []
    assert mine.exists() and unowned.exists()


def test_nodes_get_heartbeats(kube_binaries: KubeBinaries, tmp_path: Path) -> None:
    """kwok's heartbeat stage refreshes each node's conditions, as a kubelet's status
    updates do, so nodes stay Ready past the controller-manager's grace period."""
    import json

    plane = ControlPlane(kube_binaries, workers=1, node_heartbeat_s=1, parent_dir=tmp_path)
    plane.start()
    try:
        def heartbeat() -> str:
            nodes = json.loads(plane.run_kubectl("get", "nodes", "-o", "json").stdout)
            worker = next(n for n in nodes["items"] if "worker" in n["metadata"]["name"])
            ready = next(c for c in worker["status"]["conditions"] if c["type"] == "Ready")
            assert ready["status"] == "True"
            return ready["lastHeartbeatTime"]

        first = heartbeat()
        deadline = time.monotonic() + 30
        while heartbeat() == first:
            assert time.monotonic() < deadline, "no heartbeat in 30 s"
            time.sleep(0.5)
    finally:
        plane.stop()

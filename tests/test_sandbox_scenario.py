"""The operator's path: ``clusterbook sandbox up``, ``clusterbook run 01_provision``, then the
machines answer SSH at their inventory addresses; ``04_teardown`` takes the machines away,
and ``clusterbook sandbox down`` leaves nothing. Everything through the command line, as a
user types it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from clusterbook.aws.inventory import read_inventory
from clusterbook.nodes.ssh import connect_inventory, run_on_nodes
from clusterbook.sandbox import hosts, network
from clusterbook.settings import Settings
from fixtures.sandbox import require_sandbox_tools


def clusterbook(state_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLUSTERBOOK_")}
    env["CLUSTERBOOK_STATE_DIR"] = str(state_dir)
    if "CLUSTERBOOK_CACHE" in os.environ:
        env["CLUSTERBOOK_CACHE"] = os.environ["CLUSTERBOOK_CACHE"]
    return subprocess.run(
        [sys.executable, "-m", "clusterbook.cli", *args],
        capture_output=True,
        text=True,
        check=False,
        env=env,
        timeout=600,
    )


@pytest.fixture
def state_dir(sandbox_image: object, tmp_path: Path) -> Iterator[Path]:
    require_sandbox_tools()
    yield tmp_path / "state"
    clusterbook(tmp_path / "state", "sandbox", "down")


def test_sandbox_up_provision_ssh_teardown_down(state_dir: Path) -> None:
    up = clusterbook(state_dir, "sandbox", "up")
    assert up.returncode == 0, up.stderr
    assert (state_dir / "clusterbook.toml").is_file()

    run = clusterbook(state_dir, "run", "01_provision", "-p", "cluster=demo", "--quiet")
    assert run.returncode == 0, run.stdout + run.stderr

    settings = Settings.load(environ={}, state_dir=state_dir)
    inventory = read_inventory(settings, "demo")
    assert len(inventory.nodes) == 2
    connections = connect_inventory(settings, inventory)
    results = run_on_nodes(connections, "hostname -I")
    for connection in connections:
        connection.close()
    assert sorted(r.stdout.split()[0] for r in results) == sorted(
        n.ssh_address for n in inventory.nodes
    )

    status = json.loads(clusterbook(state_dir, "sandbox", "status", "--json").stdout)
    assert status["running"] and len(status["hosts"]) == 2

    teardown = clusterbook(
        state_dir, "run", "04_teardown", "-p", "cluster=demo", "-p", "confirm=demo", "--quiet"
    )
    assert teardown.returncode == 0, teardown.stdout + teardown.stderr
    deadline = time.monotonic() + 30
    while hosts.list_hosts(state_dir / "sandbox"):
        assert time.monotonic() < deadline, "terminated instances still have hosts"
        time.sleep(0.2)

    down = clusterbook(state_dir, "sandbox", "down")
    assert down.returncode == 0 and "daemon" in down.stdout
    names = network.SandboxNames.for_folder(state_dir / "sandbox")
    assert network.list_namespaces(names) == [] and network.list_root_links(names) == []
    assert hosts.find_sandbox_processes(state_dir / "sandbox") == []
    again = clusterbook(state_dir, "sandbox", "down")
    assert "nothing to do" in again.stdout

"""The sandbox's life: instances booted, stopped and terminated through its EC2; a crashed
sandbox recovered; ``down`` leaving no namespace, link, mount or process behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from clusterbook.sandbox import hosts, network
from clusterbook.sandbox.lifecycle import sandbox_down, sandbox_status, sandbox_up
from fixtures.common import require_root
from fixtures.sandbox import default_subnet_id


def wait_until(condition: Callable[[], bool], *, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.2)


def launch(sandbox: Any, count: int = 1) -> list[dict[str, Any]]:
    reply = sandbox.ec2.run_instances(
        ImageId="ami-0b24a7f1e9d3c5002",
        InstanceType="m5a.large",
        MinCount=count,
        MaxCount=count,
        SubnetId=default_subnet_id(sandbox.ec2),
    )
    return reply["Instances"]


def host_state(sandbox: Any, instance_id: str) -> str | None:
    for host in sandbox_status(sandbox.settings).hosts:
        if host.instance_id == instance_id:
            return host.state
    return None


def assert_nothing_left(sandbox_dir: Path) -> None:
    """Nothing of this sandbox is left (another sandbox on the machine is not looked at)."""
    names = network.SandboxNames.for_folder(sandbox_dir)
    assert network.list_namespaces(names) == []
    assert network.list_root_links(names) == []
    assert hosts.find_sandbox_processes(sandbox_dir) == []
    mounts = Path("/proc/self/mountinfo").read_text()
    assert str(sandbox_dir) not in mounts
    nspawns = subprocess.run(
        ["pgrep", "-af", "systemd-nspawn"], capture_output=True, text=True, check=False
    )
    assert str(sandbox_dir) not in nspawns.stdout
    assert hosts.list_hosts(sandbox_dir) == []
    cgroups_left = list(Path("/sys/fs/cgroup").glob(f"*/clusterbook/{names.sandbox_id}"))
    assert not cgroups_left, "machine cgroups remain"


def test_running_instance_boots_a_host_and_terminating_it_destroys_it(sandbox: Any) -> None:
    kept, doomed = (i["InstanceId"] for i in launch(sandbox, count=2))
    wait_until(lambda: host_state(sandbox, doomed) == "running")
    folder = sandbox.status.sandbox_dir

    sandbox.ec2.terminate_instances(InstanceIds=[doomed])

    wait_until(lambda: host_state(sandbox, doomed) is None)
    names = network.SandboxNames.for_folder(folder)
    assert names.host_netns(doomed) not in network.list_namespaces(names)
    assert not hosts.published_host_keys_path(folder, doomed).exists()
    assert not any(doomed in line for line in _nspawn_command_lines())
    assert host_state(sandbox, kept) == "running"


def test_stopped_instance_is_powered_off_and_starts_again_with_its_disk(sandbox: Any) -> None:
    instance = launch(sandbox)[0]
    instance_id = instance["InstanceId"]
    wait_until(lambda: host_state(sandbox, instance_id) == "running")
    hosts.wait_for_ssh(instance["PrivateIpAddress"], timeout_s=30)
    folder = sandbox.status.sandbox_dir
    names = network.SandboxNames.for_folder(folder)
    keys_before = hosts.published_host_keys_path(folder, instance_id).read_text()

    sandbox.ec2.stop_instances(InstanceIds=[instance_id])
    wait_until(
        lambda: (
            host_state(sandbox, instance_id) == "powered-off"
            and names.host_netns(instance_id) not in network.list_namespaces(names)
        )
    )

    sandbox.ec2.start_instances(InstanceIds=[instance_id])
    wait_until(lambda: host_state(sandbox, instance_id) == "running")
    hosts.wait_for_ssh(instance["PrivateIpAddress"], timeout_s=30)
    assert hosts.published_host_keys_path(folder, instance_id).read_text() == keys_before


def test_instance_outside_the_sandbox_range_gets_no_host(sandbox: Any) -> None:
    # Without a subnet id moto makes up an address anywhere in 10.0.0.0/8.
    reply = sandbox.ec2.run_instances(
        ImageId="ami-0b24a7f1e9d3c5002",
        MinCount=1,
        MaxCount=1,
        PrivateIpAddress="10.250.1.1" if sandbox.status.cidr != "10.250.0.0/16" else "10.251.1.1",
    )
    instance_id = reply["Instances"][0]["InstanceId"]
    time.sleep(2)

    assert host_state(sandbox, instance_id) is None
    log = (sandbox.status.sandbox_dir / "daemon.log").read_text()
    assert f"instance {instance_id} gets no sandbox host" in log


def test_up_is_idempotent_and_restores_the_settings_file(sandbox: Any) -> None:
    config = sandbox.settings.state_dir / "clusterbook.toml"
    config.unlink()

    again = sandbox_up(sandbox.settings, cache_dir=sandbox.cache_dir)

    assert again.pid == sandbox.status.pid
    assert again.endpoint_url == sandbox.status.endpoint_url
    assert again.config_file == config
    assert f'aws_endpoint_url = "{again.endpoint_url}"' in config.read_text()


def test_sweep_knows_the_daemon_and_its_moto_but_not_a_reader_of_its_logs(sandbox: Any) -> None:
    folder = sandbox.status.sandbox_dir
    reader = subprocess.Popen(["tail", "-f", str(folder / "daemon.log")])
    try:
        found = hosts.find_sandbox_processes(folder)
        command_lines = [Path(f"/proc/{pid}/cmdline").read_bytes() for pid in found]

        assert found[0] == sandbox.status.pid
        assert any(b"clusterbook.sandbox.moto" in line for line in command_lines)
        assert reader.pid not in found
    finally:
        reader.kill()
        reader.wait()


def test_crashed_sandbox_is_cleaned_up_by_the_next_up_and_down_leaves_nothing(
    sandbox: Any,
) -> None:
    launch(sandbox)
    wait_until(lambda: any(h.state == "running" for h in sandbox_status(sandbox.settings).hosts))
    folder = sandbox.status.sandbox_dir
    os.kill(sandbox.status.pid, signal.SIGKILL)
    wait_until(lambda: not sandbox_status(sandbox.settings).running)
    assert hosts.find_sandbox_processes(folder), "machines outlive a killed daemon"

    restarted = sandbox_up(sandbox.settings, cache_dir=sandbox.cache_dir)
    assert restarted.running and restarted.pid != sandbox.status.pid
    assert sandbox_status(sandbox.settings).hosts == []

    removed = sandbox_down(sandbox.settings)

    assert f"daemon (pid {restarted.pid})" in removed
    assert_nothing_left(folder)
    assert not (sandbox.settings.state_dir / "clusterbook.toml").exists()
    assert sandbox_down(sandbox.settings) == []


def test_sandbox_refuses_to_start_without_root() -> None:
    require_root()
    # A folder the unprivileged user can reach (pytest's own temporary folders are 0700).
    with tempfile.TemporaryDirectory() as folder:
        Path(folder).chmod(0o777)
        result = _run_as_nobody(Path(folder))

    assert result.returncode != 0
    assert "the sandbox needs root" in result.stderr


def _run_as_nobody(tmp_path: Path) -> subprocess.CompletedProcess[str]:
    command = [
        sys.executable,
        "-m",
        "clusterbook.cli",
        "--state-dir",
        str(tmp_path),
        "sandbox",
        "up",
    ]

    return subprocess.run(
        ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", *command],
        capture_output=True,
        text=True,
        check=False,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )


def _nspawn_command_lines() -> list[str]:
    listing = subprocess.run(
        ["pgrep", "-af", "systemd-nspawn"], capture_output=True, text=True, check=False
    )
    return listing.stdout.splitlines()


@pytest.fixture(autouse=True, scope="module")
def _everything_gone_after_the_module(sandbox: Any) -> Any:
    yield
    sandbox_down(sandbox.settings)
    assert_nothing_left(sandbox.status.sandbox_dir)

"""``sandbox up``, ``status`` and ``down``: the sandbox as a whole, for the CLI and tests.

Everything the sandbox owns lives in ``<state dir>/sandbox/`` (daemon state and logs, host
layers, published host keys) plus its network namespaces, its one root veth and its machine
cgroups, all named with the sandbox's id (``cbsb-<id>-*``, see
``clusterbook.sandbox.network.SandboxNames``). ``up`` starts the daemon (see
``clusterbook.sandbox.daemon``) and writes the settings file that points the product at it;
``down`` stops it and then sweeps whatever a crashed sandbox might have left, so a second
``down`` finds nothing to do.

Sandboxes of different state directories run side by side: each has its own names, its own
moto and its own VPC range, and a sweep touches only its own sandbox's things. Starts are
taken one at a time on the machine (a lock file), so two sandboxes starting at once cannot
pick the same free range.

The settings file is ``<state dir>/clusterbook.toml`` (read by ``Settings.load``), unless
that file exists and is not ours: then ``up`` leaves it alone and the caller shows the
equivalent ``CLUSTERBOOK_*`` variables instead.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from clusterbook.errors import ClusterbookError
from clusterbook.sandbox import cgroups, hosts, network
from clusterbook.sandbox.daemon import state_path
from clusterbook.sandbox.image import build_base_image
from clusterbook.settings import Settings

logger = logging.getLogger(__name__)

START_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 60.0
KERNEL_LIMITS = {
    "fs/inotify/max_user_instances": 8192,
    "fs/inotify/max_user_watches": 524288,
}
CONFIG_MARKER = "# Written by `clusterbook sandbox up`; removed by `clusterbook sandbox down`."
#: Held from choosing a VPC range until the daemon has routed it (machine-wide).
START_LOCK = Path("/run/lock/clusterbook-sandbox-up.lock")


class SandboxError(ClusterbookError):
    """The sandbox could not be started, inspected or stopped."""


@dataclass
class HostStatus:
    instance_id: str
    private_ip: str
    dns_name: str
    state: str  # "running" or "powered-off"
    pid: int | None


@dataclass
class SandboxStatus:
    running: bool
    sandbox_dir: Path
    endpoint_url: str | None = None
    region: str | None = None
    cidr: str | None = None
    gateway: str | None = None
    pid: int | None = None
    config_file: Path | None = None
    hosts: list[HostStatus] = field(default_factory=list)

    def settings_environment(self) -> dict[str, str]:
        """The ``CLUSTERBOOK_*`` (and AWS credential) variables that select this sandbox."""
        return {
            "CLUSTERBOOK_AWS_ENDPOINT_URL": self.endpoint_url or "",
            "CLUSTERBOOK_AWS_REGION": self.region or "",
            "CLUSTERBOOK_SSH_ADDRESS": "private",
            "CLUSTERBOOK_SANDBOX": "true",
            "AWS_ACCESS_KEY_ID": "sandbox",
            "AWS_SECRET_ACCESS_KEY": "sandbox",
        }


def sandbox_dir_for(settings: Settings) -> Path:
    # Absolute: the daemon runs in "/", and the sandbox id is a hash of this path.
    return settings.state_dir.absolute() / "sandbox"


def require_root() -> None:
    if os.geteuid() != 0:
        raise SandboxError(
            "the sandbox needs root: it creates network namespaces and boots machines "
            "with systemd-nspawn",
            hint="run it as root, e.g. `sudo .venv/bin/clusterbook sandbox up`",
        )


def sandbox_up(settings: Settings, *, cache_dir: Path, cidr: str | None = None) -> SandboxStatus:
    """Start the sandbox, or return the running one. Cleans up after a crashed one first."""
    require_root()
    folder = sandbox_dir_for(settings)
    current = sandbox_status(settings)
    if current.running:
        logger.info("sandbox already running (pid %s)", current.pid)
        # The settings file may have been removed or edited since: it points here again.
        current.config_file = write_settings_file(settings, current)
        return current

    names = network.SandboxNames.for_folder(folder)
    for other_pid, other_folder in find_sandbox_daemons():
        other = Path(other_folder)
        if other != folder and network.sandbox_id(other) == names.sandbox_id:
            raise SandboxError(
                f"the sandbox of {other_folder} (pid {other_pid}) has the same short id "
                f"{names.sandbox_id} as this one, so their network names would clash",
                hint=f"use another state directory, or take that one down first: clusterbook "
                f"--state-dir {other.parent} sandbox down",
            )
    raise_kernel_limits()
    removed = sweep_sandbox(folder)
    if removed:
        logger.info("cleaned up after a previous sandbox: %s", ", ".join(removed))
    image = build_base_image(cache_dir=cache_dir)

    with _start_lock():
        status = _start_daemon(settings, folder=folder, names=names, cache_dir=cache_dir, cidr=cidr)
    logger.info(
        "sandbox %s running (image %s, VPC %s)", names.sandbox_id, image.recipe_hash, status.cidr
    )
    status.config_file = write_settings_file(settings, status)
    return status


def _start_daemon(
    settings: Settings,
    *,
    folder: Path,
    names: network.SandboxNames,
    cache_dir: Path,
    cidr: str | None,
) -> SandboxStatus:
    """Choose a free VPC range (or check the one asked for) and start the daemon on it."""
    if cidr:
        network.choose_vpc_cidr((cidr,), own_link=names.root_link)
    else:
        cidr = network.choose_vpc_cidr(own_link=names.root_link)

    folder.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        "-m",
        "clusterbook.sandbox.daemon",
        "--sandbox-dir",
        str(folder),
        "--cache-dir",
        str(cache_dir),
        "--region",
        settings.aws_region,
        "--cidr",
        cidr,
    ]
    with open(folder / "daemon.log", "ab") as log:
        subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd="/",
        )
    logger.info("sandbox %s starting (VPC %s)", names.sandbox_id, cidr)
    return _wait_for_daemon(folder)


def find_sandbox_daemons() -> list[tuple[int, str]]:
    """Every running sandbox daemon on this machine, with the sandbox folder it serves."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            arguments = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if "clusterbook.sandbox.daemon" in arguments and "--sandbox-dir" in arguments:
            position = arguments.index("--sandbox-dir") + 1
            if position < len(arguments):
                found.append((int(entry.name), arguments[position]))
    return found


def raise_kernel_limits() -> None:
    """Raise the inotify limits that many machines need (never lowers a setting).

    Every machine's systemd, journald, logind and dbus each take inotify instances from the
    same per-user budget (root's, here); at the default of 128, the 20th or so machine's
    systemd fails with "Too many open files". kind asks for the same change.
    """
    for key, wanted in KERNEL_LIMITS.items():
        path = Path("/proc/sys") / key
        try:
            current = int(path.read_text())
        except (OSError, ValueError):
            continue
        if current < wanted:
            path.write_text(str(wanted))
            logger.info("raised %s from %d to %d", key.replace("/", "."), current, wanted)


def sandbox_status(settings: Settings) -> SandboxStatus:
    """What is running: the daemon, its endpoint and network, and every host."""
    folder = sandbox_dir_for(settings)
    state = _read_state(folder)
    pid = int(state.get("pid") or 0)
    running = state.get("status") == "running" and _daemon_alive(pid, folder)
    status = SandboxStatus(running=running, sandbox_dir=folder)
    if running:
        status.endpoint_url = state.get("endpoint_url")
        status.region = state.get("region")
        status.cidr = state.get("cidr")
        status.gateway = state.get("gateway")
        status.pid = pid
    config = settings.state_dir / "clusterbook.toml"
    if config.is_file() and config.read_text().startswith(CONFIG_MARKER):
        status.config_file = config

    for instance_id in hosts.list_hosts(folder):
        record = hosts.read_host_record(folder, instance_id) or {}
        host_pid = hosts.running_pid(folder, instance_id)
        status.hosts.append(
            HostStatus(
                instance_id=instance_id,
                private_ip=str(record.get("private_ip", "")),
                dns_name=str(record.get("dns_name", "")),
                state="running" if host_pid else "powered-off",
                pid=host_pid,
            )
        )
    return status


def sandbox_down(settings: Settings) -> list[str]:
    """Stop the sandbox and remove everything it made. Returns what was removed."""
    require_root()
    folder = sandbox_dir_for(settings)
    removed = []
    state = _read_state(folder)
    pid = int(state.get("pid") or 0)
    if _daemon_alive(pid, folder):
        hosts.stop_processes([pid], timeout_s=STOP_TIMEOUT_S)
        removed.append(f"daemon (pid {pid})")

    removed.extend(sweep_sandbox(folder))
    config = settings.state_dir / "clusterbook.toml"
    if config.is_file() and config.read_text().startswith(CONFIG_MARKER):
        config.unlink()
        removed.append(f"settings file {config}")
    return removed


def sweep_sandbox(folder: Path) -> list[str]:
    """Remove every process, mount, host, cgroup, namespace and link of this sandbox that is
    left over; another sandbox's are never touched."""
    removed = []
    leftovers = hosts.find_sandbox_processes(folder)
    hosts.stop_processes(leftovers, timeout_s=hosts.POWER_OFF_TIMEOUT_S)
    removed.extend(f"process {pid}" for pid in leftovers)

    for mount_point in _mounts_under(folder):
        subprocess.run(["umount", "--lazy", mount_point], check=False)
        removed.append(f"mount {mount_point}")

    for instance_id in hosts.list_hosts(folder):
        hosts.destroy_host(folder, instance_id)
        removed.append(f"host {instance_id}")
    shutil.rmtree(folder / "host-keys", ignore_errors=True)

    removed.extend(cgroups.remove_sandbox_cgroups(network.sandbox_id(folder)))
    removed.extend(network.destroy_vpc_network(network.SandboxNames.for_folder(folder)))
    path = state_path(folder)
    if path.exists():
        path.unlink()
    return removed


def write_settings_file(settings: Settings, status: SandboxStatus) -> Path | None:
    """Point ``Settings.load`` at the sandbox, unless a config file of someone else's is there."""
    config = settings.state_dir / "clusterbook.toml"
    if config.exists() and not config.read_text().startswith(CONFIG_MARKER):
        logger.warning("%s exists and is not the sandbox's; leaving it unchanged", config)
        return None
    config.write_text(
        f"{CONFIG_MARKER}\n"
        f'aws_endpoint_url = "{status.endpoint_url}"\n'
        f'aws_region = "{status.region}"\n'
        'ssh_address = "private"\n'
        "sandbox = true\n"
    )
    return config


def _wait_for_daemon(folder: Path) -> SandboxStatus:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        state = _read_state(folder)
        if state.get("status") == "running":
            pid = int(state["pid"])
            return SandboxStatus(
                running=True,
                sandbox_dir=folder,
                endpoint_url=state["endpoint_url"],
                region=state["region"],
                cidr=state["cidr"],
                gateway=state["gateway"],
                pid=pid,
            )
        if state.get("status") in ("failed", "stopped"):
            break
        time.sleep(0.1)
    tail = _log_tail(folder / "daemon.log")
    sweep_sandbox(folder)
    raise SandboxError(f"the sandbox did not start; last lines of {folder / 'daemon.log'}:\n{tail}")


@contextlib.contextmanager
def _start_lock() -> Iterator[None]:
    START_LOCK.parent.mkdir(parents=True, exist_ok=True)
    with open(START_LOCK, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _read_state(folder: Path) -> dict[str, object]:
    try:
        return json.loads(state_path(folder).read_text())
    except (OSError, ValueError):
        return {}


def _daemon_alive(pid: int, folder: Path) -> bool:
    return bool(pid) and pid in hosts.find_sandbox_processes(folder)


def _mounts_under(folder: Path) -> list[str]:
    prefix = str(folder.resolve()) + "/"
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        mount_point = line.split()[4]
        if mount_point.startswith(prefix):
            found.append(mount_point)
    return sorted(found, reverse=True)


def _log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"

"""Sandbox hosts: one systemd-nspawn machine per EC2 instance, booted from the base image.

Each host lives in ``<sandbox dir>/hosts/<instance id>/``:

- ``upper/`` and ``work/``: the host's own layer of an overlay on the base image (its
  "root volume"; kept while the instance is stopped, deleted when it is terminated). Before
  the first boot it receives the host's name, a fresh machine id, fresh sshd host keys and
  the instance key pair's public key in ``ubuntu``'s ``authorized_keys``.
- ``root/``: the overlay's mount point. The overlay is mounted in a private mount namespace
  that only the machine's ``systemd-nspawn`` lives in, so it vanishes with the machine even
  when nobody cleans up (a crashed sandbox leaves no mount behind).
- ``console.log``: the machine's console (its boot messages).
- ``host.json``: the instance id, address, name and the pid of its ``systemd-nspawn``.

Host keys are *published* in ``<sandbox dir>/host-keys/<instance id>.pub``, the sandbox's
counterpart of the SSH host key block in an EC2 instance's console output, so the product
verifies host keys instead of trusting whatever answers.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from clusterbook.errors import ClusterbookError, MissingComponentError
from clusterbook.sandbox import cgroups, network
from clusterbook.sandbox.image import DEFAULT_UID, DEFAULT_USER, BaseImage

logger = logging.getLogger(__name__)

HOST_KEY_TYPES = ("ed25519", "ecdsa")
SYSTEM_CALL_FILTER = "@mount @privileged add_key keyctl bpf"
POWER_OFF_TIMEOUT_S = 20.0
KILL_WAIT_S = 10.0
#: The programs a machine runs as on this side: ``unshare`` and ``sh`` set up its mounts, then
#: ``sh`` becomes ``systemd-nspawn`` (see ``boot_host``).
MACHINE_PROGRAMS = frozenset({"systemd-nspawn", "unshare", "sh"})


class HostBootError(ClusterbookError):
    """A sandbox host could not be prepared or booted."""


@dataclass(frozen=True)
class HostSpec:
    """What the sandbox knows about one instance's host."""

    instance_id: str
    private_ip: str
    dns_name: str
    #: The instance key pair's public key (OpenSSH format), or None when it has no key.
    authorized_key: str | None = None


def hosts_dir(sandbox_dir: Path) -> Path:
    return sandbox_dir / "hosts"


def host_dir(sandbox_dir: Path, instance_id: str) -> Path:
    return hosts_dir(sandbox_dir) / instance_id


def published_host_keys_path(sandbox_dir: Path, instance_id: str) -> Path:
    """Where the sandbox publishes an instance's SSH host public keys."""
    return sandbox_dir / "host-keys" / f"{instance_id}.pub"


def prepare_host(spec: HostSpec, *, image: BaseImage, sandbox_dir: Path) -> None:
    """Write the host's own layer, unless it already has one (a stopped host keeps its disk)."""
    folder = host_dir(sandbox_dir, spec.instance_id)
    upper = folder / "upper"
    if (folder / "prepared").is_file():
        return
    if folder.exists():
        shutil.rmtree(folder)
    for name in ("upper", "work", "root"):
        (folder / name).mkdir(parents=True)

    lower = image.rootfs
    short_name = spec.dns_name.split(".", 1)[0]
    _write_file(lower, upper, "etc/hostname", f"{spec.dns_name}\n")
    _write_file(
        lower,
        upper,
        "etc/hosts",
        "127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n"
        f"{spec.private_ip} {spec.dns_name} {short_name}\n",
    )
    _write_file(lower, upper, "etc/machine-id", os.urandom(16).hex() + "\n", mode=0o444)

    if spec.authorized_key:
        ssh_dir = f"home/{DEFAULT_USER}/.ssh"
        _write_file(
            lower,
            upper,
            f"{ssh_dir}/authorized_keys",
            spec.authorized_key.strip() + "\n",
            mode=0o600,
            owner=DEFAULT_UID,
        )
        os.chmod(upper / ssh_dir, 0o700)
        os.chown(upper / ssh_dir, DEFAULT_UID, DEFAULT_UID)

    public_keys = _generate_host_keys(lower, upper, comment=spec.dns_name)
    published = published_host_keys_path(sandbox_dir, spec.instance_id)
    published.parent.mkdir(parents=True, exist_ok=True)
    published.write_text(public_keys)
    (folder / "prepared").write_text("")


def boot_host(spec: HostSpec, *, image: BaseImage, sandbox_dir: Path, netns_path: Path) -> int:
    """Boot the host's machine in the background; returns its ``systemd-nspawn`` pid.

    The machine is up within a second or so; sshd answers shortly after.
    """
    _require_nspawn()
    folder = host_dir(sandbox_dir, spec.instance_id)
    launch = (
        'for dir in $CLUSTERBOOK_CGROUPS; do echo $$ > "$dir/cgroup.procs" || exit 1; done; '
        'mount -t overlay overlay -o "lowerdir=$1,upperdir=$2,workdir=$3" "$4" || exit 1; '
        'shift 4; exec "$@"'
    )
    cgroup_folders = cgroups.create_machine_cgroups(
        spec.instance_id, sandbox_id=network.sandbox_id(sandbox_dir)
    )
    command = [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "--",
        "sh",
        "-c",
        launch,
        "sh",
        str(image.rootfs),
        str(folder / "upper"),
        str(folder / "work"),
        str(folder / "root"),
        "systemd-nspawn",
        "--quiet",
        f"--directory={folder / 'root'}",
        "--boot",
        "--register=no",
        "--keep-unit",
        f"--network-namespace-path={netns_path}",
        "--capability=all",
        f"--system-call-filter={SYSTEM_CALL_FILTER}",
        f"--machine={spec.instance_id}",
        f"--hostname={spec.dns_name}",
        "--link-journal=no",
        "--resolv-conf=off",
        "--timezone=off",
        "--console=read-only",
    ]
    with open(folder / "console.log", "ab") as console:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=console,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={
                "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
                "CLUSTERBOOK_CGROUPS": " ".join(str(f) for f in cgroup_folders),
            },
        )
    record = {**asdict(spec), "pid": process.pid, "booted_at": time.time()}
    record["authorized_key"] = bool(spec.authorized_key)
    (folder / "host.json").write_text(json.dumps(record))
    logger.info("host %s booting at %s (pid %d)", spec.instance_id, spec.private_ip, process.pid)
    return process.pid


def running_pid(sandbox_dir: Path, instance_id: str) -> int | None:
    """The pid of the host's machine if it is running, else None."""
    record = read_host_record(sandbox_dir, instance_id)
    if record is None:
        return None
    pid = int(record.get("pid") or 0)
    return pid if pid and _is_our_process(pid, host_dir(sandbox_dir, instance_id)) else None


def read_host_record(sandbox_dir: Path, instance_id: str) -> dict[str, object] | None:
    path = host_dir(sandbox_dir, instance_id) / "host.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def list_hosts(sandbox_dir: Path) -> list[str]:
    """Instance ids of every host that has a folder (running or not)."""
    folder = hosts_dir(sandbox_dir)
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if p.is_dir())


def power_off_hosts(sandbox_dir: Path, instance_ids: list[str]) -> list[str]:
    """Shut machines down cleanly, all at once (SIGTERM makes nspawn power its machine off);
    kill those still up after ``POWER_OFF_TIMEOUT_S``. Returns the ids that were running."""
    running = {}
    for instance_id in instance_ids:
        pid = running_pid(sandbox_dir, instance_id)
        if pid is not None:
            running[instance_id] = pid
    stop_processes(list(running.values()), timeout_s=POWER_OFF_TIMEOUT_S)
    for instance_id in running:
        cgroups.remove_machine_cgroups(instance_id, sandbox_id=network.sandbox_id(sandbox_dir))
        logger.info("host %s powered off", instance_id)
    return list(running)


def destroy_host(sandbox_dir: Path, instance_id: str) -> None:
    """Power the host off and delete its disk layer and published keys."""
    power_off_hosts(sandbox_dir, [instance_id])
    cgroups.remove_machine_cgroups(instance_id, sandbox_id=network.sandbox_id(sandbox_dir))
    shutil.rmtree(host_dir(sandbox_dir, instance_id), ignore_errors=True)
    published_host_keys_path(sandbox_dir, instance_id).unlink(missing_ok=True)
    logger.info("host %s destroyed", instance_id)


def find_sandbox_processes(sandbox_dir: Path) -> list[int]:
    """The sandbox's own processes that name its folder on their command line: the daemon
    first, then its moto server and the machines (``systemd-nspawn`` and the ``unshare`` and
    ``sh`` that start one). Anything else naming the folder (an operator's ``tail -f`` of a
    log, say) is not ours to stop."""
    marker = str(sandbox_dir)
    daemons, others = [], []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            arguments = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if not any(_names_folder(argument, marker) for argument in arguments):
            continue
        if "clusterbook.sandbox.daemon" in arguments:
            daemons.append(int(entry.name))
        elif _is_sandbox_program(arguments):
            others.append(int(entry.name))
    return sorted(daemons) + sorted(others)


def _is_sandbox_program(arguments: list[str]) -> bool:
    program = Path(arguments[0]).name if arguments else ""
    return program in MACHINE_PROGRAMS or "clusterbook.sandbox.moto" in arguments


def _names_folder(argument: str, folder: str) -> bool:
    value = argument.split("=", 1)[1] if argument.startswith("--") and "=" in argument else argument
    return value == folder or value.startswith(folder + "/")


def stop_processes(pids: list[int], *, timeout_s: float) -> None:
    """SIGTERM each, wait up to ``timeout_s`` for all, then SIGKILL those still alive."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout_s
    alive = [pid for pid in pids if _is_alive(pid)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        alive = [pid for pid in alive if _is_alive(pid)]

    for pid in alive:
        logger.warning("process %d did not stop within %.0f s; killing it", pid, timeout_s)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    # A killed process is gone at once unless it is stuck in the kernel (a hung mount, say):
    # give up on it after a while rather than hang the caller.
    deadline = time.monotonic() + KILL_WAIT_S
    while any(_is_alive(pid) for pid in alive) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in (pid for pid in alive if _is_alive(pid)):
        logger.warning("process %d survives SIGKILL after %.0f s; leaving it", pid, KILL_WAIT_S)


def wait_for_ssh(address: str, *, timeout_s: float = 60.0, port: int = 22) -> float:
    """Wait until sshd at ``address`` sends its banner; returns the seconds waited."""
    started = time.monotonic()
    while True:
        try:
            with socket.create_connection((address, port), timeout=2) as sock:
                sock.settimeout(2)
                if sock.recv(64).startswith(b"SSH-"):
                    return time.monotonic() - started
        except OSError:
            pass
        if time.monotonic() - started > timeout_s:
            raise HostBootError(f"sshd at {address}:{port} did not answer within {timeout_s} s")
        time.sleep(0.1)


def _is_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _is_our_process(pid: int, folder: Path) -> bool:
    try:
        arguments = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False
    named = any(_names_folder(argument, str(folder)) for argument in arguments.split("\0"))
    return named and _is_alive(pid)


def _write_file(
    lower: Path,
    upper: Path,
    relative: str,
    content: str,
    *,
    mode: int = 0o644,
    owner: int = 0,
) -> None:
    """Write a file into the upper layer, creating parents with the lower layer's metadata.

    An overlay shows a directory with the upper layer's owner and mode, so a parent created
    here must copy them from the base image, or e.g. ``/etc`` would change its mode.
    """
    path = upper / relative
    _make_parents(lower, upper, Path(relative).parent)
    path.write_text(content)
    os.chmod(path, mode)
    os.chown(path, owner, owner)


def _make_parents(lower: Path, upper: Path, relative: Path) -> None:
    current = Path()
    for part in relative.parts:
        current = current / part
        target = upper / current
        if target.is_dir():
            continue
        target.mkdir()
        source = lower / current
        if source.is_dir():
            info = source.stat()
            os.chmod(target, info.st_mode & 0o7777)
            os.chown(target, info.st_uid, info.st_gid)


def _generate_host_keys(lower: Path, upper: Path, *, comment: str) -> str:
    _make_parents(lower, upper, Path("etc/ssh"))
    public = []
    for key_type in HOST_KEY_TYPES:
        key_path = upper / "etc/ssh" / f"ssh_host_{key_type}_key"
        subprocess.run(
            ["ssh-keygen", "-q", "-t", key_type, "-N", "", "-C", comment, "-f", str(key_path)],
            check=True,
            capture_output=True,
        )
        public.append(key_path.with_name(key_path.name + ".pub").read_text().strip())
    return "\n".join(public) + "\n"


def _require_nspawn() -> None:
    for program, package in (("systemd-nspawn", "systemd-container"), ("unshare", "util-linux")):
        if shutil.which(program) is None:
            raise MissingComponentError(
                f"{program} is not installed; sandbox hosts need it",
                hint=f"apt-get install {package} (or run scripts/setup.sh)",
            )

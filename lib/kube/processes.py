"""Local programs the control plane runs: free 127.0.0.1 ports, start, health, stop.

Each program runs in its own session (process group) with its output in a log file, and is
asked by the kernel to die with us (``PR_SET_PDEATHSIG``), so a crashed test run does not
leave an etcd or an apiserver behind. Stopping sends SIGTERM to the group, then SIGKILL.

The kernel sends that signal when the *thread* that started the program ends, not the
process: a program started from any other thread than the main one (a worker of a pool that
later ends) would be killed while still in use, so it is not asked. Should such an owner
crash, ``kill_programs_naming`` finds its programs by their work folder, which every one of
them names on its command line.

Known shortcoming: a port is found free by binding to it and closing it again, so another
program can take it before ours binds. On this single-user machine that has not happened;
the component then fails to start with "address already in use" in its log tail.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

from clusterbook.errors import KubeError

logger = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
#: Loaded once here, so that the forked child only makes one plain C call (no imports, no
#: locks) before exec; that is what makes preexec_fn safe enough even with threads around.
_LIBC = ctypes.CDLL(None, use_errno=True)


def find_free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports that are free on 127.0.0.1 right now."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def is_port_open(port: int) -> bool:
    """Whether something accepts connections on 127.0.0.1:``port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _die_with_parent() -> None:
    _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def kill_programs_naming(folder: Path) -> list[int]:
    """SIGKILL every program whose command line names a path inside ``folder``; their pids."""
    mark = str(folder).rstrip("/") + "/"
    killed = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if not any(mark in arg.decode(errors="replace") for arg in argv[1:]):
            continue
        try:
            os.kill(int(entry.name), signal.SIGKILL)
        except ProcessLookupError:
            continue
        killed.append(int(entry.name))
    return killed


class ManagedProcess:
    """One running program, its log file, and how to stop it."""

    def __init__(self, name: str, argv: list[str], *, log_path: Path) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def start(self) -> None:
        logger.debug("starting %s: %s", self.name, " ".join(self.argv))
        on_main_thread = threading.current_thread() is threading.main_thread()
        with open(self.log_path, "ab") as log:
            self._process = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent if on_main_thread else None,  # noqa: PLW1509
            )

    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def check_running(self) -> None:
        """Raise KubeError with the log tail if the program has exited."""
        if self._process is None:
            raise KubeError(f"{self.name} was never started")
        code = self._process.poll()
        if code is not None:
            raise KubeError(
                f"{self.name} exited with status {code}; last log lines:\n{self.log_tail()}",
                hint=f"full log: {self.log_path}",
            )

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM the process group, wait, then SIGKILL whatever is left; idempotent."""
        process = self._process
        if process is None:
            return

        if process.poll() is None:
            _signal_group(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                logger.warning("%s did not stop in %.0fs; killing it", self.name, timeout_s)
                process.kill()
                process.wait()
        # Children the program may have forked share its group; make sure none survive.
        _signal_group(process.pid, signal.SIGKILL)
        logger.debug("%s stopped (status %s)", self.name, process.returncode)


def _signal_group(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        pass


def wait_for(
    condition_name: str,
    check: Callable[[], bool],
    *,
    timeout_s: float,
    processes: list[ManagedProcess],
    interval_s: float = 0.1,
) -> None:
    """Poll ``check`` until true; fail early if one of ``processes`` died, else at timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        for process in processes:
            process.check_running()
        if check():
            return
        if time.monotonic() > deadline:
            tails = "\n".join(f"--- {p.name}:\n{p.log_tail(5)}" for p in processes)
            raise KubeError(
                f"timed out after {timeout_s:.0f}s waiting for {condition_name}\n{tails}"
            )
        time.sleep(interval_s)

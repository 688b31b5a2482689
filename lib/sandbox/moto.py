"""A moto server in a child process on 127.0.0.1: the sandbox's stand-in for the AWS APIs.

Why a child process: moto reads ``MOTO_AMIS_PATH`` once, when ``moto.ec2`` is imported, and
keeps its state in module globals. A separate interpreter gets our image catalogue for sure
and can be stopped without leaving state behind in the caller.

The server is seeded with Canonical Ubuntu 24.04 and 22.04 amd64 images named the way
Canonical names them (owner 099720109477), so the product's real image look-up
(``describe_images`` by owner and name) works unchanged. Besides them the catalogue holds two
decoys the look-up must not pick: an arm64 build and a look-alike from another owner.

Start it with ``start_moto_server()``; the child prints its port once it listens. By default
the child is tied to the caller: it exits when the caller's end of its stdin pipe closes
(the caller exited or called ``stop()``). ``tie_to_caller=False`` makes a long-lived server
whose pid the caller keeps; stop it with ``stop_moto_server(pid)``.

Run ``python -m clusterbook.sandbox.moto`` to serve in the foreground.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

from clusterbook.errors import ExternalServiceError, MissingComponentError

logger = logging.getLogger(__name__)

CANONICAL_OWNER_ID = "099720109477"
LISTEN_HOST = "127.0.0.1"
START_TIMEOUT_S = 30.0

_READY_PREFIX = "clusterbook-moto-ready "


def _image(
    ami_id: str, name: str, *, release: str, arch: str = "x86_64", owner: str = CANONICAL_OWNER_ID
) -> dict[str, object]:
    build = name.rsplit("-", 1)[-1]
    created = f"{build[0:4]}-{build[4:6]}-{build[6:8]}T10:00:00.000Z"
    return {
        "ami_id": ami_id,
        "state": "available",
        "public": True,
        "owner_id": owner,
        "image_location": f"{owner}/{name}",
        "sriov": "simple",
        "root_device_type": "ebs",
        "root_device_name": "/dev/sda1",
        "description": f"Canonical, Ubuntu, {release} LTS, {arch} image build on {build}",
        "image_type": "machine",
        "platform": None,
        "architecture": arch,
        "name": name,
        "virtualization_type": "hvm",
        "hypervisor": "xen",
        "creation_date": created,
    }


_NOBLE = "ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-{arch}-server-{build}"
_JAMMY = "ubuntu/images/hvm-ssd/ubuntu-jammy-22.04-{arch}-server-{build}"

#: The image catalogue the server starts with (the moto ``MOTO_AMIS_PATH`` format).
UBUNTU_IMAGES: list[dict[str, object]] = [
    _image("ami-0b24a7f1e9d3c5001", _NOBLE.format(arch="amd64", build="20250610"), release="24.04"),
    _image("ami-0b24a7f1e9d3c5002", _NOBLE.format(arch="amd64", build="20251105"), release="24.04"),
    _image("ami-0b24a7f1e9d3c5003", _JAMMY.format(arch="amd64", build="20250516"), release="22.04"),
    _image("ami-0b24a7f1e9d3c5004", _JAMMY.format(arch="amd64", build="20251014"), release="22.04"),
    # Decoys: newer, but the wrong architecture or not Canonical's.
    _image(
        "ami-0b24a7f1e9d3c5005",
        _NOBLE.format(arch="arm64", build="20251201"),
        release="24.04",
        arch="arm64",
    ),
    _image(
        "ami-0b24a7f1e9d3c5006",
        _NOBLE.format(arch="amd64", build="20251202"),
        release="24.04",
        owner="123456789012",
    ),
]

#: The image each OS choice should resolve to in the seeded catalogue.
NEWEST_UBUNTU_AMIS = {
    "ubuntu-24.04": "ami-0b24a7f1e9d3c5002",
    "ubuntu-22.04": "ami-0b24a7f1e9d3c5004",
}


@dataclass
class MotoServer:
    """A running moto server child process."""

    endpoint_url: str
    port: int
    pid: int
    amis_path: Path
    _process: subprocess.Popen[str] | None = field(default=None, repr=False)

    def reset(self) -> None:
        """Forget every resource (instances, VPCs, ...); the image catalogue is re-seeded."""
        reset_moto_server(self.endpoint_url)

    def stop(self, *, timeout_s: float = 10.0) -> None:
        """Stop the child and wait for it to exit."""
        if self._process is None:
            stop_moto_server(self.pid, timeout_s=timeout_s)
            return

        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(timeout=timeout_s)
        for stream in (self._process.stdin, self._process.stdout):
            if stream is not None:
                stream.close()
        logger.info("moto server on port %d stopped", self.port)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def write_image_catalogue(path: Path) -> Path:
    """Write the seeded image catalogue as JSON for ``MOTO_AMIS_PATH``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(UBUNTU_IMAGES, indent=1))
    return path


def start_moto_server(
    *,
    port: int = 0,
    amis_path: Path | None = None,
    log_path: Path | None = None,
    tie_to_caller: bool = True,
    owner_dir: Path | None = None,
) -> MotoServer:
    """Start moto in a child process listening on 127.0.0.1 and wait until it answers.

    ``port=0`` lets the child pick a free port. ``amis_path`` defaults to a fresh file with
    ``UBUNTU_IMAGES``. The child's own log (warnings only) goes to ``log_path`` or is dropped.
    ``owner_dir`` is written on the child's command line, so a sweep of that folder's
    leftovers (``clusterbook.sandbox.hosts.find_sandbox_processes``) finds it too.
    """
    _require_moto()
    if amis_path is None:
        folder = Path(tempfile.mkdtemp(prefix="clusterbook-moto-"))
        amis_path = write_image_catalogue(folder / "amis.json")

    env = dict(os.environ)
    env["MOTO_AMIS_PATH"] = str(amis_path)
    env.pop("MOTO_ENABLE_AMI_VALIDATION", None)
    command = [sys.executable, "-m", "clusterbook.sandbox.moto", "--port", str(port)]
    if tie_to_caller:
        command.append("--exit-on-stdin-eof")
    if owner_dir is not None:
        command.append(f"--owner-dir={owner_dir}")

    log_file = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115
    try:
        process = subprocess.Popen(
            command,
            stdin=subprocess.PIPE if tie_to_caller else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=log_file,
            env=env,
            text=True,
            start_new_session=not tie_to_caller,
        )
    finally:
        if log_path:
            log_file.close()  # type: ignore[union-attr]

    bound_port = _read_ready_port(process)
    endpoint_url = f"http://{LISTEN_HOST}:{bound_port}"
    _wait_until_answering(endpoint_url)
    logger.info("moto server listening on %s (pid %d)", endpoint_url, process.pid)
    return MotoServer(
        endpoint_url=endpoint_url,
        port=bound_port,
        pid=process.pid,
        amis_path=amis_path,
        _process=process if tie_to_caller else None,
    )


def stop_moto_server(pid: int, *, timeout_s: float = 10.0) -> None:
    """Stop a moto server child started with ``tie_to_caller=False``, by its pid."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if _reap(pid):
            return
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    _reap(pid)


def _reap(pid: int) -> bool:
    """True once ``pid`` is gone; collects its exit status if it is our own child."""
    try:
        done, _status = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return True
    except ChildProcessError:
        pass  # started by another process: it reaps it
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def reset_moto_server(endpoint_url: str) -> None:
    """Ask the server to drop all state (moto's own reset API)."""
    request = urllib.request.Request(f"{endpoint_url}/moto-api/reset", method="POST", data=b"")
    with urllib.request.urlopen(request, timeout=10) as response:
        response.read()


def _require_moto() -> None:
    try:
        import moto.server  # noqa: F401
    except ImportError as exc:
        raise MissingComponentError(
            "moto's server mode is not installed",
            hint="install it with: .venv/bin/pip install 'moto[server,ec2,s3,ssm]'",
        ) from exc


def _read_ready_port(process: subprocess.Popen[str]) -> int:
    """The child prints one ready line with its port; anything else means it failed."""
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line.startswith(_READY_PREFIX):
        process.kill()
        process.wait()
        raise ExternalServiceError(
            f"the moto server did not start (exit status {process.returncode})",
            hint="run `python -m clusterbook.sandbox.moto` to see its error",
        )
    return int(line[len(_READY_PREFIX) :].strip())


def _wait_until_answering(endpoint_url: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        try:
            with urllib.request.urlopen(f"{endpoint_url}/moto-api/data.json", timeout=5) as r:
                r.read()
            return
        except OSError as exc:
            if time.monotonic() > deadline:
                raise ExternalServiceError(
                    f"the moto server at {endpoint_url} did not answer within "
                    f"{START_TIMEOUT_S:.0f} s: {exc}"
                ) from exc
            time.sleep(0.05)


def _serve(port: int, *, exit_on_stdin_eof: bool) -> None:
    """The child's side: serve until stdin closes (tied) or a signal arrives."""
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)

    from moto.moto_server.threaded_moto_server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address=LISTEN_HOST, port=port, verbose=False)
    server.start()
    _host, bound_port = server.get_host_and_port()
    print(f"{_READY_PREFIX}{bound_port}", flush=True)

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        if exit_on_stdin_eof:
            while sys.stdin.readline():
                pass
        else:
            signal.pause()
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve moto on 127.0.0.1 (clusterbook sandbox)")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--exit-on-stdin-eof", action="store_true")
    parser.add_argument("--owner-dir", help="the folder of whoever started it (for sweeps)")
    args = parser.parse_args(argv)
    if "MOTO_AMIS_PATH" not in os.environ:
        folder = Path(tempfile.mkdtemp(prefix="clusterbook-moto-"))
        os.environ["MOTO_AMIS_PATH"] = str(write_image_catalogue(folder / "amis.json"))
    _serve(args.port, exit_on_stdin_eof=args.exit_on_stdin_eof)


if __name__ == "__main__":
    main()

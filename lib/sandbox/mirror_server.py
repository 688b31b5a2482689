"""Serving a built package mirror (``clusterbook.sandbox.mirror``) to the sandbox hosts.

A threaded static file server bound to exactly one address: the sandbox's gateway
(``SandboxStatus.gateway``, the root namespace's side of the VPC, the one address the hosts
reach), or 127.0.0.1 without a sandbox. It serves only the mirror's ``repo`` folder, never the
cache around it where the signing key lives. ``apt_source_entry`` is the apt line a host needs
and ``host_setup_script`` the shell script (run as root on the host) that trusts the mirror.
"""

from __future__ import annotations

import http.server
import logging
import threading
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from clusterbook.sandbox.mirror import ARCHITECTURE, COMPONENT, SUITE, MirrorError

logger = logging.getLogger(__name__)

KEYRING_PATH = "/etc/apt/keyrings/clusterbook-mirror.asc"
SOURCES_PATH = "/etc/apt/sources.list.d/clusterbook-mirror.list"


@dataclass
class MirrorServer:
    """A running HTTP server of one mirror folder; ``stop()`` ends it (or use ``with``)."""

    url: str
    address: str
    port: int
    root: Path
    _server: http.server.ThreadingHTTPServer
    _thread: threading.Thread

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)
        logger.info("mirror server at %s stopped", self.url)

    def __enter__(self) -> MirrorServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def serve_mirror(root: Path, *, address: str, port: int = 0) -> MirrorServer:
    """Serve ``root`` over HTTP on ``address`` only; port 0 takes a free one."""
    if not (root / "dists").is_dir():
        raise MirrorError(f"{root} is not a mirror (no dists/ folder)")
    handler = partial(_QuietHandler, directory=str(root))
    try:
        server = http.server.ThreadingHTTPServer((address, port), handler)
    except OSError as exc:
        raise MirrorError(
            f"cannot serve the mirror on {address}:{port}: {exc}",
            hint="is the sandbox up? its gateway address exists only while it runs",
        ) from exc
    server.daemon_threads = True
    bound_port = server.server_address[1]
    thread = threading.Thread(
        target=server.serve_forever, name=f"mirror-{address}:{bound_port}", daemon=True
    )
    thread.start()
    url = f"http://{address}:{bound_port}"
    logger.info("serving the package mirror %s at %s", root, url)
    return MirrorServer(
        url=url, address=address, port=bound_port, root=root, _server=server, _thread=thread
    )


def apt_source_entry(url: str, *, keyring_path: str) -> str:
    """The one-line apt source for the mirror at ``url``, trusting only the key at
    ``keyring_path`` on the host."""
    return f"deb [arch={ARCHITECTURE} signed-by={keyring_path}] {url} {SUITE} {COMPONENT}\n"


def host_setup_script(url: str, *, public_key_text: str, only_source: bool = True) -> str:
    """Shell script (root, on a host) that trusts the mirror's key for the mirror alone and
    adds its source; with ``only_source``, every other apt source is removed, as on a host
    that must install from the mirror and nothing else. Old package lists are dropped."""
    if "PUBLIC KEY BLOCK" not in public_key_text or "PRIVATE" in public_key_text:
        raise MirrorError("host_setup_script takes the mirror's armored public key only")
    entry = apt_source_entry(url, keyring_path=KEYRING_PATH)
    remove = "rm -f /etc/apt/sources.list /etc/apt/sources.list.d/*\n" if only_source else ""
    return (
        "set -e\n"
        f"{remove}"
        "install -d -m 0755 /etc/apt/keyrings\n"
        f"cat > {KEYRING_PATH} <<'CLUSTERBOOK_KEY'\n{public_key_text.strip()}\nCLUSTERBOOK_KEY\n"
        f"chmod 0644 {KEYRING_PATH}\n"
        f"printf '%s' '{entry}' > {SOURCES_PATH}\n"
        "rm -rf /var/lib/apt/lists/*\n"
    )


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    """Static files; each request goes to DEBUG instead of stderr."""

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (the base's name)
        logger.debug("mirror %s: " + format, self.client_address[0], *args)

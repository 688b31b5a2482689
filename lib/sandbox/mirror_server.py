"""Serving a built package mirror (``clusterbook.sandbox.mirror``) to the sandbox hosts.

A threaded static file server bound to exactly one address: the sandbox's gateway
(``SandboxStatus.gateway``, the root namespace's side of the VPC, the one address the hosts
reach), or 127.0.0.1 without a sandbox. It serves only the mirror's ``repo`` folder, never the
cache around it where the signing key lives. ``apt_source_entry`` is the apt line a host needs.
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


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    """Static files; each request goes to DEBUG instead of stderr."""

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (the base's name)
        logger.debug("mirror %s: " + format, self.client_address[0], *args)

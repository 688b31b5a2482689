"""Cluster locks: at most one changing run per cluster, with no lock server.

A lock is an exclusive ``flock`` on ``<state>/locks/<cluster>.lock``. The kernel releases it
when the holding process dies, however it dies, so a lock is never left behind by a crash.
The file also says who holds it (run id, requester, pid, since) so a refused run can tell
the user whom to ask. flock locks belong to an open file, so two threads of one process
(the bot's workers) exclude each other as two processes do.

Known limit: flock is local to one machine (and unreliable on some network filesystems);
engines on several machines sharing one state directory would need a shared lock service.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from clusterbook.archive.index import utc_now
from clusterbook.errors import LockHeldError, UserInputError

logger = logging.getLogger(__name__)

_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


@dataclass
class ClusterLock:
    """A held lock; release it (or use it as a context manager) when the run ends."""

    cluster: str
    path: Path
    handle: IO[str]

    def release(self) -> None:
        if self.handle.closed:
            return
        try:
            self.handle.seek(0)
            self.handle.truncate()
            self.handle.flush()
        finally:
            fcntl.flock(self.handle, fcntl.LOCK_UN)
            self.handle.close()
        logger.debug("released lock on cluster %s", self.cluster)

    def __enter__(self) -> ClusterLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def acquire_cluster_lock(
    locks_dir: Path, *, cluster: str, run_id: str, requester: str
) -> ClusterLock:
    """Take the cluster's lock or raise LockHeldError naming its holder."""
    if not _SAFE.match(cluster):
        raise UserInputError(
            f"cluster name {cluster!r} is not valid",
            hint="use letters, digits, '.', '_' or '-', starting with a letter or digit",
        )
    locks_dir.mkdir(parents=True, exist_ok=True)
    path = locks_dir / f"{cluster}.lock"
    handle = open(path, "a+")

    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = read_holder(path)
        handle.close()
        who = holder.get("run_id", "another run")
        by = holder.get("requester", "someone")
        since = holder.get("since", "an unknown time")
        raise LockHeldError(
            f"cluster {cluster!r} is locked by run {who} of {by} since {since}",
            cluster=cluster, holder=f"{who} ({by})", since=since,
        ) from None

    stale = read_holder(path)
    if stale.get("run_id"):
        logger.info(
            "cluster %s: lock left by run %s (pid %s, no longer running) was released",
            cluster, stale.get("run_id"), stale.get("pid"),
        )
    handle.seek(0)
    handle.truncate()
    json.dump(
        {"run_id": run_id, "requester": requester, "pid": os.getpid(), "since": utc_now()},
        handle,
    )
    handle.flush()
    return ClusterLock(cluster=cluster, path=path, handle=handle)


def read_holder(path: Path) -> dict[str, str]:
    try:
        text = path.read_text()
        return json.loads(text) if text.strip() else {}
    except (OSError, ValueError):
        return {}

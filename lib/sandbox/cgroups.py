"""Each sandbox machine's own cgroup on this machine, as a container engine gives each
container one.

Without it every machine would sit in the root cgroup, and ``systemd-nspawn`` (with no
systemd on this machine to ask for a scope) would put all of them in one shared
``/payload`` cgroup: their systemds would then create and remove the same
``/system.slice/<unit>`` cgroups under each other, and units fail at random with "Failed to
attach to cgroup … No such file or directory" once several machines boot at once.

So before ``systemd-nspawn`` starts, its process moves into ``<hierarchy>/clusterbook/<sandbox
id>/<instance id>`` of every cgroup hierarchy except two: ``memory``, because whoever runs us
may hold this process to a memory limit that a move would escape; and ``cpuset``, because a
new cpuset cgroup has no CPUs until configured. Machines stay in our own cgroup there.

The sandbox id level (``clusterbook.sandbox.network.sandbox_id``) keeps sandboxes that run
side by side apart: a sandbox's clean-up removes its own cgroups only, and the shared
``clusterbook`` folder only once no sandbox has one left.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

logger = logging.getLogger(__name__)

CGROUP_ROOT = "/sys/fs/cgroup"
GROUP = "clusterbook"
LEFT_ALONE = {"memory", "cpuset"}


def machine_hierarchies() -> list[Path]:
    """Mount points of the cgroup hierarchies a machine gets its own cgroup in."""
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        before, _, after = line.partition(" - ")
        fields, (fstype, _source, super_options) = before.split(), after.split()[:3]
        mount_point = fields[4]
        if fstype not in ("cgroup", "cgroup2") or not mount_point.startswith(CGROUP_ROOT + "/"):
            continue
        if LEFT_ALONE & set(super_options.split(",")):
            continue
        found.append(Path(mount_point))
    return found


def create_machine_cgroups(instance_id: str, *, sandbox_id: str) -> list[Path]:
    """Create the machine's cgroups; returns the folders to write its pid into."""
    folders = [hierarchy / GROUP / sandbox_id / instance_id for hierarchy in machine_hierarchies()]
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
    return folders


def remove_machine_cgroups(instance_id: str, *, sandbox_id: str) -> None:
    """Remove the machine's cgroups and whatever its systemd made below them (once empty)."""
    for hierarchy in machine_hierarchies():
        _remove_tree(hierarchy / GROUP / sandbox_id / instance_id)


def remove_sandbox_cgroups(sandbox_id: str) -> list[str]:
    """Remove every machine cgroup of one sandbox (no other sandbox's); returns the ones
    removed. The shared top folder goes too once it is empty."""
    removed = []
    for hierarchy in machine_hierarchies():
        top = hierarchy / GROUP
        ours = top / sandbox_id
        if ours.is_dir():
            for folder in sorted(p for p in ours.iterdir() if p.is_dir()):
                _remove_tree(folder)
                removed.append(f"cgroup {folder}")
            _remove_tree(ours)
        if top.is_dir() and not any(p.is_dir() for p in top.iterdir()):
            _rmdir(top)
    return removed


def _remove_tree(folder: Path) -> None:
    """cgroup folders go bottom-up with rmdir (their files cannot be deleted)."""
    if not folder.is_dir():
        return
    for current, subfolders, _files in os.walk(folder, topdown=False):
        for name in subfolders:
            _rmdir(Path(current) / name)
    _rmdir(folder)


def _rmdir(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError as exc:
        logger.warning("cgroup %s not removed: %s", folder, exc)

"""The sandbox hosts' base image: a Debian 12 root file system built with debootstrap.

Built once and cached outside the clone at ``<cache>/images/<recipe hash>/rootfs``, so a
change to the recipe (packages, users, boot units) builds a new image and an unchanged one
is reused. Every host boots from an overlay on this directory and never writes into it.

What the image holds, and why:

- Debian 12 minbase with systemd as init, dbus, openssh-server, sudo, iproute2,
  ca-certificates, gnupg and curl: what the bootstrap runbook expects of an Ubuntu AMI.
- A user ``ubuntu`` with passwordless sudo who may read the journal, as on Ubuntu's cloud
  images.
- No sshd host keys and an empty machine id: each host gets its own at first boot.
- sshd with ``MaxStartups`` raised (Fabric opens many sessions at once) and passwords off.
- A boot unit that makes the cgroup controllers writable inside the machine, as kind's node
  entrypoint does: systemd-nspawn mounts them read-only, a container runtime needs them
  writable, and a fresh mount of the same hierarchy inside the machine is.

The Debian mirror is read from this machine's apt sources at build time; no mirror address
is written in the repository.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from clusterbook.errors import ClusterbookError, MissingComponentError

logger = logging.getLogger(__name__)

SUITE = "bookworm"
PACKAGES = (
    "systemd",
    "systemd-sysv",
    "dbus",
    "libpam-systemd",
    "openssh-server",
    "sudo",
    "iproute2",
    "iputils-ping",
    "ca-certificates",
    "gnupg",
    "curl",
)
DEFAULT_USER = "ubuntu"
DEFAULT_UID = 1000
#: As on Ubuntu's cloud images: sudo, and reading the system journal and logs.
DEFAULT_USER_GROUPS = ("sudo", "adm", "systemd-journal")

SSHD_CONFIG = """\
# clusterbook sandbox host: many parallel sessions from Fabric, keys only.
MaxStartups 200:30:400
MaxSessions 64
PasswordAuthentication no
KbdInteractiveAuthentication no
UseDNS no
"""

CGROUP_SCRIPT = """\
#!/bin/sh
# Make the cgroup controllers writable inside this machine, as kind's node entrypoint does:
# systemd-nspawn mounts them read-only. For each one, mount the hierarchy afresh (writable)
# aside, and bind this machine's own cgroup of it over the read-only mount; mounting on top
# leaves no moment in which the path is missing.
set -eu
if [ "$(stat -f -c %T /sys/fs/cgroup)" = "cgroup2fs" ]; then
    mount -o remount,rw /sys/fs/cgroup
    exit 0
fi
staging=/run/clusterbook-cgroups
mkdir -p "$staging"
awk '{
    for (i = 7; i <= NF && $i != "-"; i++) ;
    if ($(i + 1) == "cgroup" && $5 ~ "^/sys/fs/cgroup/") print $5, $6, $(i + 3)
}' /proc/self/mountinfo |
while read -r target mount_options super_options; do
    case ",$super_options," in *,name=*) continue ;; esac
    case ",$mount_options," in *,ro,*) ;; *) continue ;; esac
    controllers=$(echo "$super_options" | tr ',' '\\n' | grep -v -e '^rw$' -e '^ro$' | paste -sd, -)
    own=$(awk -F: -v c="$controllers" '$2 == c {print $3}' /proc/self/cgroup)
    mkdir -p "$staging/$controllers"
    mount -t cgroup -o "$controllers" cgroup "$staging/$controllers"
    mount --bind "$staging/$controllers$own" "$target"
    umount "$staging/$controllers"
done
"""

CGROUP_UNIT = """\
[Unit]
Description=Make cgroup controllers writable (clusterbook sandbox host)
DefaultDependencies=no
After=local-fs.target
Before=sysinit.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/local/sbin/clusterbook-cgroups-writable

[Install]
WantedBy=sysinit.target
"""

#: Units that only make sense on a real disk or console; masked to keep boot short and clean.
MASKED_UNITS = (
    "e2scrub_reap.service",
    "e2scrub_all.timer",
    "fstrim.timer",
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "systemd-pstore.service",
)

#: Bump when the customisation below changes in a way the recipe fields do not show.
RECIPE_REVISION = 3


class ImageBuildError(ClusterbookError):
    """The base image could not be built; the message holds the tool's last output."""


@dataclass(frozen=True)
class BaseImage:
    """A built base image: a root directory every host overlays."""

    rootfs: Path
    recipe_hash: str


def default_cache_dir(environ: Mapping[str, str]) -> Path:
    """Where heavy set-up results live, by the same rule as scripts/setup.sh."""
    explicit = environ.get("CLUSTERBOOK_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    base = environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "clusterbook"


def image_recipe() -> dict[str, object]:
    """What decides the image's content; its hash names the cache folder."""
    return {
        "suite": SUITE,
        "variant": "minbase",
        "packages": list(PACKAGES),
        "user": DEFAULT_USER,
        "groups": list(DEFAULT_USER_GROUPS),
        "sshd": SSHD_CONFIG,
        "cgroup_script": CGROUP_SCRIPT,
        "cgroup_unit": CGROUP_UNIT,
        "masked": list(MASKED_UNITS),
        "revision": RECIPE_REVISION,
    }


def recipe_hash() -> str:
    encoded = json.dumps(image_recipe(), sort_keys=True).encode()
    return hashlib.sha256(encoded).hexdigest()[:16]


def image_dir(cache_dir: Path) -> Path:
    return cache_dir / "images" / recipe_hash()


def find_cached_image(cache_dir: Path) -> BaseImage | None:
    """The built image for the current recipe, or None when it has not been built."""
    folder = image_dir(cache_dir)
    if (folder / "ready.json").is_file() and (folder / "rootfs" / "usr").is_dir():
        return BaseImage(rootfs=folder / "rootfs", recipe_hash=folder.name)
    return None


def find_debian_mirror(apt_dir: Path = Path("/etc/apt")) -> str:
    """The Debian archive this machine's apt uses for the main suite (not security)."""
    candidates: list[tuple[str, list[str]]] = []
    for path in [apt_dir / "sources.list", *sorted((apt_dir / "sources.list.d").glob("*"))]:
        if not path.is_file():
            continue
        text = path.read_text(errors="replace")
        if path.suffix == ".sources":
            candidates.extend(_parse_deb822(text))
        elif path.suffix == ".list" or path.name == "sources.list":
            candidates.extend(_parse_one_line(text))

    for uri, suites in candidates:
        if SUITE in suites and "security" not in uri:
            return uri.rstrip("/")
    raise MissingComponentError(
        f"no Debian {SUITE} archive found in {apt_dir}/sources.list or sources.list.d",
        hint=f"configure apt with a Debian {SUITE} mirror (a 'deb' entry for suite {SUITE})",
    )


def _parse_deb822(text: str) -> list[tuple[str, list[str]]]:
    found = []
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            if line.startswith("#") or ":" not in line or line[:1].isspace():
                continue
            key, value = line.split(":", 1)
            fields[key.strip().lower()] = value.strip()
        if "deb" not in fields.get("types", "").split() or fields.get("enabled") == "no":
            continue
        for uri in fields.get("uris", "").split():
            found.append((uri, fields.get("suites", "").split()))
    return found


def _parse_one_line(text: str) -> list[tuple[str, list[str]]]:
    found = []
    for line in text.splitlines():
        words = re.sub(r"\[[^\]]*\]", "", line).split()
        if len(words) >= 3 and words[0] == "deb":
            found.append((words[1], [words[2]]))
    return found


def build_base_image(*, cache_dir: Path, mirror: str | None = None) -> BaseImage:
    """Return the cached base image, building it first (about a minute) when missing.

    Safe to call from several processes at once: a lock file serialises builds, and a
    half-built image (a crash mid-build) is never used, because only a finished build is
    renamed into place.
    """
    cached = find_cached_image(cache_dir)
    if cached is not None:
        return cached

    _require_programs()
    folder = image_dir(cache_dir)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        cached = find_cached_image(cache_dir)
        if cached is not None:
            return cached
        _build_into(folder, mirror=mirror or find_debian_mirror())
    image = find_cached_image(cache_dir)
    assert image is not None
    return image


def _build_into(folder: Path, *, mirror: str) -> None:
    work = folder.with_name(folder.name + ".partial")
    if work.exists():
        shutil.rmtree(work)
    rootfs = work / "rootfs"
    rootfs.parent.mkdir(parents=True)

    started = time.monotonic()
    logger.info("building the sandbox base image %s (debootstrap %s, ~1 min)", folder.name, SUITE)
    _run(
        [
            "debootstrap",
            "--variant=minbase",
            f"--include={','.join(PACKAGES)}",
            SUITE,
            str(rootfs),
            mirror,
        ],
        what="debootstrap",
    )
    customise_rootfs(rootfs)

    (work / "ready.json").write_text(
        json.dumps({"recipe": image_recipe(), "built_s": round(time.monotonic() - started, 1)})
    )
    if folder.exists():
        shutil.rmtree(folder)
    work.rename(folder)
    logger.info("base image ready in %.0f s: %s", time.monotonic() - started, folder)


def customise_rootfs(rootfs: Path) -> None:
    """Turn a fresh debootstrap root into the hosts' common image (see the module doc)."""
    useradd = ["useradd", "--create-home", "--shell", "/bin/bash", "--uid", str(DEFAULT_UID)]
    groups = ",".join(DEFAULT_USER_GROUPS)
    _run(["chroot", str(rootfs), *useradd, "--groups", groups, DEFAULT_USER], what="useradd")
    sudoers = rootfs / "etc/sudoers.d/90-cloud-user"
    sudoers.write_text(f"{DEFAULT_USER} ALL=(ALL) NOPASSWD:ALL\n")
    sudoers.chmod(0o440)

    for key in (rootfs / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    (rootfs / "etc/machine-id").write_text("")
    (rootfs / "etc/hostname").write_text("localhost\n")
    (rootfs / "etc/default/locale").write_text("LANG=C.UTF-8\n")  # as cloud images set it
    (rootfs / "etc/ssh/sshd_config.d/50-clusterbook.conf").write_text(SSHD_CONFIG)

    script = rootfs / "usr/local/sbin/clusterbook-cgroups-writable"
    script.write_text(CGROUP_SCRIPT)
    script.chmod(0o755)
    (rootfs / "etc/systemd/system/clusterbook-cgroups-writable.service").write_text(CGROUP_UNIT)
    wants = rootfs / "etc/systemd/system/sysinit.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    link = wants / "clusterbook-cgroups-writable.service"
    if not link.is_symlink():
        link.symlink_to("/etc/systemd/system/clusterbook-cgroups-writable.service")
    for unit in MASKED_UNITS:
        masked = rootfs / "etc/systemd/system" / unit
        if not masked.is_symlink():
            masked.symlink_to("/dev/null")

    _run(["chroot", str(rootfs), "apt-get", "clean"], what="apt-get clean")


def _require_programs() -> None:
    for program, package in (("debootstrap", "debootstrap"), ("chroot", "coreutils")):
        if shutil.which(program) is None:
            raise MissingComponentError(
                f"{program} is not installed; the sandbox needs it to build its base image",
                hint=f"apt-get install {package} (or run scripts/setup.sh)",
            )
    if os.geteuid() != 0:
        raise ImageBuildError(
            "building the sandbox base image needs root", hint="run it as root (sudo)"
        )


def _run(command: list[str], *, what: str) -> None:
    logger.debug("running %s", " ".join(command))
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        tail = (result.stdout + result.stderr).strip().splitlines()[-15:]
        raise ImageBuildError(
            f"{what} failed with exit status {result.returncode}:\n" + "\n".join(tail)
        )

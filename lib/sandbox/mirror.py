"""A local, signed apt repository that sandbox hosts install Kubernetes node packages from.

An air-gapped site installs its nodes from a mirror it controls; the sandbox does the same.
The mirror holds:

- ``kubeadm``, ``kubelet`` and ``kubectl`` at the pinned Kubernetes version, packed here with
  ``dpkg-deb`` from the binaries ``clusterbook.kube.toolchain`` built (the kubelet with its
  systemd unit and the kubeadm drop-in, written for clusterbook);
- the Debian 12 node prerequisites (containerd, runc, conntrack, socat, ebtables, ethtool,
  iptables) and every dependency of theirs the sandbox base image lacks, fetched with
  ``apt-get download`` through this machine's own apt configuration (no mirror address is
  written here).

``apt-ftparchive`` writes ``Packages`` and ``Release``; both ``InRelease`` and ``Release.gpg``
are signed with a key generated once into a private GnuPG home under
``<cache>/mirror/gnupg``. Only the public half is ever copied out (into the served tree, and
to the hosts); the private key stays in the cache and is never printed.

A built mirror is cached at ``<cache>/mirror/<key>/repo``, the key being a hash of the
Kubernetes version, the package lists, the unit texts and the base image it complements, so a
warm machine reuses it. ``clusterbook.sandbox.mirror_server`` serves it to the hosts.

Known shortcomings: ``cri-tools`` and ``kubernetes-cni``, which upstream's kubeadm package
depends on, are neither in Debian 12 nor built by the toolchain, so kubeadm here does not
depend on them (CNI plugins have to come another way). Only amd64 is built. ``sandbox up`` does not
build or serve the mirror: it needs the Kubernetes binaries (a Go build of ten minutes when
cold) that the sandbox itself does not; the bootstrap runbook calls ``build_mirror`` and
``mirror_server.serve_mirror`` when it installs nodes.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from clusterbook.errors import ClusterbookError, MissingComponentError
from clusterbook.kube.toolchain import KubeBinaries

logger = logging.getLogger(__name__)

KUBE_PACKAGES = ("kubeadm", "kubelet", "kubectl")
NODE_PREREQUISITES = (
    "containerd",
    "runc",
    "conntrack",
    "socat",
    "ebtables",
    "ethtool",
    "iptables",
)
ARCHITECTURE = "amd64"
SUITE = "stable"
COMPONENT = "main"
ORIGIN = "clusterbook"
PACKAGE_REVISION = "1"
MAINTAINER = "clusterbook <clusterbook@localhost>"
KEY_USER_ID = "clusterbook sandbox mirror <mirror@localhost>"
PUBLIC_KEY_NAME = "clusterbook-mirror.asc"
#: Bump when the way the mirror is built changes, so cached mirrors are rebuilt.
RECIPE_REVISION = 1
COMMAND_TIMEOUT_S = 600.0

KUBELET_UNIT = """\
[Unit]
Description=Kubernetes node agent (kubelet)
Documentation=https://kubernetes.io/docs/reference/command-line-tools-reference/kubelet/
Wants=network-online.target
After=network-online.target
StartLimitIntervalSec=0

[Service]
ExecStart=/usr/bin/kubelet
Restart=always
RestartSec=10

[Install]
WantedBy=multi-user.target
"""

# kubeadm writes the kubelet's bootstrap kubeconfig, its config file and its flags; this
# drop-in points the plain unit above at them.
KUBEADM_DROPIN = """\
# Written into the clusterbook kubelet package: run the kubelet the way kubeadm set it up.
[Service]
Environment="KUBELET_KUBECONFIG_ARGS=--bootstrap-kubeconfig=/etc/kubernetes/bootstrap-kubelet.conf --kubeconfig=/etc/kubernetes/kubelet.conf"
Environment="KUBELET_CONFIG_ARGS=--config=/var/lib/kubelet/config.yaml"
# Flags kubeadm computed at init or join time (KUBELET_KUBEADM_ARGS).
EnvironmentFile=-/var/lib/kubelet/kubeadm-flags.env
# The operator's own flags (KUBELET_EXTRA_ARGS); the last word.
EnvironmentFile=-/etc/default/kubelet
ExecStart=
ExecStart=/usr/bin/kubelet $KUBELET_KUBECONFIG_ARGS $KUBELET_CONFIG_ARGS $KUBELET_KUBEADM_ARGS $KUBELET_EXTRA_ARGS
"""  # noqa: E501 (systemd lines cannot be wrapped)

KUBELET_POSTINST = """\
#!/bin/sh
# Enable, but do not start: the kubelet waits for kubeadm to configure it.
set -e
if [ "$1" = configure ] && [ -d /run/systemd/system ]; then
    systemctl daemon-reload || true
    systemctl enable kubelet.service || true
fi
"""

KUBELET_PRERM = """\
#!/bin/sh
set -e
if [ "$1" = remove ] && [ -d /run/systemd/system ]; then
    systemctl disable --now kubelet.service || true
fi
"""


class MirrorError(ClusterbookError):
    """The package mirror could not be built, signed or served."""


@dataclass(frozen=True)
class DebSpec:
    """One package clusterbook packs itself."""

    name: str
    description: str
    depends: tuple[str, ...]
    files: tuple[tuple[str, str], ...]  # (path in the package, text) besides the binary


@dataclass(frozen=True)
class Mirror:
    """A built, signed mirror: serve ``root``; give hosts ``public_key``."""

    root: Path
    key: str
    public_key: Path
    packages: tuple[str, ...]

    @property
    def public_key_text(self) -> str:
        return self.public_key.read_text()


def kube_deb_specs(kubernetes_version: str) -> tuple[DebSpec, ...]:
    """The three Kubernetes packages; kubeadm pins the kubelet and kubectl it was built with."""
    version = deb_version(kubernetes_version)
    return (
        DebSpec(
            name="kubelet",
            description="Kubernetes node agent",
            depends=("conntrack", "ebtables", "ethtool", "iptables", "mount", "socat"),
            files=(
                ("lib/systemd/system/kubelet.service", KUBELET_UNIT),
                ("lib/systemd/system/kubelet.service.d/10-kubeadm.conf", KUBEADM_DROPIN),
            ),
        ),
        DebSpec(
            name="kubeadm",
            description="Kubernetes cluster bootstrapping tool",
            depends=(f"kubelet (= {version})", f"kubectl (= {version})"),
            files=(),
        ),
        DebSpec(
            name="kubectl",
            description="Kubernetes command-line client",
            depends=(),
            files=(),
        ),
    )


def deb_version(kubernetes_version: str) -> str:
    """``v1.37.2`` -> ``1.37.2-1``."""
    return f"{kubernetes_version.removeprefix('v')}-{PACKAGE_REVISION}"


def mirror_key(
    *, kubernetes_version: str, prerequisites: Sequence[str], base_image_hash: str
) -> str:
    """The cache folder name: what decides the mirror's content."""
    recipe = {
        "kubernetes": kubernetes_version,
        "kube_packages": list(KUBE_PACKAGES),
        "prerequisites": sorted(prerequisites),
        "base_image": base_image_hash,
        "units": [KUBELET_UNIT, KUBEADM_DROPIN, KUBELET_POSTINST, KUBELET_PRERM],
        "suite": [SUITE, COMPONENT, ARCHITECTURE, ORIGIN],
        "revision": RECIPE_REVISION,
    }
    digest = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]
    return f"k8s-{kubernetes_version}_{digest}"


def find_cached_mirror(cache_dir: Path, key: str) -> Mirror | None:
    folder = cache_dir / "mirror" / key
    try:
        ready = json.loads((folder / "ready.json").read_text())
    except (OSError, ValueError):
        return None
    root = folder / "repo"
    if not (root / "dists" / SUITE / "InRelease").is_file():
        return None
    return Mirror(
        root=root,
        key=key,
        public_key=root / PUBLIC_KEY_NAME,
        packages=tuple(ready.get("packages", ())),
    )


def build_mirror(
    *,
    cache_dir: Path,
    binaries: KubeBinaries,
    base_rootfs: Path,
    base_image_hash: str,
    prerequisites: Sequence[str] = NODE_PREREQUISITES,
) -> Mirror:
    """The signed mirror for these binaries and this base image: cached, else built (seconds).

    ``base_rootfs`` is the image the hosts boot: the Debian dependencies it already has are
    left out of the pool.
    """
    key = mirror_key(
        kubernetes_version=binaries.versions.kubernetes,
        prerequisites=prerequisites,
        base_image_hash=base_image_hash,
    )
    cached = find_cached_mirror(cache_dir, key)
    if cached is not None:
        logger.debug("mirror %s is cached", key)
        return cached

    require_mirror_tools()
    mirror_dir = cache_dir / "mirror"
    mirror_dir.mkdir(parents=True, exist_ok=True)
    with _build_lock(mirror_dir):
        cached = find_cached_mirror(cache_dir, key)
        if cached is not None:
            return cached
        started = time.monotonic()
        logger.info("building the package mirror %s", key)
        work = Path(tempfile.mkdtemp(prefix=f"{key}.partial-", dir=mirror_dir))
        try:
            names = _build_into(
                work / "repo",
                binaries=binaries,
                base_rootfs=base_rootfs,
                prerequisites=prerequisites,
                gnupg_home=mirror_dir / "gnupg",
            )
            (work / "ready.json").write_text(
                json.dumps({"packages": names, "built_at": time.time()}, indent=1)
            )
            work.replace(mirror_dir / key)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        logger.info("mirror %s built in %.0f s", key, time.monotonic() - started)
    mirror = find_cached_mirror(cache_dir, key)
    if mirror is None:
        raise MirrorError(f"the mirror {key} was built but is not complete in {mirror_dir}")
    return mirror


def require_mirror_tools() -> None:
    for program, package in (
        ("dpkg-deb", "dpkg"),
        ("apt-get", "apt"),
        ("apt-ftparchive", "apt-utils"),
        ("gpg", "gnupg"),
        ("gpgconf", "gnupg"),
    ):
        if shutil.which(program) is None:
            raise MissingComponentError(
                f"building the package mirror needs {program!r}",
                hint=f"apt-get install {package}",
            )


def _build_into(
    root: Path,
    *,
    binaries: KubeBinaries,
    base_rootfs: Path,
    prerequisites: Sequence[str],
    gnupg_home: Path,
) -> list[str]:
    pool = root / "pool" / COMPONENT
    pool.mkdir(parents=True)
    names = []
    for spec in kube_deb_specs(binaries.versions.kubernetes):
        build_kube_deb(spec, binaries=binaries, pool_dir=pool)
        names.append(spec.name)

    debian = resolve_debian_packages(prerequisites, base_rootfs=base_rootfs)
    download_debian_packages(debian, pool_dir=pool)
    names.extend(name for name, _ in debian)

    write_repository_metadata(root)
    fingerprint = ensure_signing_key(gnupg_home)
    sign_release(root, gnupg_home=gnupg_home, fingerprint=fingerprint)
    export_public_key(gnupg_home, fingerprint=fingerprint, target=root / PUBLIC_KEY_NAME)
    return sorted(names)


def build_kube_deb(spec: DebSpec, *, binaries: KubeBinaries, pool_dir: Path) -> Path:
    """Pack one binary (plus its files) as ``<name>_<version>_amd64.deb`` into ``pool_dir``."""
    version = deb_version(binaries.versions.kubernetes)
    with tempfile.TemporaryDirectory(prefix=f"deb-{spec.name}-") as staging_name:
        staging = Path(staging_name)
        staging.chmod(0o755)  # the package's "./" entry
        binary = staging / "usr/bin" / spec.name
        binary.parent.mkdir(parents=True)
        shutil.copy2(binaries.path(spec.name), binary)
        binary.chmod(0o755)
        for relative, text in spec.files:
            target = staging / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
            target.chmod(0o644)

        control = staging / "DEBIAN"
        control.mkdir(mode=0o755)
        installed_kib = sum(p.stat().st_size for p in staging.rglob("*") if p.is_file()) // 1024
        fields = {
            "Package": spec.name,
            "Version": version,
            "Architecture": ARCHITECTURE,
            "Maintainer": MAINTAINER,
            "Installed-Size": str(installed_kib),
            "Depends": ", ".join(spec.depends),
            "Section": "admin",
            "Priority": "optional",
            "Homepage": "https://kubernetes.io",
            "Description": f"{spec.description}\n Kubernetes {binaries.versions.kubernetes}, "
            "built from the pinned Go modules by clusterbook.",
        }
        (control / "control").write_text(
            "".join(f"{name}: {value}\n" for name, value in fields.items() if value)
        )
        if spec.name == "kubelet":
            for script, text in (("postinst", KUBELET_POSTINST), ("prerm", KUBELET_PRERM)):
                (control / script).write_text(text)
                (control / script).chmod(0o755)

        target = pool_dir / f"{spec.name}_{version}_{ARCHITECTURE}.deb"
        # Fast gzip: the binaries are large and the mirror only travels over a local link.
        build = ["dpkg-deb", "--root-owner-group", "-Zgzip", "-z1", "--build"]
        _run([*build, str(staging), str(target)], what=f"dpkg-deb --build {spec.name}")
    logger.info("packed %s", target.name)
    return target


def resolve_debian_packages(names: Sequence[str], *, base_rootfs: Path) -> list[tuple[str, str]]:
    """``(name, version)`` of ``names`` and of every dependency ``base_rootfs`` lacks.

    apt itself resolves it: a simulated install against the image's dpkg status, without
    recommends. The requested packages are always included, installed in the image or not.
    """
    status = base_rootfs / "var/lib/dpkg/status"
    if not status.is_file():
        raise MirrorError(f"no dpkg status in the base image at {status}")
    simulated = _run(
        ["apt-get", "-s", "-q", "-o", f"Dir::State::status={status}", "install"]
        + ["--no-install-recommends", *names],
        what="apt-get -s install (resolving the node prerequisites)",
    )
    chosen = dict(re.findall(r"^Inst (\S+) (?:\[\S+\] )?\((\S+)", simulated, re.MULTILINE))
    missing = [name for name in names if name not in chosen]
    if missing:
        versions = _candidate_versions(missing)
        chosen.update(versions)
    return sorted(chosen.items())


def _candidate_versions(names: Sequence[str]) -> dict[str, str]:
    policy = _run(["apt-cache", "policy", *names], what="apt-cache policy")
    found = dict(re.findall(r"^(\S+):\n\s+Installed: .*\n\s+Candidate: (\S+)", policy, re.M))
    unknown = [n for n in names if found.get(n, "(none)") == "(none)"]
    if unknown:
        raise MirrorError(
            f"apt knows no installable version of {', '.join(unknown)}",
            hint="run `apt-get update` (the mirror reads Debian through this machine's apt)",
        )
    return {name: found[name] for name in names}


def download_debian_packages(packages: Sequence[tuple[str, str]], *, pool_dir: Path) -> None:
    """Fetch exactly these versions into ``pool_dir`` through this machine's apt sources."""
    wanted = [f"{name}={version}" for name, version in packages]
    logger.info("downloading %d Debian packages: %s", len(wanted), " ".join(wanted))
    _run(["apt-get", "download", "-q", *wanted], what="apt-get download", cwd=pool_dir)


def write_repository_metadata(root: Path) -> None:
    """``dists/<suite>/<component>/binary-<arch>/Packages(.gz)`` and ``dists/<suite>/Release``."""
    binary_dir = root / "dists" / SUITE / COMPONENT / f"binary-{ARCHITECTURE}"
    binary_dir.mkdir(parents=True, exist_ok=True)
    packages = _run(["apt-ftparchive", "packages", "pool"], what="apt-ftparchive", cwd=root)
    (binary_dir / "Packages").write_text(packages)
    _run(["gzip", "-9", "-k", "-n", "-f", str(binary_dir / "Packages")], what="gzip Packages")

    options = {
        "Origin": ORIGIN,
        "Label": ORIGIN,
        "Suite": SUITE,
        "Codename": SUITE,
        "Architectures": ARCHITECTURE,
        "Components": COMPONENT,
        "Description": "clusterbook sandbox mirror",
    }
    flags = [f"-oAPT::FTPArchive::Release::{name}={value}" for name, value in options.items()]
    release = _run(
        ["apt-ftparchive", *flags, "release", f"dists/{SUITE}"],
        what="apt-ftparchive release",
        cwd=root,
    )
    (root / "dists" / SUITE / "Release").write_text(release)


def ensure_signing_key(gnupg_home: Path) -> str:
    """The fingerprint of the mirror's signing key, generated on first use (no passphrase)."""
    gnupg_home.mkdir(mode=0o700, parents=True, exist_ok=True)
    gnupg_home.chmod(0o700)
    with _gpg_session(gnupg_home):
        fingerprint = _secret_key_fingerprint(gnupg_home)
        if fingerprint is None:
            generate = ["--passphrase", "", "--quick-gen-key", KEY_USER_ID]
            _gpg(gnupg_home, *generate, "ed25519", "sign", "never")
            logger.info("generated the mirror's signing key in %s", gnupg_home)
            fingerprint = _secret_key_fingerprint(gnupg_home)
    if fingerprint is None:
        raise MirrorError(f"gpg made no signing key in {gnupg_home}")
    return fingerprint


def sign_release(root: Path, *, gnupg_home: Path, fingerprint: str) -> None:
    """``InRelease`` (clear-signed) and ``Release.gpg`` (detached) beside ``Release``."""
    suite = root / "dists" / SUITE
    with _gpg_session(gnupg_home):
        for flag, name in (("--clearsign", "InRelease"), ("--detach-sign", "Release.gpg")):
            signer = ["--local-user", fingerprint, "--digest-algo", "SHA512", "--armor"]
            _gpg(gnupg_home, *signer, flag, "--output", str(suite / name), str(suite / "Release"))


def export_public_key(gnupg_home: Path, *, fingerprint: str, target: Path) -> None:
    with _gpg_session(gnupg_home):
        armored = _gpg(gnupg_home, "--armor", "--export", fingerprint)
    if "PUBLIC KEY BLOCK" not in armored:
        raise MirrorError(f"gpg exported no public key for {fingerprint}")
    target.write_text(armored)


def _secret_key_fingerprint(gnupg_home: Path) -> str | None:
    listing = _gpg(gnupg_home, "--with-colons", "--list-secret-keys")
    for line in listing.splitlines():
        fields = line.split(":")
        if fields[0] == "fpr":
            return fields[9]
    return None


def _gpg(gnupg_home: Path, *args: str) -> str:
    return _run(
        ["gpg", "--homedir", str(gnupg_home), "--batch", "--quiet", "--no-tty", *args],
        what=f"gpg {args[-1] if args else ''}".strip(),
    )


@contextlib.contextmanager
def _gpg_session(gnupg_home: Path) -> Iterator[None]:
    """Stop the gpg-agent that gpg starts on its own, so nothing outlives the build."""
    try:
        yield
    finally:
        subprocess.run(
            ["gpgconf", "--homedir", str(gnupg_home), "--kill", "all"],
            capture_output=True,
            check=False,
            timeout=30,
        )


@contextlib.contextmanager
def _build_lock(mirror_dir: Path) -> Iterator[None]:
    with open(mirror_dir / ".build.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _run(command: list[str], *, what: str, cwd: Path | None = None) -> str:
    environment = {**os.environ, "LC_ALL": "C", "DEBIAN_FRONTEND": "noninteractive"}
    try:
        result = subprocess.run(
            command,
            capture_output=True,
            text=True,
            check=False,
            cwd=cwd,
            env=environment,
            timeout=COMMAND_TIMEOUT_S,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise MirrorError(f"{what} could not run: {exc}") from exc
    if result.returncode != 0:
        tail = "\n".join(result.stderr.splitlines()[-15:])
        raise MirrorError(f"{what} failed with exit status {result.returncode}:\n{tail}")
    return result.stdout

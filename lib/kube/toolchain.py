"""Where the pinned control-plane binaries live, and how to build them when they are missing.

The versions are pinned in ``toolchain/versions.env`` at the repository root (the one place);
binaries are built by ``toolchain/build.sh`` into
``<cache>/kube/<versions key>/bin`` and reused from there.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from clusterbook.errors import ConfigError, MissingComponentError

logger = logging.getLogger(__name__)

#: The repository's toolchain folder (wrapper Go modules, versions.env, build.sh).
TOOLCHAIN_DIR = Path(__file__).resolve().parent.parent.parent / "toolchain"

#: Every binary build.sh produces, by name.
BINARY_NAMES = (
    "etcd",
    "etcdctl",
    "kwok",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubectl",
    "kubeadm",
    "kubelet",
    "kube-proxy",
)

SETUP_HINT = "run `bash scripts/setup.sh` (builds them with Go; tens of minutes when cold)"


@dataclass(frozen=True)
class PinnedVersions:
    """The upstream versions clusterbook builds."""

    kubernetes: str
    etcd: str
    kwok: str
    go_minimum: str

    @property
    def key(self) -> str:
        """Cache folder name; must match scripts/setup.d/20-kube.sh."""
        return f"k8s-{self.kubernetes}_etcd-{self.etcd}_kwok-{self.kwok}"


@dataclass(frozen=True)
class KubeBinaries:
    """Paths of the built binaries of one pinned set of versions."""

    versions: PinnedVersions
    bin_dir: Path

    def path(self, name: str) -> Path:
        if name not in BINARY_NAMES:
            raise ValueError(f"unknown binary {name!r}")
        return self.bin_dir / name

    @property
    def kubectl(self) -> Path:
        return self.path("kubectl")


def read_pinned_versions(toolchain_dir: Path = TOOLCHAIN_DIR) -> PinnedVersions:
    """Parse ``versions.env`` (plain ``NAME=value`` lines; ``#`` comments)."""
    path = toolchain_dir / "versions.env"
    values: dict[str, str] = {}
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read the pinned versions in {path}: {exc}") from exc

    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        name, _, value = line.partition("=")
        values[name.strip()] = value.strip().strip("\"'")

    try:
        return PinnedVersions(
            kubernetes=values["KUBERNETES_VERSION"],
            etcd=values["ETCD_VERSION"],
            kwok=values["KWOK_VERSION"],
            go_minimum=values["GO_MINIMUM"],
        )
    except KeyError as exc:
        raise ConfigError(f"{path} does not pin {exc.args[0]}") from exc


def default_cache_dir() -> Path:
    """``$CLUSTERBOOK_CACHE``, else ``$XDG_CACHE_HOME/clusterbook``, else ``~/.cache/...``.

    For edges only (setup, test fixtures, benchmarks); the library takes the path as input.
    """
    explicit = os.environ.get("CLUSTERBOOK_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "clusterbook"


def binaries_dir(cache_dir: Path, versions: PinnedVersions) -> Path:
    return cache_dir / "kube" / versions.key / "bin"


def missing_binaries(binaries: KubeBinaries) -> list[str]:
    """Names of pinned binaries not (yet) present and executable."""
    return [name for name in BINARY_NAMES if not os.access(binaries.path(name), os.X_OK)]


def locate_binaries(cache_dir: Path, *, versions: PinnedVersions | None = None) -> KubeBinaries:
    """The cached binaries; raises MissingComponentError naming what is missing and the fix."""
    versions = versions or read_pinned_versions()
    binaries = KubeBinaries(versions=versions, bin_dir=binaries_dir(cache_dir, versions))

    missing = missing_binaries(binaries)
    if missing:
        raise MissingComponentError(
            f"Kubernetes binaries {', '.join(missing)} ({versions.key}) are not built in "
            f"{binaries.bin_dir}",
            hint=SETUP_HINT,
        )
    return binaries


def build_binaries(cache_dir: Path, *, versions: PinnedVersions | None = None) -> KubeBinaries:
    """Build whatever is missing with ``toolchain/build.sh`` (slow when cold), then locate."""
    versions = versions or read_pinned_versions()
    bin_dir = binaries_dir(cache_dir, versions)
    if shutil.which("go") is None:
        raise MissingComponentError(
            "Go is not installed; it is needed to build the Kubernetes binaries",
            hint=f"install Go >= {versions.go_minimum} (the official Go install guide, "
            "or a distribution package of that version)",
        )

    logger.info("building Kubernetes binaries %s into %s", versions.key, bin_dir)
    result = subprocess.run(
        ["nice", "-n", "10", str(TOOLCHAIN_DIR / "build.sh"), str(bin_dir)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise MissingComponentError(
            f"building the Kubernetes binaries failed (exit {result.returncode}): "
            f"{result.stderr[-2000:]}",
            hint=SETUP_HINT,
        )
    (bin_dir / ".complete").touch()
    return locate_binaries(cache_dir, versions=versions)

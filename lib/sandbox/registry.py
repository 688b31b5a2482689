"""A local image registry with the control-plane images kubeadm pulls, as at an air-gapped site.

Three parts:

- the tools, built from Go modules pinned in ``toolchain/versions.env`` by
  ``toolchain/build-registry.sh`` into ``<cache>/registry/<tools key>/bin``: go-containerregistry's
  ``crane`` (serves the registry and pushes into it), CoreDNS, and our own ``pause`` program
  (``toolchain/pause``);
- the images, OCI layouts written here from those static binaries and the pinned Kubernetes and
  etcd binaries, one layer each with the binary where the upstream images keep it
  (``/usr/local/bin/<name>``; ``/pause`` and ``/coredns`` as entrypoints, because the kubelet
  and the CoreDNS Deployment start those without a command), cached under
  ``<cache>/registry/images/<images key>``;
- the registry, ``crane registry serve`` bound to one address only (the sandbox gateway, or
  127.0.0.1), filled from the cached layouts; ``host_registry_config`` is the containerd set-up
  a host needs to pull from it over plain HTTP.

Tags are those kubeadm names for the pinned Kubernetes release under our own repository
prefix (``<registry>/k8s``, kubeadm's ``imageRepository``), except etcd: kubeadm v1.37.2 names
``etcd:3.7.0-0`` but we pin etcd v3.6.17, so the image is tagged ``3.6.17-0`` and a kubeadm
configuration must say ``etcd.local.imageTag: 3.6.17-0``.

Known shortcomings: the kube-proxy image holds kube-proxy alone, without the iptables/nft
programs upstream's carries, so it cannot program service rules yet; the registry is plain
HTTP (no TLS), which the hosts are told to accept for this one address; the registry keeps
manifests in memory, so each start pushes the images again (under a second). On a sandbox
host, whose root is an overlay, containerd's overlayfs snapshots need ``/var/lib/containerd``
on another file system (the test mounts a tmpfs there); nothing here does that yet.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import logging
import os
import shutil
import socket
import subprocess
import tarfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from clusterbook.errors import ClusterbookError, MissingComponentError
from clusterbook.kube.toolchain import TOOLCHAIN_DIR, KubeBinaries, read_pinned_versions

logger = logging.getLogger(__name__)

REPOSITORY = "k8s"
HOSTS_DIR = "/etc/containerd/certs.d"
SETUP_HINT = "run `bash scripts/setup.sh` (step 50-registry builds the tools with Go)"
LAYOUT_FORMAT = "1"
PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
TOOL_NAMES = ("crane", "coredns", "pause")


class RegistryError(ClusterbookError):
    """The image registry's images could not be built, or the registry not served."""


@dataclass(frozen=True)
class RegistryVersions:
    """The pinned versions of the registry tools and of the images' contents."""

    crane: str
    coredns: str
    pause: str

    @property
    def key(self) -> str:
        """Cache folder name of the tools; must match scripts/setup.d/50-registry.sh."""
        return f"crane-{self.crane}_coredns-{self.coredns}_pause-{self.pause}"


@dataclass(frozen=True)
class RegistryTools:
    """Paths of the built registry tools of one pinned set of versions."""

    versions: RegistryVersions
    bin_dir: Path

    def path(self, name: str) -> Path:
        if name not in TOOL_NAMES:
            raise ValueError(f"unknown tool {name!r}")
        return self.bin_dir / name


@dataclass(frozen=True)
class ImageSpec:
    """One image: its name under the repository prefix, tag, binary and where it goes."""

    name: str
    tag: str
    binary: Path
    path_in_image: str
    entrypoint: bool = False


@dataclass(frozen=True)
class ImageLayout:
    """A built OCI image layout (one image) and its manifest digest."""

    name: str
    tag: str
    layout: Path
    digest: str


@dataclass
class RegistryServer:
    """A running registry holding the images; ``stop()`` ends it (or use ``with``)."""

    address: str
    port: int
    references: dict[str, str]
    _process: subprocess.Popen[bytes]
    _workdir: Path
    _log: Path = field(repr=False)

    @property
    def host(self) -> str:
        """``address:port``, the registry host in image references and containerd's hosts dir."""
        return f"{self.address}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    @property
    def image_repository(self) -> str:
        """kubeadm's ``imageRepository`` for these images."""
        return f"{self.host}/{REPOSITORY}"

    def stop(self) -> None:
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(timeout=10)
        shutil.rmtree(self._workdir, ignore_errors=True)
        logger.info("image registry at %s stopped", self.url)

    def __enter__(self) -> RegistryServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def read_registry_versions(toolchain_dir: Path = TOOLCHAIN_DIR) -> RegistryVersions:
    """The registry tools' versions from ``versions.env``."""
    values: dict[str, str] = {}
    for line in (toolchain_dir / "versions.env").read_text().splitlines():
        name, sep, value = line.strip().partition("=")
        if sep and not name.startswith("#"):
            values[name.strip()] = value.strip().strip("\"'")
    try:
        return RegistryVersions(
            crane=values["CRANE_VERSION"],
            coredns=values["COREDNS_VERSION"],
            pause=values["PAUSE_VERSION"],
        )
    except KeyError as exc:
        raise RegistryError(f"{toolchain_dir / 'versions.env'} does not pin {exc.args[0]}") from exc


def tools_dir(cache_dir: Path, versions: RegistryVersions) -> Path:
    return cache_dir / "registry" / f"tools-{versions.key}" / "bin"


def locate_registry_tools(
    cache_dir: Path, *, versions: RegistryVersions | None = None
) -> RegistryTools:
    """The cached tools; raises MissingComponentError naming what is missing and the fix."""
    versions = versions or read_registry_versions()
    tools = RegistryTools(versions=versions, bin_dir=tools_dir(cache_dir, versions))

    missing = [name for name in TOOL_NAMES if not os.access(tools.path(name), os.X_OK)]
    if missing:
        raise MissingComponentError(
            f"registry tools {', '.join(missing)} ({versions.key}) are not built in "
            f"{tools.bin_dir}",
            hint=SETUP_HINT,
        )
    return tools


def build_registry_tools(
    cache_dir: Path, *, versions: RegistryVersions | None = None
) -> RegistryTools:
    """Build whatever tool is missing with ``toolchain/build-registry.sh``, then locate."""
    versions = versions or read_registry_versions()
    try:
        return locate_registry_tools(cache_dir, versions=versions)
    except MissingComponentError:
        pass
    if shutil.which("go") is None:
        raise MissingComponentError(
            "Go is not installed; it is needed to build crane, CoreDNS and pause",
            hint=f"install Go >= {read_pinned_versions().go_minimum}",
        )

    bin_dir = tools_dir(cache_dir, versions)
    logger.info("building the registry tools %s into %s", versions.key, bin_dir)
    result = subprocess.run(
        ["nice", "-n", "10", str(TOOLCHAIN_DIR / "build-registry.sh"), str(bin_dir)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise MissingComponentError(
            f"building the registry tools failed (exit {result.returncode}): "
            f"{result.stderr[-2000:]}",
            hint=SETUP_HINT,
        )
    return locate_registry_tools(cache_dir, versions=versions)


def image_specs(binaries: KubeBinaries, tools: RegistryTools) -> list[ImageSpec]:
    """The images kubeadm needs for the pinned release, with our tags (see module docstring)."""
    kubernetes = binaries.versions.kubernetes
    specs = [
        ImageSpec(name, kubernetes, binaries.path(name), f"usr/local/bin/{name}")
        for name in ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kube-proxy")
    ]
    etcd_tag = binaries.versions.etcd.removeprefix("v") + "-0"
    specs.append(ImageSpec("etcd", etcd_tag, binaries.path("etcd"), "usr/local/bin/etcd"))
    specs.append(ImageSpec("pause", tools.versions.pause, tools.path("pause"), "pause", True))
    specs.append(
        ImageSpec("coredns", tools.versions.coredns, tools.path("coredns"), "coredns", True)
    )
    return specs


def images_key(binaries: KubeBinaries, tools: RegistryTools) -> str:
    """Cache folder name of the image layouts: the versions of everything inside them."""
    return (
        f"k8s-{binaries.versions.kubernetes}_etcd-{binaries.versions.etcd}_"
        f"{tools.versions.key}_format-{LAYOUT_FORMAT}"
    )


def build_image_layouts(
    *, cache_dir: Path, binaries: KubeBinaries, tools: RegistryTools
) -> list[ImageLayout]:
    """One OCI layout per image, built once per key (tens of seconds cold: gzip), then reused."""
    root = cache_dir / "registry" / "images" / images_key(binaries, tools)
    layouts = []
    for spec in image_specs(binaries, tools):
        folder = root / f"{spec.name}_{spec.tag}"
        if not (folder / ".complete").is_file():
            started = time.monotonic()
            partial = folder.with_name(folder.name + ".partial")
            shutil.rmtree(partial, ignore_errors=True)
            write_image_layout(spec, partial)
            shutil.rmtree(folder, ignore_errors=True)
            partial.rename(folder)
            (folder / ".complete").touch()
            logger.info(
                "image %s:%s built in %.1f s", spec.name, spec.tag, time.monotonic() - started
            )
        index = json.loads((folder / "index.json").read_text())
        digest = index["manifests"][0]["digest"]
        layouts.append(ImageLayout(name=spec.name, tag=spec.tag, layout=folder, digest=digest))
    return layouts


def write_image_layout(spec: ImageSpec, folder: Path) -> str:
    """Write one image as an OCI layout into ``folder``; returns the manifest digest.

    Deterministic: fixed owners, modes and times, gzip without a time stamp."""
    if not os.access(spec.binary, os.X_OK):
        raise RegistryError(f"{spec.binary} (for the {spec.name} image) is missing")
    blobs = folder / "blobs" / "sha256"
    blobs.mkdir(parents=True)

    layer_tar = _layer_tar(spec.binary, spec.path_in_image)
    compressed = gzip.compress(layer_tar, compresslevel=6, mtime=0)
    layer = _write_blob(blobs, compressed)

    image_config: dict[str, object] = {"Env": [PATH_ENV]}
    if spec.entrypoint:
        image_config["Entrypoint"] = [f"/{spec.path_in_image}"]
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": image_config,
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{_sha256(layer_tar)}"]},
        "history": [{"created_by": f"clusterbook: {spec.binary.name} at /{spec.path_in_image}"}],
    }
    config_blob = _write_blob(blobs, _json_bytes(config))
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **config_blob},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", **layer}],
    }
    manifest_blob = _write_blob(blobs, _json_bytes(manifest))

    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                **manifest_blob,
                "annotations": {"org.opencontainers.image.ref.name": spec.tag},
            }
        ],
    }
    (folder / "index.json").write_bytes(_json_bytes(index))
    (folder / "oci-layout").write_bytes(_json_bytes({"imageLayoutVersion": "1.0.0"}))
    return str(manifest_blob["digest"])


def serve_registry(
    layouts: list[ImageLayout], *, tools: RegistryTools, address: str, workdir: Path
) -> RegistryServer:
    """Start ``crane registry serve`` on ``address`` only (a free port) and push the images.

    ``workdir`` holds the registry's blobs and log while it runs; ``stop()`` removes it."""
    port = _free_port(address)
    (workdir / "blobs").mkdir(parents=True, exist_ok=True)
    log = workdir / "registry.log"
    crane = str(tools.path("crane"))
    with log.open("wb") as log_file:
        process = subprocess.Popen(
            [
                crane,
                "registry",
                "serve",
                "--address",
                f"{address}:{port}",
                "--disk",
                str(workdir / "blobs"),
            ],
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    server = RegistryServer(
        address=address, port=port, references={}, _process=process, _workdir=workdir, _log=log
    )
    try:
        _wait_until_serving(server)
        for image in layouts:
            reference = f"{server.image_repository}/{image.name}:{image.tag}"
            _push(crane, image.layout, reference)
            server.references[image.name] = reference
    except BaseException:
        server.stop()
        raise
    logger.info("image registry at %s holds %d images", server.url, len(layouts))
    return server


def host_registry_config(registry_host: str) -> str:
    """Shell script (root, on a host) that lets containerd pull from the registry at
    ``registry_host`` (``address:port``) over plain HTTP, for that registry alone.

    ``ctr`` reads it with ``--hosts-dir /etc/containerd/certs.d``; the CRI plugin (the kubelet's
    pulls) reads it once containerd's config sets the CRI registry ``config_path`` to that
    folder: where the config has no ``config_path``, the script replaces it with a minimal one
    that has (the old one kept as ``config.toml.before-clusterbook``) and restarts containerd
    if it runs. A bootstrap that writes its own containerd config must include that line."""
    if "/" in registry_host or ":" not in registry_host:
        raise RegistryError(f"{registry_host!r} is not a registry host (address:port)")
    hosts_toml = (
        f'server = "http://{registry_host}"\n\n'
        f'[host."http://{registry_host}"]\n'
        '  capabilities = ["pull", "resolve"]\n'
        "  skip_verify = true\n"
    )
    cri_config = (
        "version = 2\n\n"
        '[plugins."io.containerd.grpc.v1.cri".registry]\n'
        f'  config_path = "{HOSTS_DIR}"\n'
    )
    return (
        "set -e\n"
        f"install -d -m 0755 {HOSTS_DIR}/{registry_host}\n"
        f"cat > {HOSTS_DIR}/{registry_host}/hosts.toml <<'CLUSTERBOOK_HOSTS'\n"
        f"{hosts_toml}CLUSTERBOOK_HOSTS\n"
        "if ! grep -qs 'config_path' /etc/containerd/config.toml; then\n"
        "  install -d -m 0755 /etc/containerd\n"
        "  if [ -s /etc/containerd/config.toml ]; then\n"
        "    cp /etc/containerd/config.toml /etc/containerd/config.toml.before-clusterbook\n"
        "  fi\n"
        f"  cat > /etc/containerd/config.toml <<'CLUSTERBOOK_CONFIG'\n{cri_config}"
        "CLUSTERBOOK_CONFIG\n"
        "  if systemctl is-active -q containerd; then systemctl restart containerd; fi\n"
        "fi\n"
    )


def _layer_tar(binary: Path, path_in_image: str) -> bytes:
    """A tar with the binary (mode 0755, root) and its parent folders, plus /tmp (1777)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        parts = path_in_image.split("/")[:-1]
        folders = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        for name, mode in [*((f, 0o755) for f in folders), ("tmp", 0o1777)]:
            info = tarfile.TarInfo(name)
            info.type, info.mode = tarfile.DIRTYPE, mode
            tar.addfile(_owned_by_root(info))
        info = _owned_by_root(tarfile.TarInfo(path_in_image))
        info.mode, info.size = 0o755, binary.stat().st_size
        with binary.open("rb") as source:
            tar.addfile(info, source)
    return buffer.getvalue()


def _owned_by_root(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    info.mtime = 0
    return info


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _json_bytes(value: object) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def _write_blob(blobs: Path, data: bytes) -> dict[str, object]:
    digest = _sha256(data)
    (blobs / digest).write_bytes(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def _free_port(address: str) -> int:
    """A port free on ``address`` now (crane takes it a moment later; a race is unlikely)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind((address, 0))
            return int(probe.getsockname()[1])
    except OSError as exc:
        raise RegistryError(
            f"cannot bind the image registry to {address}: {exc}",
            hint="is the sandbox up? its gateway address exists only while it runs",
        ) from exc


def _wait_until_serving(server: RegistryServer, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server._process.poll() is not None:
            raise RegistryError(
                f"crane registry serve exited ({server._process.returncode}): "
                f"{server._log.read_text(errors='replace')[-1000:]}"
            )
        try:
            with urllib.request.urlopen(f"{server.url}/v2/", timeout=2) as reply:
                if reply.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            time.sleep(0.1)
    raise RegistryError(f"the image registry at {server.url} did not answer in {timeout_s} s")


def _push(crane: str, layout: Path, reference: str) -> None:
    result = subprocess.run(
        [crane, "push", "--insecure", str(layout), reference],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    if result.returncode != 0:
        raise RegistryError(f"pushing {reference} failed: {result.stderr[-1000:]}")
    logger.debug("pushed %s", reference)

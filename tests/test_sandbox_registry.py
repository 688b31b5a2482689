"""The local image registry: tools built from pinned Go modules, images kubeadm asks for made
from our static binaries, served on one address, and a sandbox host whose containerd (from
the signed mirror) pulls them and runs the pause and kube-apiserver containers."""

from __future__ import annotations

import json
import subprocess
import tarfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from clusterbook.errors import MissingComponentError
from clusterbook.kube.toolchain import KubeBinaries, default_cache_dir
from clusterbook.nodes.ssh import NodeConnection, connect_inventory
from clusterbook.sandbox.mirror import Mirror, build_mirror
from clusterbook.sandbox.mirror_server import host_setup_script, serve_mirror
from clusterbook.sandbox.registry import (
    ImageLayout,
    RegistryError,
    RegistryServer,
    RegistryTools,
    build_image_layouts,
    host_registry_config,
    image_specs,
    locate_registry_tools,
    serve_registry,
    write_image_layout,
)
from fixtures.common import require, require_program, require_root


@pytest.fixture(scope="module")
def tools() -> RegistryTools:
    try:
        return locate_registry_tools(default_cache_dir())
    except MissingComponentError as exc:
        require(False, str(exc))
        raise


@pytest.fixture(scope="module")
def layouts(tools: RegistryTools, kube_binaries: KubeBinaries) -> list[ImageLayout]:
    """The cached image layouts (built on first use: about half a minute)."""
    return build_image_layouts(cache_dir=default_cache_dir(), binaries=kube_binaries, tools=tools)


@pytest.fixture
def local_registry(
    layouts: list[ImageLayout], tools: RegistryTools, tmp_path: Path
) -> Iterator[RegistryServer]:
    with serve_registry(
        layouts, tools=tools, address="127.0.0.1", workdir=tmp_path / "registry"
    ) as server:
        yield server


def crane(tools: RegistryTools, *args: str) -> str:
    return subprocess.run(
        [str(tools.path("crane")), *args], capture_output=True, text=True, check=True
    ).stdout


def test_tools_report_their_pinned_versions(tools: RegistryTools) -> None:
    pause = subprocess.run([str(tools.path("pause")), "--version"], capture_output=True, text=True)
    coredns = subprocess.run(
        [str(tools.path("coredns")), "-version"], capture_output=True, text=True
    )

    assert crane(tools, "version").strip() == tools.versions.crane
    assert pause.stdout.strip() == f"pause {tools.versions.pause}"
    assert f"CoreDNS-{tools.versions.coredns.removeprefix('v')}" in coredns.stdout


def test_references_are_the_ones_kubeadm_lists_but_for_the_pinned_etcd(
    local_registry: RegistryServer, kube_binaries: KubeBinaries
) -> None:
    listed = subprocess.run(
        [
            str(kube_binaries.path("kubeadm")),
            "config",
            "images",
            "list",
            "--kubernetes-version",
            kube_binaries.versions.kubernetes,
            "--image-repository",
            local_registry.image_repository,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    ours = set(local_registry.references.values())

    etcd_tag = kube_binaries.versions.etcd.removeprefix("v") + "-0"
    assert ours - set(listed) == {f"{local_registry.image_repository}/etcd:{etcd_tag}"}
    (kubeadm_etcd,) = set(listed) - ours
    assert kubeadm_etcd.startswith(f"{local_registry.image_repository}/etcd:")
    assert len(ours) == len(listed) == 7


def test_images_hold_the_binary_where_upstream_keeps_it(
    local_registry: RegistryServer, tools: RegistryTools, tmp_path: Path
) -> None:
    refs = local_registry.references
    apiserver = json.loads(crane(tools, "config", "--insecure", refs["kube-apiserver"]))
    pause = json.loads(crane(tools, "config", "--insecure", refs["pause"]))
    coredns = json.loads(crane(tools, "config", "--insecure", refs["coredns"]))
    exported = tmp_path / "etcd.tar"
    crane(tools, "export", "--insecure", refs["etcd"], str(exported))
    with tarfile.open(exported) as tar:
        etcd = tar.getmember("usr/local/bin/etcd")

    assert (apiserver["os"], apiserver["architecture"]) == ("linux", "amd64")
    assert "Entrypoint" not in apiserver["config"] and "Cmd" not in apiserver["config"]
    assert any(
        env.startswith("PATH=") and "/usr/local/bin" in env for env in apiserver["config"]["Env"]
    )
    assert pause["config"]["Entrypoint"] == ["/pause"]
    assert coredns["config"]["Entrypoint"] == ["/coredns"]
    assert etcd.mode == 0o755 and etcd.uid == 0 and etcd.size > 1_000_000


def test_registry_listens_on_its_one_address_and_stops_completely(
    layouts: list[ImageLayout], tools: RegistryTools, tmp_path: Path
) -> None:
    server = serve_registry(layouts, tools=tools, address="127.0.0.1", workdir=tmp_path / "r")
    try:
        with urllib.request.urlopen(f"{server.url}/v2/", timeout=5) as reply:
            assert reply.status == 200
        with pytest.raises(urllib.error.URLError):
            urllib.request.urlopen(f"http://127.0.0.2:{server.port}/v2/", timeout=2)
        digest = crane(tools, "digest", "--insecure", server.references["pause"]).strip()
        assert digest == next(image.digest for image in layouts if image.name == "pause")
    finally:
        server.stop()

    assert server._process.poll() is not None
    assert not (tmp_path / "r").exists()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"{server.url}/v2/", timeout=2)


def test_layouts_are_cached_and_reproducible(
    layouts: list[ImageLayout], tools: RegistryTools, kube_binaries: KubeBinaries, tmp_path: Path
) -> None:
    before = {image.name: (image.layout / "index.json").stat().st_mtime_ns for image in layouts}
    again = build_image_layouts(cache_dir=default_cache_dir(), binaries=kube_binaries, tools=tools)
    pause_spec = next(s for s in image_specs(kube_binaries, tools) if s.name == "pause")

    assert again == layouts
    assert {i.name: (i.layout / "index.json").stat().st_mtime_ns for i in again} == before
    fresh = write_image_layout(pause_spec, tmp_path / "pause")
    assert fresh == next(image.digest for image in layouts if image.name == "pause")


def test_host_registry_config_is_for_that_registry_only() -> None:
    script = host_registry_config("10.9.0.1:5000")

    assert "/etc/containerd/certs.d/10.9.0.1:5000/hosts.toml" in script
    assert 'server = "http://10.9.0.1:5000"' in script
    assert 'config_path = "/etc/containerd/certs.d"' in script
    with pytest.raises(RegistryError):
        host_registry_config("http://10.9.0.1:5000/k8s")


@pytest.fixture(scope="module")
def mirror(kube_binaries: KubeBinaries, sandbox_image: Any) -> Mirror:
    require_root()
    require_program("apt-ftparchive", "apt-utils")
    return build_mirror(
        cache_dir=default_cache_dir(),
        binaries=kube_binaries,
        base_rootfs=sandbox_image.rootfs,
        base_image_hash=sandbox_image.recipe_hash,
    )


@pytest.fixture(scope="module")
def containerd_host(sandbox: Any, sandbox_cluster: Any, mirror: Mirror) -> Iterator[NodeConnection]:
    """The first node of a sandbox cluster, with containerd from the mirror, running."""
    (host, *others) = connect_inventory(sandbox.settings, sandbox_cluster)
    for other in others:
        other.close()
    started = time.monotonic()
    with serve_mirror(mirror.root, address=sandbox.status.gateway) as server:
        host.run(host_setup_script(server.url, public_key_text=mirror.public_key_text), sudo=True)
        host.run("apt-get update", sudo=True, timeout_s=120)
        host.run(
            "DEBIAN_FRONTEND=noninteractive apt-get install -y -q containerd",
            sudo=True,
            timeout_s=600,
        )
    # The machine's root is an overlay; overlayfs refuses an upper folder on another overlay
    # (`ctr run`: "failed to mount ...: invalid argument"), so containerd's state goes on a
    # tmpfs of the machine's own, which ends with the machine.
    host.run(
        "systemctl stop containerd; mount -t tmpfs -o mode=0711 containerd /var/lib/containerd"
        " && systemctl start containerd",
        sudo=True,
        timeout_s=60,
    )
    print(f"containerd installed and started on the host: {time.monotonic() - started:.1f} s")
    yield host
    host.close()


def test_host_containerd_pulls_and_runs_our_images(
    sandbox: Any,
    containerd_host: NodeConnection,
    layouts: list[ImageLayout],
    tools: RegistryTools,
    kube_binaries: KubeBinaries,
    tmp_path: Path,
) -> None:
    host = containerd_host
    ctr = "ctr -n k8s.io"
    with serve_registry(
        layouts, tools=tools, address=sandbox.status.gateway, workdir=tmp_path / "registry"
    ) as registry:
        host.run(host_registry_config(registry.host), sudo=True)
        started = time.monotonic()
        for name in ("pause", "kube-apiserver"):
            host.run(
                f"{ctr} images pull --hosts-dir /etc/containerd/certs.d "
                f"{registry.references[name]}",
                sudo=True,
                timeout_s=300,
            )
        print(f"pulled pause and kube-apiserver: {time.monotonic() - started:.1f} s")
        listed = host.run(f"{ctr} images ls -q", sudo=True).stdout.split()

    version = host.run(
        f"{ctr} run --rm {registry.references['kube-apiserver']} cb-apiserver "
        "/usr/local/bin/kube-apiserver --version",
        sudo=True,
        timeout_s=120,
    ).stdout
    host.run(f"{ctr} run -d {registry.references['pause']} cb-pause", sudo=True, timeout_s=120)
    running = host.run(f"{ctr} task ls", sudo=True).stdout
    host.run(f"{ctr} task kill --signal SIGTERM cb-pause", sudo=True)
    stopped = ""
    for _ in range(50):
        stopped = host.run(f"{ctr} task ls", sudo=True).stdout
        if "STOPPED" in stopped:
            break
        time.sleep(0.2)
    host.run(f"{ctr} task delete cb-pause && {ctr} container delete cb-pause", sudo=True)

    assert registry.references["pause"] in listed
    assert registry.references["kube-apiserver"] in listed
    assert version.strip() == f"Kubernetes {kube_binaries.versions.kubernetes}"
    assert any("cb-pause" in line and "RUNNING" in line for line in running.splitlines())
    assert any("cb-pause" in line and "STOPPED" in line for line in stopped.splitlines())

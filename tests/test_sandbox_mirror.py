"""The signed package mirror: real .deb packages, metadata signed with the mirror's own key,
served on one address, and a sandbox host that installs kubeadm, the kubelet, kubectl and
containerd from it with no other apt source, refusing a tampered Release."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from clusterbook.kube.toolchain import KubeBinaries, default_cache_dir
from clusterbook.nodes.ssh import NodeConnection, connect_inventory
from clusterbook.sandbox import mirror as mirror_module
from clusterbook.sandbox.mirror import Mirror, MirrorError, build_mirror
from clusterbook.sandbox.mirror_server import host_setup_script, serve_mirror
from fixtures.common import require_program, require_root


@pytest.fixture(scope="module")
def mirror(kube_binaries: KubeBinaries, sandbox_image: Any) -> Mirror:
    """The cached mirror (built on first use: seconds, plus the Debian downloads)."""
    require_root()
    require_program("apt-ftparchive", "apt-utils")
    require_program("dpkg-deb", "dpkg")
    require_program("gpg", "gnupg")
    return build_mirror(
        cache_dir=default_cache_dir(),
        binaries=kube_binaries,
        base_rootfs=sandbox_image.rootfs,
        base_image_hash=sandbox_image.recipe_hash,
    )


def deb_path(mirror: Mirror, name: str) -> Path:
    (found,) = (mirror.root / "pool" / "main").glob(f"{name}_*.deb")
    return found


def deb_field(path: Path, field: str) -> str:
    return subprocess.run(
        ["dpkg-deb", "--field", str(path), field], capture_output=True, text=True, check=True
    ).stdout.strip()


def test_kube_packages_carry_the_pinned_version_and_their_files(
    mirror: Mirror, kube_binaries: KubeBinaries
) -> None:
    version = kube_binaries.versions.kubernetes.removeprefix("v") + "-1"

    for name in ("kubeadm", "kubelet", "kubectl"):
        path = deb_path(mirror, name)
        assert deb_field(path, "Package") == name
        assert deb_field(path, "Version") == version
        assert deb_field(path, "Architecture") == "amd64"
    kubelet_depends = deb_field(deb_path(mirror, "kubelet"), "Depends")
    for prerequisite in ("conntrack", "iptables", "ethtool", "socat", "ebtables"):
        assert prerequisite in kubelet_depends
    assert f"kubelet (= {version})" in deb_field(deb_path(mirror, "kubeadm"), "Depends")

    contents = subprocess.run(
        ["dpkg-deb", "--contents", str(deb_path(mirror, "kubelet"))],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "./usr/bin/kubelet" in contents
    assert "./lib/systemd/system/kubelet.service\n" in contents
    assert "./lib/systemd/system/kubelet.service.d/10-kubeadm.conf" in contents
    assert "drwxr-xr-x root/root" in contents.splitlines()[0]


def test_pool_has_the_node_prerequisites_and_the_index_lists_every_package(
    mirror: Mirror,
) -> None:
    index = (mirror.root / "dists/stable/main/binary-amd64/Packages").read_text()
    listed = {line.split(": ", 1)[1] for line in index.splitlines() if line.startswith("Package:")}

    for name in ("containerd", "runc", "conntrack", "socat", "ebtables", "ethtool", "iptables"):
        assert name in listed
    assert listed == set(mirror.packages)
    assert len(list((mirror.root / "pool" / "main").glob("*.deb"))) == len(listed)


def test_release_is_signed_by_the_mirror_key_and_no_private_key_is_served(
    mirror: Mirror, tmp_path: Path
) -> None:
    keyring = tmp_path / "mirror.gpg"
    subprocess.run(
        ["gpg", "--dearmor", "--output", str(keyring), str(mirror.public_key)], check=True
    )
    suite = mirror.root / "dists" / "stable"

    clear = subprocess.run(
        ["gpgv", "--keyring", str(keyring), str(suite / "InRelease")], capture_output=True
    )
    detached = subprocess.run(
        ["gpgv", "--keyring", str(keyring), str(suite / "Release.gpg"), str(suite / "Release")],
        capture_output=True,
    )
    tampered = tmp_path / "Release"
    tampered.write_text((suite / "Release").read_text().replace("clusterbook", "someone"))
    forged = subprocess.run(
        ["gpgv", "--keyring", str(keyring), str(suite / "Release.gpg"), str(tampered)],
        capture_output=True,
    )

    assert clear.returncode == 0 and detached.returncode == 0, clear.stderr + detached.stderr
    assert forged.returncode != 0
    for path in mirror.root.rglob("*"):
        if path.is_file() and path.suffix != ".deb":
            assert "PRIVATE KEY" not in path.read_text(errors="replace"), path
    gnupg_home = mirror.root.parent.parent / "gnupg"
    assert not gnupg_home.is_relative_to(mirror.root)
    assert gnupg_home.stat().st_mode & 0o077 == 0


def test_a_warm_cache_returns_the_same_mirror_without_rebuilding(
    mirror: Mirror, kube_binaries: KubeBinaries, sandbox_image: Any
) -> None:
    before = (mirror.root / "dists/stable/InRelease").stat().st_mtime_ns

    again = build_mirror(
        cache_dir=default_cache_dir(),
        binaries=kube_binaries,
        base_rootfs=sandbox_image.rootfs,
        base_image_hash=sandbox_image.recipe_hash,
    )

    assert again == mirror
    assert (again.root / "dists/stable/InRelease").stat().st_mtime_ns == before


def test_mirror_key_follows_version_and_package_list() -> None:
    key = mirror_module.mirror_key(
        kubernetes_version="v1.37.2", prerequisites=("runc", "socat"), base_image_hash="a"
    )

    assert key.startswith("k8s-v1.37.2_")
    assert key == mirror_module.mirror_key(
        kubernetes_version="v1.37.2", prerequisites=("socat", "runc"), base_image_hash="a"
    )
    assert key != mirror_module.mirror_key(
        kubernetes_version="v1.37.3", prerequisites=("runc", "socat"), base_image_hash="a"
    )
    assert key != mirror_module.mirror_key(
        kubernetes_version="v1.37.2", prerequisites=("runc",), base_image_hash="a"
    )


def test_server_serves_the_tree_on_its_one_address_and_stops(mirror: Mirror) -> None:
    server = serve_mirror(mirror.root, address="127.0.0.1")
    try:
        with urllib.request.urlopen(f"{server.url}/dists/stable/InRelease", timeout=5) as reply:
            served = reply.read()
        assert served == (mirror.root / "dists/stable/InRelease").read_bytes()
        assert server._server.server_address == ("127.0.0.1", server.port)
        with pytest.raises(urllib.error.URLError):
            urllib.request.urlopen(f"http://127.0.0.2:{server.port}/", timeout=2)
    finally:
        server.stop()

    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"{server.url}/dists/stable/Release", timeout=2)


def test_host_setup_trusts_the_key_for_this_source_only(mirror: Mirror) -> None:
    script = host_setup_script("http://10.0.0.1:8080", public_key_text=mirror.public_key_text)

    assert mirror.public_key_text.strip() in script
    assert (
        "deb [arch=amd64 signed-by=/etc/apt/keyrings/clusterbook-mirror.asc] "
        "http://10.0.0.1:8080 stable main" in script
    )
    assert "/etc/apt/trusted.gpg" not in script
    with pytest.raises(MirrorError):
        host_setup_script("http://10.0.0.1:8080", public_key_text="-----BEGIN PGP PRIVATE KEY")


@pytest.fixture(scope="module")
def host(sandbox: Any, sandbox_cluster: Any, mirror: Mirror) -> Iterator[NodeConnection]:
    """The first node of a sandbox cluster."""
    (connection, *others) = connect_inventory(sandbox.settings, sandbox_cluster)
    for other in others:
        other.close()
    yield connection
    connection.close()


def point_apt_at(host: NodeConnection, url: str, mirror: Mirror) -> None:
    host.run(host_setup_script(url, public_key_text=mirror.public_key_text), sudo=True)


def test_host_refuses_a_mirror_whose_release_was_tampered_with(
    sandbox: Any, mirror: Mirror, host: NodeConnection, tmp_path: Path
) -> None:
    copy = tmp_path / "tampered"
    shutil.copytree(mirror.root / "dists", copy / "dists")
    (copy / "pool").symlink_to(mirror.root / "pool")
    for name in ("InRelease", "Release"):
        path = copy / "dists/stable" / name
        path.write_text(path.read_text().replace("Label: clusterbook", "Label: somebody"))

    with serve_mirror(copy, address=sandbox.status.gateway) as server:
        point_apt_at(host, server.url, mirror)
        update = host.run("apt-get update", sudo=True, check=False, timeout_s=120)
        policy = host.run("apt-cache policy kubeadm", check=False).stdout

    assert update.exit_status != 0
    assert "BADSIG" in update.stdout + update.stderr
    assert "Candidate" not in policy


def test_host_installs_kubernetes_node_packages_from_the_signed_mirror(
    sandbox: Any, mirror: Mirror, host: NodeConnection, kube_binaries: KubeBinaries
) -> None:
    started = time.monotonic()
    with serve_mirror(mirror.root, address=sandbox.status.gateway) as server:
        point_apt_at(host, server.url, mirror)
        host.run("apt-get update", sudo=True, timeout_s=120)
        host.run(
            "DEBIAN_FRONTEND=noninteractive apt-get install -y -q "
            "kubeadm kubelet kubectl containerd",
            sudo=True,
            timeout_s=600,
        )
    print(f"apt-get update + install on the host: {time.monotonic() - started:.1f} s")

    sources = host.run("cat /etc/apt/sources.list.d/* 2>/dev/null; ls /etc/apt").stdout
    assert sources.count("deb ") == 1 and "sources.list\n" not in sources
    version = kube_binaries.versions.kubernetes
    assert host.run("kubeadm version -o short").stdout.strip() == version
    assert version in host.run("kubectl version --client").stdout
    assert host.run("kubelet --version").stdout.strip() == f"Kubernetes {version}"
    assert host.run("command -v containerd runc conntrack socat").stdout.count("/") >= 4
    drop_ins = host.run("systemctl show kubelet.service -p DropInPaths --value").stdout
    assert "10-kubeadm.conf" in drop_ins
    assert host.run("systemctl is-enabled kubelet.service", check=False).stdout.strip() == (
        "enabled"
    )
    installed = host.run(
        "dpkg-query -W -f '${Package}=${Version}\\n' kubeadm kubelet kubectl"
    ).stdout.split()
    expected = version.removeprefix("v") + "-1"
    assert sorted(installed) == [f"{name}={expected}" for name in ("kubeadm", "kubectl", "kubelet")]


def test_build_uses_no_gpg_agent_left_running(mirror: Mirror) -> None:
    gnupg_home = str(mirror.root.parent.parent / "gnupg")
    agents = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                command = (entry / "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if "gpg-agent" in command and gnupg_home in command:
                agents.append(entry.name)
    assert agents == [], os.linesep.join(agents)

"""The pinned toolchain: one place for versions, the cache key, binaries that know them."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from clusterbook.errors import MissingComponentError
from clusterbook.kube.toolchain import (
    BINARY_NAMES,
    TOOLCHAIN_DIR,
    KubeBinaries,
    build_binaries,
    locate_binaries,
    read_pinned_versions,
)
from fixtures.common import require

REPO = TOOLCHAIN_DIR.parent


def test_wrapper_modules_require_the_pinned_versions() -> None:
    versions = read_pinned_versions()
    minor_patch = versions.kubernetes.removeprefix("v1.")

    kubernetes_mod = (TOOLCHAIN_DIR / "kubernetes" / "go.mod").read_text()
    assert re.search(
        rf"^\s*k8s\.io/kubernetes {re.escape(versions.kubernetes)}\b", kubernetes_mod, re.MULTILINE
    )
    staging = re.findall(r"^replace (k8s\.io/[\w-]+) => \1 (v\S+)$", kubernetes_mod, re.MULTILINE)
    assert len(staging) > 20
    assert {version for _, version in staging} == {f"v0.{minor_patch}"}

    etcd_mod = (TOOLCHAIN_DIR / "etcd" / "go.mod").read_text()
    assert f"go.etcd.io/etcd/server/v3 {versions.etcd}" in etcd_mod
    kwok_mod = (TOOLCHAIN_DIR / "kwok" / "go.mod").read_text()
    assert f"sigs.k8s.io/kwok {versions.kwok}" in kwok_mod


def test_python_client_major_matches_the_kubernetes_minor() -> None:
    import kubernetes

    minor = read_pinned_versions().kubernetes.split(".")[1]
    assert kubernetes.__version__.split(".")[0] == minor


def test_setup_script_uses_the_same_cache_key() -> None:
    script = (REPO / "scripts" / "setup.d" / "20-kube.sh").read_text()
    versions = read_pinned_versions()
    expanded = (
        re.search(r'^key="(.+)"$', script, re.MULTILINE)
        .group(1)
        .replace("${KUBERNETES_VERSION}", versions.kubernetes)
        .replace("${ETCD_VERSION}", versions.etcd)
        .replace("${KWOK_VERSION}", versions.kwok)
    )
    assert expanded == versions.key


def test_missing_binaries_name_the_fix(tmp_path: Path) -> None:
    with pytest.raises(MissingComponentError) as caught:
        locate_binaries(tmp_path)
    assert "kube-apiserver" in str(caught.value)
    assert "scripts/setup.sh" in str(caught.value)


def _output(*argv: str | Path) -> str:
    result = subprocess.run([str(a) for a in argv], capture_output=True, text=True, check=True)
    return result.stdout + result.stderr


def test_kubernetes_binaries_report_the_pinned_release(kube_binaries: KubeBinaries) -> None:
    version = kube_binaries.versions.kubernetes

    client = json.loads(_output(kube_binaries.kubectl, "version", "--client", "-o", "json"))
    assert client["clientVersion"]["gitVersion"] == version
    assert client["clientVersion"]["minor"] == version.split(".")[1]

    for name in (
        "kube-apiserver",
        "kube-controller-manager",
        "kube-scheduler",
        "kubelet",
        "kube-proxy",
    ):
        assert f"Kubernetes {version}" in _output(kube_binaries.path(name), "--version")
    assert f'"{version}"' in _output(kube_binaries.path("kubeadm"), "version", "-o", "json")


def test_etcd_and_kwok_report_their_pinned_versions(kube_binaries: KubeBinaries) -> None:
    versions = kube_binaries.versions
    assert f"etcd Version: {versions.etcd.removeprefix('v')}" in _output(
        kube_binaries.path("etcd"), "--version"
    )
    assert versions.kwok.removeprefix("v") in _output(kube_binaries.path("kwok"), "--version")


def test_build_without_go_names_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = tmp_path / "empty-path"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))

    with pytest.raises(MissingComponentError) as caught:
        build_binaries(tmp_path)
    assert "install Go >= " in str(caught.value)
    assert not (tmp_path / "kube").exists()


def test_binaries_are_static_and_reproducible_builds(kube_binaries: KubeBinaries) -> None:
    """Built with CGO_ENABLED=0 (static, they run in a distroless image and on any host)
    and -trimpath (no build machine's paths inside), as Go records in every binary."""
    import shutil

    go = shutil.which("go") or "/usr/local/go/bin/go"
    require(Path(go).exists(), "Go (to read the binaries' build settings)")
    for name in BINARY_NAMES:
        settings = _output(go, "version", "-m", kube_binaries.path(name))
        assert "CGO_ENABLED=0" in settings, name
        assert "-trimpath=true" in settings, name

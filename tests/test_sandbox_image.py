"""The sandbox base image: mirror discovery from apt sources, and what the built image holds."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from clusterbook.errors import MissingComponentError
from clusterbook.sandbox import image


def test_mirror_is_read_from_deb822_sources(tmp_path: Path) -> None:
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\n"
        "URIs: http://mirror.invalid/debian-security\n"
        "Suites: bookworm-security\nComponents: main\n\n"
        "# disabled one first\nTypes: deb-src\nURIs: http://src.invalid/debian\n"
        "Suites: bookworm\n\n"
        "Types: deb\nURIs: http://mirror.invalid/debian/\n"
        "Suites: bookworm bookworm-updates\nComponents: main\n"
    )

    assert image.find_debian_mirror(tmp_path) == "http://mirror.invalid/debian"


def test_mirror_is_read_from_one_line_sources(tmp_path: Path) -> None:
    (tmp_path / "sources.list").write_text(
        "# comment\ndeb [arch=amd64 signed-by=/k.gpg] http://one.invalid/debian bookworm main\n"
    )

    assert image.find_debian_mirror(tmp_path) == "http://one.invalid/debian"


def test_missing_mirror_says_what_to_configure(tmp_path: Path) -> None:
    (tmp_path / "sources.list").write_text("deb http://one.invalid/debian trixie main\n")

    with pytest.raises(MissingComponentError, match="no Debian bookworm archive"):
        image.find_debian_mirror(tmp_path)


def test_recipe_hash_names_the_cache_folder(tmp_path: Path) -> None:
    folder = image.image_dir(tmp_path)

    assert folder == tmp_path / "images" / image.recipe_hash()
    assert len(image.recipe_hash()) == 16
    assert image.find_cached_image(tmp_path) is None


def test_built_image_has_the_cloud_user_and_no_host_identity(sandbox_image: Any) -> None:
    rootfs: Path = sandbox_image.rootfs

    groups = subprocess.run(
        ["chroot", str(rootfs), "id", "-nG", image.DEFAULT_USER],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert {"sudo", "adm", "systemd-journal"} <= set(groups)
    assert "NOPASSWD:ALL" in (rootfs / "etc/sudoers.d/90-cloud-user").read_text()
    assert not list((rootfs / "etc/ssh").glob("ssh_host_*"))
    assert (rootfs / "etc/machine-id").read_text() == ""
    assert "MaxStartups 200" in (rootfs / "etc/ssh/sshd_config.d/50-clusterbook.conf").read_text()
    for program in ("sshd", "sudo", "ip", "curl", "gpg", "systemctl"):
        found = subprocess.run(
            ["chroot", str(rootfs), "sh", "-c", f"command -v {program}"],
            capture_output=True,
            text=True,
            check=False,
        )
        assert found.returncode == 0, f"{program} missing from the image"
    unit = rootfs / "etc/systemd/system/sysinit.target.wants/clusterbook-cgroups-writable.service"
    assert unit.is_symlink()

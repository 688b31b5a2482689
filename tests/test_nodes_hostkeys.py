"""Where host keys come from: console output on AWS, the sandbox's publication locally."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from clusterbook.errors import HostError
from clusterbook.nodes.hostkeys import (
    BEGIN_MARKER,
    END_MARKER,
    fetch_host_keys,
    keys_from_console_output,
    parse_public_keys,
)
from clusterbook.sandbox.hosts import published_host_keys_path
from clusterbook.settings import Settings


def make_public_key(folder: Path, key_type: str) -> str:
    path = folder / f"key_{key_type}"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", key_type, "-N", "", "-C", "host", "-f", str(path)],
        check=True,
    )
    return path.with_name(path.name + ".pub").read_text().strip()


def test_console_output_block_is_parsed(tmp_path: Path) -> None:
    ed25519 = make_public_key(tmp_path, "ed25519")
    ecdsa = make_public_key(tmp_path, "ecdsa")
    output = (
        "[   10.1] cloud-init[800]: Cloud-init v. 24.1 running 'modules:config'\n"
        f"{BEGIN_MARKER}\n{ecdsa}\n{ed25519}\n{END_MARKER}\n"
        "[   12.0] cloud-init[900]: finished\n"
    )

    keys = keys_from_console_output(output)

    assert [k.get_name() for k in keys] == ["ecdsa-sha2-nistp256", "ssh-ed25519"]
    assert keys[1].get_base64() == ed25519.split()[1]


def test_console_output_without_keys_gives_none() -> None:
    assert keys_from_console_output("Xen virtual console\nlogin:\n") == []


def test_garbage_lines_are_skipped(tmp_path: Path) -> None:
    ed25519 = make_public_key(tmp_path, "ed25519")

    keys = parse_public_keys(f"ssh-ed25519 not-base64!!\nnonsense\n{ed25519}\n")

    assert len(keys) == 1


def test_sandbox_keys_come_from_the_published_file(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path, sandbox=True, ssh_address="private", requester="t")
    published = published_host_keys_path(tmp_path / "sandbox", "i-0123")
    published.parent.mkdir(parents=True)
    published.write_text(make_public_key(tmp_path, "ed25519") + "\n")

    keys = fetch_host_keys(settings, "i-0123")

    assert [k.get_name() for k in keys] == ["ssh-ed25519"]


def test_missing_keys_are_a_host_error_naming_the_instance(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path, sandbox=True, ssh_address="private", requester="t")

    with pytest.raises(HostError, match="no SSH host keys of i-0456") as caught:
        fetch_host_keys(settings, "i-0456")

    assert caught.value.host == "i-0456"

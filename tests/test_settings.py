"""Settings: precedence defaults < config file < environment < explicit overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from clusterbook.errors import ConfigError
from clusterbook.settings import Settings


def test_defaults_put_everything_under_the_state_dir(tmp_path):
    settings = Settings.load(environ={}, state_dir=tmp_path)
    assert settings.state_dir == tmp_path
    assert settings.archive_url == str(tmp_path / "archive")
    assert settings.index_path == tmp_path / "runs.sqlite3"
    assert settings.aws_endpoint_url is None and settings.ssh_address == "public"


def test_precedence(tmp_path):
    (tmp_path / "clusterbook.toml").write_text(
        'aws_region = "eu-west-1"\nssh_address = "private"\ncell_timeout_s = 10\n'
    )
    environ = {"CLUSTERBOOK_STATE_DIR": str(tmp_path), "CLUSTERBOOK_SSH_ADDRESS": "bastion",
               "CLUSTERBOOK_RUN_TIMEOUT_S": "60"}

    from_file_and_env = Settings.load(environ=environ)
    assert from_file_and_env.aws_region == "eu-west-1"       # file over default
    assert from_file_and_env.ssh_address == "bastion"        # environment over file
    assert from_file_and_env.cell_timeout_s == 10.0 and from_file_and_env.run_timeout_s == 60

    overridden = Settings.load(environ=environ, ssh_address="public")
    assert overridden.ssh_address == "public"                # caller over environment


def test_explicit_config_file(tmp_path):
    config = tmp_path / "team.toml"
    config.write_text('archive_url = "s3://bucket/runs"\n')
    settings = Settings.load(environ={"CLUSTERBOOK_CONFIG": str(config)}, state_dir=tmp_path)
    assert settings.archive_url == "s3://bucket/runs"


@pytest.mark.parametrize("environ, file_text, fragment", [
    ({"CLUSTERBOOK_CONFIG": "/nonexistent/x.toml"}, None, "does not exist"),
    ({}, "colour = 1\n", "unknown setting(s)"),
    ({}, "aws_region = \n", "cannot read config file"),
    ({"CLUSTERBOOK_SANDBOX": "perhaps"}, None, "sandbox must be true or false"),
    ({"CLUSTERBOOK_CELL_TIMEOUT_S": "soon"}, None, "must be a number of seconds"),
    ({"CLUSTERBOOK_SSH_ADDRESS": "carrier-pigeon"}, None, "ssh_address must be one of"),
    # The sandbox's settings file says private; an environment saying public must not win.
    ({"CLUSTERBOOK_SSH_ADDRESS": "public"}, 'sandbox = true\nssh_address = "private"\n',
     "cannot be used with the sandbox"),
])
def test_bad_settings_name_the_problem(tmp_path, environ, file_text, fragment):
    if file_text is not None:
        (tmp_path / "clusterbook.toml").write_text(file_text)
    with pytest.raises(ConfigError) as caught:
        Settings.load(environ=environ, state_dir=tmp_path)
    assert fragment in str(caught.value)


def test_round_trip_for_the_kernel(tmp_path):
    settings = Settings.load(environ={}, state_dir=tmp_path, aws_endpoint_url="http://127.0.0.1:1")
    again = Settings.from_dict(settings.to_dict())
    assert again == settings
    assert isinstance(again.state_dir, Path)

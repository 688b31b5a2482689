"""deploy/: the Slack app manifests, the Kubernetes manifests and the systemd unit hang
together with what the bot actually reads."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from clusterbook_bot.access import parse_policy
from clusterbook_bot.config import BotConfig
from fixtures.common import require

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
MINIMAL_SCOPES = ["commands", "chat:write", "files:write", "usergroups:read"]


def load_all(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def test_app_manifests_ask_only_for_the_scopes_the_bot_uses():
    for name, socket_mode in (
        ("slack-app-manifest.yaml", False),
        ("slack-app-manifest.socket.yaml", True),
    ):
        manifest = load_all(DEPLOY / name)[0]
        assert manifest["oauth_config"]["scopes"]["bot"] == MINIMAL_SCOPES
        assert "user" not in manifest["oauth_config"]["scopes"]
        assert manifest["settings"]["socket_mode_enabled"] is socket_mode
        command = manifest["features"]["slash_commands"][0]
        assert command["command"] == "/clusterbook"
        if not socket_mode:
            assert command["url"].endswith("/slack/events")
            assert manifest["settings"]["interactivity"]["request_url"] == command["url"]


def test_kubernetes_manifests_fit_together():
    folder = DEPLOY / "kubernetes"
    kustomization = load_all(folder / "kustomization.yaml")[0]
    docs = {d["kind"]: d for name in kustomization["resources"] for d in load_all(folder / name)}
    assert set(docs) == {
        "ServiceAccount",
        "ConfigMap",
        "PersistentVolumeClaim",
        "Deployment",
        "Service",
    }

    deployment = docs["Deployment"]
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"]["type"] == "Recreate"
    pod = deployment["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == docs["ServiceAccount"]["metadata"]["name"]
    container = pod["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert not any(k in env for k in ("SLACK_BOT_TOKEN", "SLACK_SIGNING_SECRET"))

    secret = load_all(folder / "secret.template.yaml")[0]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["slack"]["secret"]["secretName"] == secret["metadata"]["name"]
    for variable in ("SLACK_BOT_TOKEN_FILE", "SLACK_SIGNING_SECRET_FILE"):
        folder_path, key = env[variable].rsplit("/", 1)
        assert folder_path == mounts["slack"] and key in secret["stringData"]
    assert (
        volumes["state"]["persistentVolumeClaim"]["claimName"]
        == docs["PersistentVolumeClaim"]["metadata"]["name"]
    )
    assert mounts["state"] == env["CLUSTERBOOK_STATE_DIR"]

    config = docs["ConfigMap"]["data"]
    policy = parse_policy(yaml.safe_load(config["access.yaml"]), source="configmap")
    assert policy.second_approver
    assert env["CLUSTERBOOK_BOT_ACCESS"] == mounts["config"] + "/access.yaml"
    probe = container["readinessProbe"]["httpGet"]
    assert probe["path"] == "/healthz"
    assert docs["Service"]["spec"]["ports"][0]["targetPort"] == container["ports"][0]["name"]


def test_example_access_file_is_valid(tmp_path):
    policy = parse_policy(
        yaml.safe_load((DEPLOY / "access.example.yaml").read_text()), source="example"
    )
    assert policy.decide(user="U1", channel="C1", action="runbooks").allowed
    assert not policy.decide(user="U1", channel="C1", action="run", runbook="00_hello").allowed


def test_systemd_unit_verifies_and_passes_secrets_as_files(tmp_path):
    analyze = shutil.which("systemd-analyze")
    require(analyze is not None, "systemd-analyze (apt-get install systemd)")
    unit = (DEPLOY / "systemd" / "clusterbook-bot.service").read_text()
    assert "SLACK_BOT_TOKEN=" not in unit and "LoadCredential=slack-bot-token" in unit

    local = unit.replace(
        "/opt/clusterbook/.venv/bin/clusterbook-bot",
        str(Path(sys.executable).with_name("clusterbook-bot")),
    )
    (tmp_path / "clusterbook-bot.service").write_text(local)
    checked = subprocess.run(
        [analyze, "verify", str(tmp_path / "clusterbook-bot.service")],
        capture_output=True,
        text=True,
        check=False,
    )
    problems = [line for line in checked.stderr.splitlines() if "clusterbook-bot" in line]
    assert problems == [], checked.stderr


def test_secrets_come_from_files_and_never_show(tmp_path):
    token = tmp_path / "token"
    token.write_text("xoxb-from-a-file\n")
    config = BotConfig.from_environ(
        {
            "SLACK_BOT_TOKEN_FILE": str(token),
            "SLACK_BOT_TOKEN": "xoxb-ignored",
            "SLACK_SIGNING_SECRET": "sig",
        }
    )
    assert config.bot_token.reveal() == "xoxb-from-a-file"
    assert "xoxb" not in repr(config) and "sig" not in str(config.signing_secret)

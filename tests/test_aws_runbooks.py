"""01_provision and 04_teardown run by the engine (papermill, a real kernel) against moto."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from clusterbook.aws.inventory import remembered_region
from clusterbook.aws.tags import TAG_CLUSTER
from fixtures.aws import REGION

PROVISION = {
    "cluster": "nb",
    "region": REGION,
    "admin_cidr": "203.0.113.7/32",
    "wait_for_ssh": "false",
}


@pytest.fixture
def engine(aws_settings: Any) -> Any:
    from clusterbook.engine import Engine

    return Engine(aws_settings)


def live_tagged(aws_cli: Any, cluster: str) -> list[str]:
    tag = f"Name=tag:{TAG_CLUSTER},Values={cluster}"
    states = "Name=instance-state-name,Values=pending,running,stopping,stopped"
    reservations = aws_cli("ec2", "describe-instances", "--filters", tag, states)
    ids = [i["InstanceId"] for r in reservations["Reservations"] for i in r["Instances"]]
    ids += [
        g["GroupId"]
        for g in aws_cli("ec2", "describe-security-groups", "--filters", tag)["SecurityGroups"]
    ]
    ids += [
        k["KeyName"] for k in aws_cli("ec2", "describe-key-pairs", "--filters", tag)["KeyPairs"]
    ]
    return ids


def test_provision_then_teardown_through_the_engine(
    engine: Any, aws_settings: Any, aws_cli: Any
) -> None:
    result = engine.run("01_provision", PROVISION, requester="alice", source="cli")

    assert result.status == "succeeded", result.error and result.error.summary()
    nodes = result.outputs["nodes"]
    assert [n["role"] for n in nodes] == ["control-plane", "worker"]
    described = aws_cli(
        "ec2", "describe-instances", "--instance-ids", *[n["instance"] for n in nodes]
    )
    instances = [i for r in described["Reservations"] for i in r["Instances"]]
    assert {i["InstanceType"] for i in instances} == {"m5a.large"}
    assert {i["MetadataOptions"]["HttpTokens"] for i in instances} == {"required"}
    owners = {t["Value"] for i in instances for t in i["Tags"] if t["Key"] == "clusterbook:owner"}
    assert owners == {"alice"}
    assert result.outputs["cost_preview"][-2]["item"] == "total"
    assert remembered_region(aws_settings, "nb") == aws_settings.aws_region

    again = engine.run("01_provision", PROVISION, requester="alice", source="cli")
    assert [n["instance"] for n in again.outputs["nodes"]] == [n["instance"] for n in nodes]

    down = engine.run(
        "04_teardown", {"cluster": "nb", "confirm": "nb"}, requester="alice", source="cli"
    )
    assert down.status == "succeeded", down.error and down.error.summary()
    assert down.outputs["remaining"] == []
    assert live_tagged(aws_cli, "nb") == []


def test_private_key_never_reaches_outputs_or_the_archive(engine: Any, aws_settings: Any) -> None:
    result = engine.run("01_provision", PROVISION, requester="alice", source="cli")
    assert result.ok
    key_text = (aws_settings.cluster_dir("nb") / "id_ed25519").read_text()
    secret_lines = [line for line in key_text.splitlines() if "PRIVATE KEY" not in line]

    archived = Path(result.notebook_path).read_text()
    assert result.html_path
    html = Path(result.html_path).read_text()
    outputs = repr(result.outputs)
    for text in (archived, html, outputs):
        assert "PRIVATE KEY-----" not in text
        assert not any(line in text for line in secret_lines)
        # Not even redacted: the runbook never showed the key, so there was nothing to hide.
        assert "[REDACTED:private-key]" not in text


def test_teardown_refuses_without_confirmation_and_deletes_nothing(
    engine: Any, aws_cli: Any
) -> None:
    assert engine.run("01_provision", PROVISION, requester="alice", source="cli").ok
    before = live_tagged(aws_cli, "nb")

    result = engine.run("04_teardown", {"cluster": "nb"}, requester="alice", source="cli")

    assert result.status == "failed"
    assert "confirm=nb" in result.error.evalue or "confirm=nb" in result.error.traceback
    assert live_tagged(aws_cli, "nb") == before


def test_bad_input_fails_before_any_resource_exists(engine: Any, aws_cli: Any) -> None:
    result = engine.run(
        "01_provision",
        {**PROVISION, "instance_type": "m5a.gigantic"},
        requester="alice",
        source="cli",
    )

    assert result.status == "failed"
    assert result.error.ename == "UserInputError"
    assert "m5a.gigantic" in result.error.evalue
    assert live_tagged(aws_cli, "nb") == []


def test_the_sandbox_refuses_a_dedicated_vpc_it_could_not_boot_machines_in(
    engine: Any, aws_cli: Any
) -> None:
    params = {**PROVISION, "vpc_mode": "dedicated", "wait_for_ssh": "true"}
    result = engine.run("01_provision", params, requester="alice", source="cli")

    assert result.status == "failed"
    assert "vpc_mode=dedicated is not served by the sandbox" in result.error.evalue
    assert live_tagged(aws_cli, "nb") == []


def test_teardown_after_a_provision_cancelled_midway(engine: Any, aws_cli: Any) -> None:
    record = engine.prepare("01_provision", PROVISION, requester="alice", source="cli")

    def cancel_at_launch(event: Any) -> None:
        if event.kind == "cell" and event.step_title == "Launch the instances":
            engine.cancel(record.run_id)

    result = engine.execute(record.run_id, on_progress=cancel_at_launch)
    assert result.status == "cancelled"
    assert live_tagged(aws_cli, "nb")  # the security group and key pair were made

    down = engine.run(
        "04_teardown", {"cluster": "nb", "confirm": "nb"}, requester="alice", source="cli"
    )

    assert down.ok and down.outputs["remaining"] == []
    assert live_tagged(aws_cli, "nb") == []


def test_runbooks_run_by_hand_as_in_jupyter(
    aws_settings: Any, aws_cli: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No engine: a kernel executes the notebooks top to bottom, settings from the
    environment, parameters edited in their cell as a person would."""
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.delenv("CLUSTERBOOK_RUN_CONTEXT", raising=False)
    monkeypatch.delenv("CLUSTERBOOK_CONFIG", raising=False)
    for name, value in {
        "STATE_DIR": str(aws_settings.state_dir),
        "AWS_ENDPOINT_URL": aws_settings.aws_endpoint_url,
        "AWS_REGION": REGION,
        "SANDBOX": "true",
        "SSH_ADDRESS": "private",
    }.items():
        monkeypatch.setenv(f"CLUSTERBOOK_{name}", value)

    def run_by_hand(name: str, edits: dict[str, str]) -> None:
        notebook = nbformat.read(aws_settings.runbooks_dir / f"{name}.ipynb", as_version=4)
        [cell] = [c for c in notebook.cells if "parameters" in c.metadata.get("tags", [])]
        for old, new in edits.items():
            assert old in cell.source
            cell.source = cell.source.replace(old, new)
        NotebookClient(notebook, timeout=120, kernel_name="python3").execute()

    run_by_hand(
        "01_provision",
        {
            "wait_for_ssh: bool = True": "wait_for_ssh: bool = False",
            'cluster: str = "demo"': 'cluster: str = "byhand"',
        },
    )
    assert len([i for i in live_tagged(aws_cli, "byhand") if i.startswith("i-")]) == 2

    run_by_hand(
        "04_teardown",
        {
            'cluster: str = "demo"': 'cluster: str = "byhand"',
            'confirm: str = ""': 'confirm: str = "byhand"',
        },
    )
    assert live_tagged(aws_cli, "byhand") == []

"""``up`` and ``down`` from Slack against the sandbox's EC2 (moto): signed slash commands to the
real bot, the real provision and teardown runbooks, AWS read back independently."""

from __future__ import annotations

import json
from typing import Any

import boto3
import nbformat

from clusterbook.archive.index import RunIndex
from clusterbook.aws.tags import TAG_CLUSTER
from clusterbook_bot.standin import SlackStandin
from fixtures.aws import REGION
from fixtures.slack import BOT_TOKEN, SlackClientSim, start_bot


def tagged_resources(endpoint: str, cluster: str) -> list[str]:
    ec2 = boto3.client(
        "ec2",
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id="reader",
        aws_secret_access_key="reader",
    )
    tag = [{"Name": f"tag:{TAG_CLUSTER}", "Values": [cluster]}]
    live = tag + [
        {"Name": "instance-state-name", "Values": ["pending", "running", "stopping", "stopped"]}
    ]
    found = [
        i["InstanceId"]
        for r in ec2.describe_instances(Filters=live)["Reservations"]
        for i in r["Instances"]
    ]
    found += [g["GroupId"] for g in ec2.describe_security_groups(Filters=tag)["SecurityGroups"]]
    found += [k["KeyName"] for k in ec2.describe_key_pairs(Filters=tag)["KeyPairs"]]
    return found


def tagged_by_any_service(endpoint: str, cluster: str) -> list[str]:
    """What the tagging API still lists with the cluster's tag, instances aside (terminated
    instances keep their tags for a while, on AWS as in moto)."""
    tagging = boto3.client(
        "resourcegroupstaggingapi",
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id="reader",
        aws_secret_access_key="reader",
    )
    mappings = tagging.get_resources(TagFilters=[{"Key": TAG_CLUSTER, "Values": [cluster]}])
    return [
        m["ResourceARN"]
        for m in mappings["ResourceTagMappingList"]
        if ":instance/" not in m["ResourceARN"]
    ]


def run_message(standin: SlackStandin, channel: str, title: str) -> Any:
    def ended(s: SlackStandin):
        return [
            m
            for m in s.messages(channel)
            if m.thread_ts is None
            and m.text.startswith(title + ":")
            and m.text.split(": ")[-1] in ("succeeded", "failed", "cancelled")
        ]

    return standin.wait_for(ended, timeout=240)[0]


def test_up_then_down_on_the_sandbox_ec2(tmp_path, moto_endpoint):
    with SlackStandin(bot_token=BOT_TOKEN) as standin:
        env = {
            "CLUSTERBOOK_AWS_ENDPOINT_URL": moto_endpoint,
            "CLUSTERBOOK_AWS_REGION": REGION,
            "CLUSTERBOOK_SANDBOX": "true",
            "CLUSTERBOOK_SSH_ADDRESS": "private",
        }
        bot = start_bot(standin=standin, state_dir=tmp_path / "state", extra_env=env)
        try:
            slack = SlackClientSim(bot.url + "/slack/events", standin)

            up = slack.slash("up sbx admin_cidr=203.0.113.7/32 wait_for_ssh=false", channel="C0UP")
            assert "Queued `01_provision`" in up.json()["text"]
            message = run_message(standin, "C0UP", "up sbx")
            blocks = json.dumps(message.blocks)
            assert message.text == "up sbx: succeeded", blocks
            assert "control-plane" in blocks and "worker" in blocks  # the nodes table
            assert "notebook.ipynb" in blocks  # the archive link
            uploads = standin.wait_for(
                lambda s: [f for f in s.files() if f.channel == "C0UP" and f.content]
            )
            archived = nbformat.reads(uploads[0].content.decode(), as_version=4)
            assert archived.metadata["clusterbook"]["run"]["requester"] == "slack:U0ALICE"
            assert len(tagged_resources(moto_endpoint, "sbx")) >= 3
            assert tagged_by_any_service(moto_endpoint, "sbx")  # the group, key, volumes

            status = slack.slash("status sbx", channel="C0UP").json()
            assert "Last success: `01_provision`" in status["text"], status
            assert "control-plane" in json.dumps(status["blocks"])  # the nodes, as recorded

            down = slack.slash("down sbx", channel="C0UP")
            pending = next(b for b in down.json()["blocks"] if b["type"] == "actions")["elements"][
                0
            ]["value"]
            slack.click("clusterbook_confirm", pending, user="U0ALICE", channel="C0UP")
            standin.wait_for(
                lambda s: [
                    m for m in s.messages("C0UP") if "clusterbook_approve" in json.dumps(m.blocks)
                ]
            )
            assert len(tagged_resources(moto_endpoint, "sbx")) >= 3  # nothing before approval
            slack.click("clusterbook_approve", pending, user="U0BOB", channel="C0UP")

            gone = run_message(standin, "C0UP", "down sbx")
            assert gone.text == "down sbx: succeeded", json.dumps(gone.blocks)
        finally:
            bot.stop()

        assert tagged_resources(moto_endpoint, "sbx") == []
        assert tagged_by_any_service(moto_endpoint, "sbx") == []
        index = RunIndex(tmp_path / "state" / "runs.sqlite3")
        teardown = index.list(runbook="04_teardown")[0]
        assert (teardown.requester, teardown.approved_by) == ("slack:U0ALICE", "slack:U0BOB")
        assert teardown.cluster == "sbx"
        assert "Traceback" not in bot.log_text()

"""How many AWS API calls provisioning makes, for 2 and for 20 nodes (target: <= 15 each).

Counted: every call the create steps of 01_provision make (image look-up, network, security
group, key pair, discovery, RunInstances), against a fresh moto server in server mode.
Not counted: the wait loops' polls (DescribeInstances / DescribeInstanceStatus until running
and status ok), which depend on how fast instances start; they are reported separately.
Also reported: a second run on the same cluster (discovery only) and the dedicated-VPC mode.

Last line: {"calls_n2": ..., "calls_n20": ...} plus the extra figures.
"""

from __future__ import annotations

import json
import tempfile
from collections import Counter
from typing import Any

from clusterbook.aws.instances import WaitLimits
from clusterbook.aws.provision import WaitOptions, launch_cluster, wait_for_nodes
from clusterbook.aws.session import make_clients
from clusterbook.aws.validate import validate_cluster_spec
from clusterbook.sandbox.moto import start_moto_server
from clusterbook.settings import Settings

REGION = "eu-west-1"


def count_provision(settings: Settings, *, cluster: str, workers: int, vpc_mode: str) -> Any:
    clients = make_clients(settings, region=REGION)
    calls: Counter[str] = Counter()
    clients.on_every_call(lambda model, **_: calls.update([model.name]))
    spec = validate_cluster_spec(
        cluster=cluster, region=REGION, worker_count=workers, vpc_mode=vpc_mode
    )

    launched = launch_cluster(settings, spec, run_id="bench", clients=clients)
    create_calls = sum(calls.values())
    by_operation = dict(calls)

    calls.clear()
    options = WaitOptions(limits=WaitLimits(poll_s=0.05), wait_for_ssh=False)
    wait_for_nodes(clients.ec2, launched.instance_ids, settings=settings, options=options)
    return create_calls, sum(calls.values()), by_operation, len(launched.instance_ids)


def main() -> None:
    server = start_moto_server()
    try:
        settings = Settings(
            state_dir=tempfile.mkdtemp(prefix="bench-calls-"),
            aws_endpoint_url=server.endpoint_url,
            sandbox=True,
            ssh_address="private",
        )
        results: dict[str, Any] = {}
        for name, cluster, workers, mode in [
            ("n2", "bench-two", 1, "default"),
            ("n20", "bench-twenty", 19, "default"),
            ("n2_rerun", "bench-two", 1, "default"),
            ("n2_dedicated", "bench-dedicated", 1, "dedicated"),
        ]:
            calls, polls, by_operation, nodes = count_provision(
                settings, cluster=cluster, workers=workers, vpc_mode=mode
            )
            print(f"{name}: {nodes} nodes, {calls} API calls, {polls} wait polls")
            print("   " + ", ".join(f"{op} {n}" for op, n in sorted(by_operation.items())))
            results[f"calls_{name}"] = calls
            results[f"polls_{name}"] = polls
    finally:
        server.stop()
    print(json.dumps(results))


if __name__ == "__main__":
    main()

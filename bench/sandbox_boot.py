"""Benchmark sandbox hosts: time from RunInstances to every host answering SSH, for 1, 10 and
50 hosts, and the memory one booted host costs.

    sudo .venv/bin/python bench/sandbox_boot.py [--sizes 1,10,50]

Each round launches N instances in one RunInstances call into a default subnet of a fresh
sandbox, then waits until every host's sshd sends its banner (``boot_s_nN``), then logs in to
every host with Fabric as ``ubuntu`` with host keys checked and waits for
``systemctl is-system-running --wait`` (``ready_s_nN``, from the same start). Memory per host
is the resident memory of each machine's whole process tree (nspawn, systemd and everything
under it) at the largest size (RSS counts shared library pages once per process; PSS splits
them), and the drop in MemAvailable per host (which also counts the
page cache and kernel memory the machines add). Instances are terminated between rounds.
The last line printed is a JSON object.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from clusterbook.aws.inventory import Node
from clusterbook.nodes.ssh import NodeConnection, run_on_nodes
from clusterbook.sandbox import hosts
from clusterbook.sandbox.daemon import sandbox_ec2_client
from clusterbook.sandbox.image import default_cache_dir
from clusterbook.sandbox.lifecycle import sandbox_down, sandbox_status, sandbox_up
from clusterbook.settings import Settings

IMAGE_ID = "ami-0b24a7f1e9d3c5002"
#: How long a round may take to boot, or to remove, its hosts before the benchmark gives up.
BOOT_LIMIT_S = 600.0


def mem_available_mb() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no MemAvailable in /proc/meminfo")


def tree_memory_mb(roots: list[int]) -> tuple[float, float]:
    """Resident and proportional (shared pages split) memory of every process under ``roots``."""
    children: dict[int, list[int]] = defaultdict(list)
    rss: dict[int, int] = {}
    pss: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            status = (entry / "status").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        children[parent].append(int(entry.name))
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                rss[int(entry.name)] = int(line.split()[1])
        try:
            rollup = (entry / "smaps_rollup").read_text()
        except OSError:
            rollup = ""
        for line in rollup.splitlines():
            if line.startswith("Pss:"):
                pss[int(entry.name)] = int(line.split()[1])
    rss_total, pss_total, stack = 0, 0, list(roots)
    while stack:
        pid = stack.pop()
        rss_total += rss.get(pid, 0)
        pss_total += pss.get(pid, 0)
        stack.extend(children.get(pid, []))
    return rss_total / 1024, pss_total / 1024


def subnet_id(ec2: object) -> str:
    subnets = ec2.describe_subnets(  # type: ignore[attr-defined]
        Filters=[{"Name": "default-for-az", "Values": ["true"]}]
    )["Subnets"]
    return min(subnets, key=lambda s: s["AvailabilityZone"])["SubnetId"]


def run_round(settings: Settings, ec2: object, count: int, key_dir: Path) -> dict[str, float]:
    key_name = f"bench-{count}"
    material = ec2.create_key_pair(KeyName=key_name, KeyType="ed25519")  # type: ignore[attr-defined]
    key_path = key_dir / key_name
    key_path.write_text(material["KeyMaterial"])
    key_path.chmod(0o600)
    available_before = mem_available_mb()

    started = time.monotonic()
    reply = ec2.run_instances(  # type: ignore[attr-defined]
        ImageId=IMAGE_ID,
        InstanceType="m5a.large",
        MinCount=count,
        MaxCount=count,
        KeyName=key_name,
        SubnetId=subnet_id(ec2),
    )
    instances = reply["Instances"]
    pending = {i["InstanceId"]: i["PrivateIpAddress"] for i in instances}
    deadline = started + BOOT_LIMIT_S
    while pending:
        if time.monotonic() > deadline:
            sys.exit(f"n={count}: {len(pending)} hosts not booted after {BOOT_LIMIT_S:.0f} s")
        booted = {h.instance_id for h in sandbox_status(settings).hosts if h.state == "running"}
        for instance_id in sorted(booted & set(pending)):
            hosts.wait_for_ssh(pending.pop(instance_id), timeout_s=120)
        time.sleep(0.05)
    boot_s = time.monotonic() - started

    nodes = [
        Node(
            name=i["InstanceId"],
            role="worker",
            instance_id=i["InstanceId"],
            private_ip=i["PrivateIpAddress"],
            public_ip="",
            private_dns=i["PrivateDnsName"],
            ssh_address=i["PrivateIpAddress"],
            availability_zone="",
            state="running",
        )
        for i in instances
    ]
    connections = [NodeConnection(settings, node, key_path=key_path) for node in nodes]
    command = "systemctl is-system-running --wait; systemctl --failed --no-legend --plain; true"
    results = run_on_nodes(connections, command, timeout_s=300)
    ready_s = time.monotonic() - started
    states = sorted({" ".join(r.stdout.split()[:2]) for r in results})
    for connection in connections:
        connection.close()

    time.sleep(2)  # let first-boot work settle before measuring memory
    pids = [h.pid for h in sandbox_status(settings).hosts if h.pid]
    rss_mb, pss_mb = (total / len(pids) for total in tree_memory_mb(pids))
    available_drop = (available_before - mem_available_mb()) / count

    ids = [i["InstanceId"] for i in instances]
    ec2.terminate_instances(InstanceIds=ids)  # type: ignore[attr-defined]
    deadline = time.monotonic() + BOOT_LIMIT_S
    while sandbox_status(settings).hosts:
        if time.monotonic() > deadline:
            sys.exit(f"n={count}: hosts still there {BOOT_LIMIT_S:.0f} s after termination")
        time.sleep(0.2)
    print(
        f"n={count:>3}: ssh banner {boot_s:6.2f} s, logged in and running {ready_s:6.2f} s "
        f"({', '.join(states)}), {rss_mb:5.1f} MB RSS ({pss_mb:4.1f} MB PSS) per host, "
        f"{available_drop:5.1f} MB MemAvailable per host",
        flush=True,
    )
    return {
        "boot_s": boot_s,
        "ready_s": ready_s,
        "rss_mb": rss_mb,
        "pss_mb": pss_mb,
        "avail_mb": available_drop,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1,10,50")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    if os.geteuid() != 0:
        sys.exit("the sandbox needs root: run this with sudo")
    logging.basicConfig(level=logging.WARNING)

    with tempfile.TemporaryDirectory(prefix="clusterbook-bench-") as folder:
        settings = Settings(state_dir=Path(folder) / "state", requester="bench")
        status = sandbox_up(settings, cache_dir=default_cache_dir(os.environ))
        settings = Settings.load(environ={}, state_dir=settings.state_dir, requester="bench")
        ec2 = sandbox_ec2_client(status.endpoint_url or "", status.region or "")
        figures: dict[str, float] = {}
        try:
            for count in sizes:
                measured = run_round(settings, ec2, count, Path(folder))
                figures[f"boot_s_n{count}"] = round(measured["boot_s"], 2)
                figures[f"ready_s_n{count}"] = round(measured["ready_s"], 2)
                figures[f"rss_mb_per_host_n{count}"] = round(measured["rss_mb"], 1)
                figures[f"pss_mb_per_host_n{count}"] = round(measured["pss_mb"], 1)
                figures[f"mem_available_mb_per_host_n{count}"] = round(measured["avail_mb"], 1)
            # The headline per-host figure: from the largest round, where fixed costs
            # (the daemon, moto) are spread thinnest.
            largest = max(sizes)
            figures["rss_mb_per_host"] = figures[f"rss_mb_per_host_n{largest}"]
        finally:
            sandbox_down(settings)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()

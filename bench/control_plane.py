"""Benchmark the local control plane: ready time with a warm binary cache, then the time and
peak memory to bring it to 1,000 simulated nodes and 10,000 running pods.

    .venv/bin/python bench/control_plane.py [--nodes 1000] [--pods 10000]

Pods are created the way users create them, through Deployments (``--deployments`` of them),
so the ReplicaSet controller, the scheduler and kwok all do their share. Populating ends
when every node is Ready and every Deployment reports all replicas ready; one full pod list
then confirms the count. Memory is each component's peak resident set (VmHWM).
The last line printed is a JSON object.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import time
from pathlib import Path

from kubernetes import client as kube_client

from clusterbook.kube.controlplane import WORKER_ROLE, ControlPlane
from clusterbook.kube.toolchain import default_cache_dir, locate_binaries

NAMESPACE = "bench"


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def deployment_body(name: str, replicas: int) -> dict:
    labels = {"app": name}
    return {
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "containers": [{"name": "app", "image": "nginx:1.27"}],
                    "tolerations": [{"operator": "Exists", "effect": "NoSchedule"}],
                },
            },
        },
    }


def count_ready_nodes(core: kube_client.CoreV1Api) -> int:
    response = core.list_node(_preload_content=False)
    ready = 0
    for node in json.loads(response.data)["items"]:
        for condition in node["status"].get("conditions") or []:
            if condition["type"] == "Ready" and condition["status"] == "True":
                ready += 1
    return ready


def wait(what: str, check, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--pods", type=int, default=10000)
    parser.add_argument("--deployments", type=int, default=20)
    parser.add_argument("--timeout", type=float, default=1200.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    # SIGTERM (timeout, CI) ends the run through `finally`, which stops the control plane.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(f"stopped by signal {signum}"))
    binaries = locate_binaries(default_cache_dir())
    plane = ControlPlane(binaries, workers=3)
    started = time.monotonic()
    plane.start()
    ready_s = time.monotonic() - started
    print(f"ready in {ready_s:.2f}s")

    try:
        with plane.api_client() as api:
            core = kube_client.CoreV1Api(api)
            apps = kube_client.AppsV1Api(api)
            populate_started = time.monotonic()

            extra = max(0, args.nodes - len(plane.node_names))
            plane.register_nodes(plane.node_names_for(WORKER_ROLE, extra), role=WORKER_ROLE)
            wait("nodes Ready", lambda: count_ready_nodes(core) >= args.nodes, args.timeout)
            nodes_s = time.monotonic() - populate_started
            print(f"{args.nodes} nodes Ready after {nodes_s:.1f}s")

            core.create_namespace({"metadata": {"name": NAMESPACE}})
            per_deployment = args.pods // args.deployments
            for index in range(args.deployments):
                replicas = per_deployment + (1 if index < args.pods % args.deployments else 0)
                apps.create_namespaced_deployment(
                    NAMESPACE, deployment_body(f"load-{index}", replicas)
                )

            def pods_ready() -> bool:
                items = apps.list_namespaced_deployment(NAMESPACE).items
                return sum(d.status.ready_replicas or 0 for d in items) >= args.pods

            wait("pods ready", pods_ready, args.timeout)
            populate_s = time.monotonic() - populate_started
            pods_s = populate_s - nodes_s

            listing = json.loads(core.list_namespaced_pod(NAMESPACE, _preload_content=False).data)[
                "items"
            ]
            running = sum(1 for pod in listing if pod["status"].get("phase") == "Running")
            print(f"{running} pods Running after {populate_s:.1f}s")
            ready_nodes = count_ready_nodes(core)
            memory = {p.name: round(peak_rss_mb(p.pid), 1) for p in plane.processes if p.pid}
            print("peak RSS MB:", memory)
    finally:
        plane.stop()

    result = {
        "ready_s": round(ready_s, 2),
        "nodes": ready_nodes,
        "pods": running,
        "populate_s": round(populate_s, 1),
        "nodes_s": round(nodes_s, 1),
        "pods_s": round(pods_s, 1),
        "peak_rss_mb": memory,
        "peak_rss_total_mb": round(sum(memory.values()), 1),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    sys.exit(main())

"""Workloads on the local control plane, driven by the built kubectl (a client nobody here
wrote): a Deployment rolls out onto simulated workers, its Service gets EndpointSlices, a
deleted pod is replaced, and scaling works both ways."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from clusterbook.kube.controlplane import ControlPlane

NAMESPACE = "web"

MANIFEST = """\
apiVersion: v1
kind: Namespace
metadata:
  name: web
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: nginx
  namespace: web
spec:
  replicas: 3
  selector:
    matchLabels: {app: nginx}
  template:
    metadata:
      labels: {app: nginx}
    spec:
      containers:
      - name: nginx
        image: nginx:1.27
        ports:
        - containerPort: 80
---
apiVersion: v1
kind: Service
metadata:
  name: nginx
  namespace: web
spec:
  selector: {app: nginx}
  ports:
  - port: 80
    targetPort: 80
"""


def _get(plane: ControlPlane, *args: str) -> Any:
    return json.loads(plane.run_kubectl("get", *args, "-o", "json").stdout)


def _running_pods(plane: ControlPlane) -> list[dict[str, Any]]:
    pods = _get(plane, "pods", "-n", NAMESPACE, "-l", "app=nginx")["items"]
    return [
        pod
        for pod in pods
        if pod["status"].get("phase") == "Running" and "deletionTimestamp" not in pod["metadata"]
    ]


def _wait_for_pods(plane: ControlPlane, count: int, timeout_s: float = 60) -> list[dict]:
    """Wait until exactly ``count`` pods exist and all are Running."""
    deadline = time.monotonic() + timeout_s
    while True:
        pods = _get(plane, "pods", "-n", NAMESPACE, "-l", "app=nginx")["items"]
        running = _running_pods(plane)
        if len(pods) == count and len(running) == count:
            return running
        if time.monotonic() > deadline:
            phases = [(p["metadata"]["name"], p["status"].get("phase")) for p in pods]
            pytest.fail(f"wanted {count} running pods, have {phases}")
        time.sleep(0.3)


@pytest.fixture(scope="module")
def nginx(control_plane: ControlPlane) -> Iterator[ControlPlane]:
    control_plane.run_kubectl("apply", "-f", "-", input_text=MANIFEST)
    control_plane.run_kubectl(
        "rollout", "status", "deployment/nginx", "-n", NAMESPACE, "--timeout=90s"
    )
    yield control_plane
    control_plane.run_kubectl("delete", "namespace", NAMESPACE, "--wait=false")


def test_kubectl_reads_readyz(control_plane: ControlPlane) -> None:
    result = control_plane.run_kubectl("get", "--raw", "/readyz")
    assert result.stdout.strip() == "ok"


def test_nodes_are_ready_with_roles(control_plane: ControlPlane) -> None:
    nodes = _get(control_plane, "nodes")["items"]

    assert sorted(n["metadata"]["name"] for n in nodes) == sorted(control_plane.node_names)
    roles = {
        n["metadata"]["name"]: {
            label.split("/", 1)[1]
            for label in n["metadata"]["labels"]
            if label.startswith("node-role.kubernetes.io/")
        }
        for n in nodes
    }
    assert sorted(roles.values(), key=sorted) == [{"control-plane"}] + [{"worker"}] * 3
    for node in nodes:
        ready = [c for c in node["status"]["conditions"] if c["type"] == "Ready"]
        assert ready and ready[0]["status"] == "True"


def test_deployment_runs_three_pods_on_simulated_workers(nginx: ControlPlane) -> None:
    pods = _wait_for_pods(nginx, 3)

    workers = {name for name in nginx.node_names if name.startswith("worker-")}
    assert {pod["spec"]["nodeName"] for pod in pods} <= workers
    assert all(len(pod["status"]["podIPs"]) == 1 for pod in pods)
    assert len({pod["status"]["podIP"] for pod in pods}) == 3
    deployment = _get(nginx, "deployment", "nginx", "-n", NAMESPACE)
    assert deployment["status"]["readyReplicas"] == 3


def test_service_endpoint_slices_list_the_three_pods(nginx: ControlPlane) -> None:
    pod_ips = {pod["status"]["podIP"] for pod in _wait_for_pods(nginx, 3)}

    deadline = time.monotonic() + 30
    while True:
        slices = _get(
            nginx, "endpointslices", "-n", NAMESPACE, "-l", "kubernetes.io/service-name=nginx"
        )["items"]
        addresses = {
            address
            for piece in slices
            for endpoint in piece.get("endpoints") or []
            if endpoint["conditions"].get("ready")
            for address in endpoint["addresses"]
        }
        if addresses == pod_ips or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert addresses == pod_ips
    assert len(addresses) == 3


def test_deleted_pod_is_replaced_by_the_replica_set(nginx: ControlPlane) -> None:
    before = _wait_for_pods(nginx, 3)
    victim = before[0]["metadata"]["name"]

    nginx.run_kubectl("delete", "pod", victim, "-n", NAMESPACE, "--wait=true")
    after = _wait_for_pods(nginx, 3)

    names = {pod["metadata"]["name"] for pod in after}
    assert victim not in names
    assert len(names - {pod["metadata"]["name"] for pod in before}) == 1
    owners = {pod["metadata"]["ownerReferences"][0]["kind"] for pod in after}
    assert owners == {"ReplicaSet"}


def test_scale_up_to_five_and_back_to_three(nginx: ControlPlane) -> None:
    nginx.run_kubectl("scale", "deployment/nginx", "-n", NAMESPACE, "--replicas=5")
    assert len(_wait_for_pods(nginx, 5)) == 5

    nginx.run_kubectl("scale", "deployment/nginx", "-n", NAMESPACE, "--replicas=3")
    assert len(_wait_for_pods(nginx, 3)) == 3
    deployment = _get(nginx, "deployment", "nginx", "-n", NAMESPACE)
    assert deployment["spec"]["replicas"] == 3


def test_job_pod_completes(control_plane: ControlPlane) -> None:
    control_plane.run_kubectl("create", "namespace", "batch")
    try:
        control_plane.run_kubectl(
            "create", "job", "once", "-n", "batch", "--image=busybox:1.36", "--", "true"
        )
        control_plane.run_kubectl(
            "wait", "--for=condition=Complete", "job/once", "-n", "batch", "--timeout=60s"
        )

        pods = _get(control_plane, "pods", "-n", "batch", "-l", "job-name=once")["items"]
        assert [pod["status"]["phase"] for pod in pods] == ["Succeeded"]
        job = _get(control_plane, "job", "once", "-n", "batch")
        assert job["status"]["succeeded"] == 1
    finally:
        control_plane.run_kubectl("delete", "namespace", "batch", "--wait=false")


def test_a_pod_marked_not_ready_becomes_ready_again(nginx: ControlPlane) -> None:
    """kwok's ready-again stage plays the kubelet's part when a probe recovers."""
    pod = _running_pods(nginx)[0]["metadata"]["name"]
    nginx.run_kubectl(
        "patch", "pod", pod, "-n", NAMESPACE, "--subresource=status", "--type=strategic",
        "-p", '{"status":{"conditions":[{"type":"Ready","status":"False"}]}}',
    )

    def ready() -> str:
        conditions = _get(nginx, "pod", pod, "-n", NAMESPACE)["status"]["conditions"]
        return next(c["status"] for c in conditions if c["type"] == "Ready")

    assert ready() == "False"
    deadline = time.monotonic() + 30
    while ready() != "True":
        assert time.monotonic() < deadline, f"{pod} stayed not ready"
        time.sleep(0.3)

"""kwok's configuration and the lifecycle of simulated nodes and pods (Stage objects), as
the multi-document YAML file given to ``kwok --config``.

kwok changes nothing on its own: each Stage selects objects (by jq-like expressions) and says
what their status becomes. Without any, the kwok controller exits with "no stages found".
Ours: a new node becomes Ready; a ready node refreshes its status now and then (its Lease,
renewed by kwok itself, is the frequent heartbeat); a scheduled pod starts running with an IP;
a running pod marked not ready becomes ready again; a Job's running pod completes; a pod being
deleted goes away.

Known shortcoming: kwok sometimes plays the running stage twice on one pod (a second event
arrives before its own patch is seen) and asks its IP pool for a second address; the
apiserver refuses a second IPv4 and kwok logs "failed to apply stage ... may specify no more
than one IP for each IP family". The first patch stands, so every pod ends with one IP of
its own (the workload tests check it); the refused address is simply never used.
"""

from __future__ import annotations

from typing import Any

import yaml

STAGE_API_VERSION = "kwok.x-k8s.io/v1alpha1"
CONFIG_API_VERSION = "config.kwok.x-k8s.io/v1alpha1"

#: Status of a node that has just been created: conditions, size, phase. Addresses given at
#: registration (clusterbook gives each node its own InternalIP) are kept.
_NODE_READY_STATUS = """\
{{ $now := Now }}
conditions:
{{ range NodeConditions }}
- type: {{ .type | Quote }}
  status: {{ .status | Quote }}
  reason: {{ .reason | Quote }}
  message: {{ .message | Quote }}
  lastHeartbeatTime: {{ $now | Quote }}
  lastTransitionTime: {{ $now | Quote }}
{{ end }}
addresses:
{{ with .status.addresses }}{{ YAML . 1 }}{{ else }}
- type: Hostname
  address: {{ .metadata.name | Quote }}
{{ end }}
allocatable:
{{ with .status.allocatable }}{{ YAML . 1 }}{{ else }}
  cpu: "32"
  memory: 128Gi
  pods: "110"
{{ end }}
capacity:
{{ with .status.capacity }}{{ YAML . 1 }}{{ else }}
  cpu: "32"
  memory: 128Gi
  pods: "110"
{{ end }}
nodeInfo:
  architecture: amd64
  operatingSystem: linux
  kubeletVersion: {{ printf "kwok-%s" Version | Quote }}
  kubeProxyVersion: {{ printf "kwok-%s" Version | Quote }}
  containerRuntimeVersion: {{ printf "kwok-%s" Version | Quote }}
  kernelVersion: {{ printf "kwok-%s" Version | Quote }}
  osImage: "kwok simulated node"
  machineID: ""
  bootID: ""
  systemUUID: ""
phase: Running
"""

#: A periodic refresh of a ready node's conditions, keeping their transition times.
_NODE_HEARTBEAT_STATUS = """\
{{ $now := Now }}
conditions:
{{ range .status.conditions }}
- type: {{ .type | Quote }}
  status: {{ .status | Quote }}
  reason: {{ .reason | Quote }}
  message: {{ .message | Quote }}
  lastHeartbeatTime: {{ $now | Quote }}
  lastTransitionTime: {{ .lastTransitionTime | Quote }}
{{ end }}
"""

#: A scheduled pod: every container running and ready, with host and pod IPs.
_POD_RUNNING_STATUS = """\
{{ $now := Now }}
phase: Running
startTime: {{ $now | Quote }}
conditions:
{{ range list "PodScheduled" "Initialized" "ContainersReady" "Ready" }}
- type: {{ . | Quote }}
  status: "True"
  lastTransitionTime: {{ $now | Quote }}
{{ end }}
containerStatuses:
{{ range .spec.containers }}
- name: {{ .name | Quote }}
  image: {{ .image | Quote }}
  ready: true
  started: true
  restartCount: 0
  state:
    running:
      startedAt: {{ $now | Quote }}
{{ end }}
{{ with NodeIPsWith .spec.nodeName }}
hostIP: {{ index . 0 | Quote }}
hostIPs:
{{ range . }}
- ip: {{ . | Quote }}
{{ end }}
{{ end }}
{{ with PodIPsWith .spec.nodeName (or .spec.hostNetwork false) (or .metadata.uid "") \
(or .metadata.name "") (or .metadata.namespace "") }}
podIP: {{ index . 0 | Quote }}
podIPs:
{{ range . }}
- ip: {{ . | Quote }}
{{ end }}
{{ end }}
"""

#: A running pod marked not ready (the node controller does that when its node misses
#: heartbeats) is reported ready again, as a kubelet that is still alive would.
_POD_READY_AGAIN_STATUS = """\
{{ $now := Now }}
conditions:
- type: ContainersReady
  status: "True"
  lastTransitionTime: {{ $now | Quote }}
- type: Ready
  status: "True"
  lastTransitionTime: {{ $now | Quote }}
"""

#: A Job's pod: its containers exit 0.
_POD_SUCCEEDED_STATUS = """\
{{ $now := Now }}
phase: Succeeded
conditions:
- type: Ready
  status: "False"
  reason: PodCompleted
  lastTransitionTime: {{ $now | Quote }}
- type: ContainersReady
  status: "False"
  reason: PodCompleted
  lastTransitionTime: {{ $now | Quote }}
containerStatuses:
{{ range .spec.containers }}
- name: {{ .name | Quote }}
  image: {{ .image | Quote }}
  ready: false
  started: false
  restartCount: 0
  state:
    terminated:
      exitCode: 0
      reason: Completed
      startedAt: {{ $now | Quote }}
      finishedAt: {{ $now | Quote }}
{{ end }}
"""


def _expression(key: str, operator: str, *values: str) -> dict[str, Any]:
    expression: dict[str, Any] = {"key": key, "operator": operator}
    if values:
        expression["values"] = list(values)
    return expression


def _stage(
    name: str,
    kind: str,
    expressions: list[dict[str, Any]],
    next_step: dict[str, Any],
    *,
    delay_ms: int | None = None,
    jitter_ms: int | None = None,
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "resourceRef": {"apiGroup": "v1", "kind": kind},
        "selector": {"matchExpressions": expressions},
        "next": next_step,
    }
    if delay_ms is not None:
        spec["delay"] = {
            "durationMilliseconds": delay_ms,
            "jitterDurationMilliseconds": jitter_ms or delay_ms,
        }
    return {
        "apiVersion": STAGE_API_VERSION,
        "kind": "Stage",
        "metadata": {"name": name},
        "spec": spec,
    }


_NODE_READY = '.status.conditions.[] | select( .type == "Ready" ) | .status'
_POD_READY = '.status.conditions.[] | select( .type == "Ready" ) | .status'


def build_stages(*, node_heartbeat_s: int = 300) -> list[dict[str, Any]]:
    """The Stage objects, in the order kwok should consider them."""
    heartbeat_ms = node_heartbeat_s * 1000
    return [
        _stage(
            "clusterbook-node-initialise",
            "Node",
            [_expression(_NODE_READY, "NotIn", "True")],
            {"statusTemplate": _NODE_READY_STATUS},
        ),
        _stage(
            "clusterbook-node-heartbeat",
            "Node",
            [
                _expression(".status.phase", "In", "Running"),
                _expression(_NODE_READY, "In", "True"),
            ],
            {"statusTemplate": _NODE_HEARTBEAT_STATUS},
            delay_ms=heartbeat_ms,
            jitter_ms=heartbeat_ms + heartbeat_ms // 5,
        ),
        _stage(
            "clusterbook-pod-running",
            "Pod",
            [
                _expression(".metadata.deletionTimestamp", "DoesNotExist"),
                _expression(".status.phase", "In", "Pending"),
                _expression(_POD_READY, "NotIn", "True"),
            ],
            {"statusTemplate": _POD_RUNNING_STATUS},
        ),
        _stage(
            "clusterbook-pod-ready-again",
            "Pod",
            [
                _expression(".metadata.deletionTimestamp", "DoesNotExist"),
                _expression(".status.phase", "In", "Running"),
                _expression(_POD_READY, "NotIn", "True"),
            ],
            {"statusTemplate": _POD_READY_AGAIN_STATUS},
            delay_ms=2000,
            jitter_ms=5000,
        ),
        _stage(
            "clusterbook-pod-complete",
            "Pod",
            [
                _expression(".metadata.deletionTimestamp", "DoesNotExist"),
                _expression(".status.phase", "In", "Running"),
                _expression(".metadata.ownerReferences.[].kind", "In", "Job"),
            ],
            {"statusTemplate": _POD_SUCCEEDED_STATUS},
        ),
        _stage(
            "clusterbook-pod-delete",
            "Pod",
            [_expression(".metadata.deletionTimestamp", "Exists")],
            {"delete": True},
        ),
    ]


class _StageDumper(yaml.SafeDumper):
    """Writes multi-line strings (the templates) as literal blocks, readable in the file."""


def _represent_text(dumper: yaml.SafeDumper, text: str) -> yaml.ScalarNode:
    style = "|" if "\n" in text else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style=style)


_StageDumper.add_representer(str, _represent_text)


def build_kwok_configuration(*, parallelism: int = 16) -> dict[str, Any]:
    """kwok's own options: how many nodes, pods and leases it works on at once.

    kwok's defaults (4 each) leave it waiting on the apiserver most of the time: with 10,000
    pods it used a few percent of a core and patched about 25 pods a second.
    """
    return {
        "apiVersion": CONFIG_API_VERSION,
        "kind": "KwokConfiguration",
        "options": {
            "podPlayStageParallelism": parallelism,
            "nodePlayStageParallelism": parallelism,
            "nodeLeaseParallelism": parallelism,
        },
    }


def render_kwok_config(*, node_heartbeat_s: int = 300, parallelism: int = 16) -> str:
    """kwok's configuration and our stages as one multi-document YAML text for ``--config``."""
    documents = [build_kwok_configuration(parallelism=parallelism)]
    documents += build_stages(node_heartbeat_s=node_heartbeat_s)
    return yaml.dump_all(documents, Dumper=_StageDumper, sort_keys=False)

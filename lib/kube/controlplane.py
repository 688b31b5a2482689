"""A local Kubernetes control plane: etcd, kube-apiserver, kube-controller-manager,
kube-scheduler and kwok, started from the pinned binaries and stopped without a trace.

    with ControlPlane(locate_binaries(cache_dir), workers=3) as plane:
        plane.run_kubectl("get", "nodes")          # or use plane.kubeconfig with any client

Everything listens on free 127.0.0.1 ports and lives in one temporary folder (PKI, etcd
data, kubeconfigs, logs), removed on stop. Nodes are simulated by kwok: Node objects that
kwok keeps Ready and whose scheduled pods it reports Running, with IPs from a private range,
so Deployments, ReplicaSets, Services and EndpointSlices behave as on a real cluster while
no container ever runs.

Known shortcomings: etcd runs without fsync (``--unsafe-no-fsync``) because the data is
thrown away on stop and fsync dominates write latency here; the apiserver's own endpoint
reconciler is off (it would publish 127.0.0.1, which Endpoints validation refuses), so the
``kubernetes`` Service has no endpoints.
"""

from __future__ import annotations

import http.client
import ipaddress
import logging
import os
import shutil
import ssl
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from kubernetes import client as kube_client
from kubernetes import config as kube_config
from kubernetes.client.exceptions import ApiException

from clusterbook.errors import KubeError
from clusterbook.kube.kubeconfig import write_kubeconfig
from clusterbook.kube.pki import ClusterPki, create_pki
from clusterbook.kube.processes import (
    ManagedProcess,
    find_free_ports,
    kill_programs_naming,
    wait_for,
)
from clusterbook.kube.stages import render_kwok_config
from clusterbook.kube.toolchain import KubeBinaries
from clusterbook.redact import redact_text

logger = logging.getLogger(__name__)

SERVICE_CIDR = "10.96.0.0/16"
POD_CIDR = "10.244.0.0/16"
#: Simulated nodes get InternalIPs from here, one each, in creation order.
NODE_CIDR = "10.240.0.0/16"
#: The annotation kwok selects its nodes by.
SIMULATED_NODE_ANNOTATION = "kwok.x-k8s.io/node"
CONTROL_PLANE_ROLE = "control-plane"
WORKER_ROLE = "worker"
ROLE_LABEL_PREFIX = "node-role.kubernetes.io/"
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
WORK_DIR_PREFIX = "clusterbook-kube-"
#: Holds the pid of the process that owns a work folder.
OWNER_FILE = "owner.pid"


def remove_stale_work_dirs(parent: Path) -> list[Path]:
    """Remove work folders left by control planes whose owning process has died.

    Components usually die with their owner (see ``processes``), but a folder is only
    removed by ``stop()``, which a killed process never reaches; the next start sweeps such
    leftovers, and any component still running from one.
    """
    removed = []
    for candidate in parent.glob(f"{WORK_DIR_PREFIX}*"):
        try:
            owner = int((candidate / OWNER_FILE).read_text())
        except (OSError, ValueError):
            continue
        if owner == os.getpid() or Path(f"/proc/{owner}").exists():
            continue
        for pid in kill_programs_naming(candidate):
            logger.info("stopped pid %d, a component left running by process %d", pid, owner)
        shutil.rmtree(candidate, ignore_errors=True)
        removed.append(candidate)
        logger.info("removed %s, left behind by process %d", candidate, owner)
    return removed


class ControlPlane:
    """One local control plane; ``start()``/``stop()`` or use it as a context manager."""

    def __init__(
        self,
        binaries: KubeBinaries,
        *,
        workers: int = 3,
        control_plane_nodes: int = 1,
        startup_timeout_s: float = 60.0,
        node_lease_s: int = 40,
        node_heartbeat_s: int = 300,
        parent_dir: Path | None = None,
    ) -> None:
        self.binaries = binaries
        self.workers = workers
        self.control_plane_nodes = control_plane_nodes
        self.startup_timeout_s = startup_timeout_s
        self.node_lease_s = node_lease_s
        #: How often kwok refreshes each node's conditions, as a kubelet's status update.
        self.node_heartbeat_s = node_heartbeat_s
        self.parent_dir = parent_dir

        self.work_dir: Path | None = None
        self.node_names: list[str] = []
        self.ready_s: float | None = None
        self._processes: list[ManagedProcess] = []
        self._pki: ClusterPki | None = None
        self._apiserver_port: int | None = None
        self._next_node_ip = 1

    # -- what clients need -----------------------------------------------------------------

    @property
    def server(self) -> str:
        if self._apiserver_port is None:
            raise KubeError("the control plane is not started")
        return f"https://127.0.0.1:{self._apiserver_port}"

    @property
    def kubeconfig(self) -> Path:
        """Admin kubeconfig (group ``system:masters``) for kubectl or the Python client."""
        if self.work_dir is None:
            raise KubeError("the control plane is not started")
        return self.work_dir / "admin.kubeconfig"

    @property
    def kubectl(self) -> Path:
        return self.binaries.kubectl

    @property
    def processes(self) -> list[ManagedProcess]:
        return list(self._processes)

    def api_client(self) -> kube_client.ApiClient:
        """A fresh official-client ApiClient for the admin user; close it when done."""
        return kube_config.new_client_from_config(config_file=str(self.kubeconfig))

    def run_kubectl(
        self, *args: str, input_text: str | None = None, timeout_s: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        """Run the built kubectl against this control plane; KubeError on a non-zero exit."""
        argv = [str(self.kubectl), f"--kubeconfig={self.kubeconfig}", *args]
        # Arguments may carry secrets; redact the kinds we recognise (join tokens, keys).
        logger.debug("kubectl %s", redact_text(" ".join(args)))
        result = subprocess.run(
            argv,
            input=input_text,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
        if result.returncode != 0:
            raise KubeError(
                redact_text(
                    f"kubectl {' '.join(args)} failed with status {result.returncode}: "
                    f"{result.stderr.strip()[-1500:]}"
                )
            )
        return result

    # -- lifecycle -------------------------------------------------------------------------

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Start every component and wait until the cluster takes pods; stop all on failure."""
        if self.work_dir is not None:
            raise KubeError("this control plane is already started")
        started = time.monotonic()
        try:
            self._start_components()
            names = self.node_names_for(CONTROL_PLANE_ROLE, self.control_plane_nodes)
            names += self.node_names_for(WORKER_ROLE, self.workers)
            self.register_nodes(names[: self.control_plane_nodes], role=CONTROL_PLANE_ROLE)
            self.register_nodes(names[self.control_plane_nodes :], role=WORKER_ROLE)
            self._wait_until_usable()
        except BaseException:
            self.stop()
            raise
        self.ready_s = time.monotonic() - started
        logger.info(
            "control plane ready at %s in %.1fs with %d simulated nodes",
            self.server,
            self.ready_s,
            len(self.node_names),
        )

    def stop(self) -> None:
        """Stop every component (newest first) and remove the work folder; idempotent."""
        for process in reversed(self._processes):
            process.stop()
        self._processes = []
        if self.work_dir is not None:
            shutil.rmtree(self.work_dir, ignore_errors=True)
            logger.info("control plane stopped; removed %s", self.work_dir)
        self.work_dir = None
        self._apiserver_port = None

    # -- nodes -----------------------------------------------------------------------------

    def node_names_for(self, role: str, count: int) -> list[str]:
        """The next ``count`` unused node names of ``role`` (``worker-4``, ...)."""
        taken = sum(1 for name in self.node_names if name.startswith(f"{role}-"))
        return [f"{role}-{taken + index + 1}" for index in range(count)]

    def register_nodes(self, names: list[str], *, role: str, parallelism: int = 8) -> None:
        """Create simulated Node objects; kwok makes them Ready. Control-plane nodes are
        tainted NoSchedule as kubeadm does, so workloads land on workers."""
        if not names:
            return
        bodies = [self._node_body(name, role=role) for name in names]

        def create(body: dict[str, Any]) -> None:
            try:
                core.create_node(body)
            except ApiException as exc:
                raise KubeError(
                    f"creating simulated node {body['metadata']['name']} failed: "
                    f"{exc.status} {exc.reason}"
                ) from exc

        with self.api_client() as api:
            core = kube_client.CoreV1Api(api)
            with ThreadPoolExecutor(max_workers=parallelism) as pool:
                list(pool.map(create, bodies))
        self.node_names.extend(names)
        logger.info("registered %d simulated %s node(s)", len(names), role)

    def _node_body(self, name: str, *, role: str) -> dict[str, Any]:
        network = ipaddress.ip_network(NODE_CIDR)
        address = str(network[self._next_node_ip])
        self._next_node_ip += 1
        taints = []
        if role == CONTROL_PLANE_ROLE:
            taints.append({"key": ROLE_LABEL_PREFIX + CONTROL_PLANE_ROLE, "effect": "NoSchedule"})
        return {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": name,
                "annotations": {SIMULATED_NODE_ANNOTATION: "fake"},
                "labels": {
                    "kubernetes.io/hostname": name,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                    "type": "kwok",
                    ROLE_LABEL_PREFIX + role: "",
                },
            },
            "spec": {"taints": taints},
            "status": {"addresses": [{"type": "InternalIP", "address": address}]},
        }

    # -- start-up steps --------------------------------------------------------------------

    def _start_components(self) -> None:
        remove_stale_work_dirs(Path(self.parent_dir or tempfile.gettempdir()))
        work_dir = Path(tempfile.mkdtemp(prefix=WORK_DIR_PREFIX, dir=self.parent_dir))
        self.work_dir = work_dir
        (work_dir / OWNER_FILE).write_text(str(os.getpid()))
        (work_dir / "logs").mkdir()
        pki = create_pki(work_dir / "pki")
        self._pki = pki
        etcd_client, etcd_peer, apiserver, controller_manager, scheduler = find_free_ports(5)
        self._apiserver_port = apiserver

        write_kubeconfig(
            self.kubeconfig,
            server=self.server,
            ca_cert=pki.ca.cert,
            client=pki.admin,
            user="clusterbook-admin",
        )
        manager_config = write_kubeconfig(
            work_dir / "controller-manager.kubeconfig",
            server=self.server,
            ca_cert=pki.ca.cert,
            client=pki.controller_manager,
            user="system:kube-controller-manager",
        )
        scheduler_config = write_kubeconfig(
            work_dir / "scheduler.kubeconfig",
            server=self.server,
            ca_cert=pki.ca.cert,
            client=pki.scheduler,
            user="system:kube-scheduler",
        )
        kwok_config = work_dir / "kwok.yaml"
        kwok_config.write_text(render_kwok_config(node_heartbeat_s=self.node_heartbeat_s))

        etcd_url = f"http://127.0.0.1:{etcd_client}"
        self._launch(
            "etcd",
            [
                "--name=clusterbook",
                f"--data-dir={work_dir / 'etcd'}",
                f"--listen-client-urls={etcd_url}",
                f"--advertise-client-urls={etcd_url}",
                f"--listen-peer-urls=http://127.0.0.1:{etcd_peer}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer}",
                f"--initial-cluster=clusterbook=http://127.0.0.1:{etcd_peer}",
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
        )
        self._launch(
            "kube-apiserver",
            [
                f"--etcd-servers={etcd_url}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={apiserver}",
                f"--tls-cert-file={pki.apiserver.cert}",
                f"--tls-private-key-file={pki.apiserver.key}",
                f"--client-ca-file={pki.ca.cert}",
                f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
                f"--service-account-key-file={pki.service_account_public_key}",
                f"--service-account-signing-key-file={pki.service_account_key}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--authorization-mode=Node,RBAC",
                "--endpoint-reconciler-type=none",
                "--allow-privileged=true",
                "--profiling=false",
            ],
        )
        wait_for(
            "kube-apiserver /readyz",
            self._apiserver_ready,
            timeout_s=self.startup_timeout_s,
            processes=self._processes,
            interval_s=0.2,
        )

        self._launch(
            "kube-controller-manager",
            [
                f"--kubeconfig={manager_config}",
                f"--authentication-kubeconfig={manager_config}",
                f"--authorization-kubeconfig={manager_config}",
                "--bind-address=127.0.0.1",
                f"--secure-port={controller_manager}",
                "--leader-elect=false",
                "--use-service-account-credentials=true",
                f"--service-account-private-key-file={pki.service_account_key}",
                f"--root-ca-file={pki.ca.cert}",
                f"--cluster-signing-cert-file={pki.ca.cert}",
                f"--cluster-signing-key-file={pki.ca.key}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--kube-api-qps=500",
                "--kube-api-burst=1000",
                # kwok renews 1,000 node leases on the same 2 cores as everything else; under
                # load a renewal can be late, and the default 50 s would flap nodes NotReady.
                "--node-monitor-grace-period=120s",
                "--profiling=false",
            ],
        )
        self._launch(
            "kube-scheduler",
            [
                f"--kubeconfig={scheduler_config}",
                f"--authentication-kubeconfig={scheduler_config}",
                f"--authorization-kubeconfig={scheduler_config}",
                "--bind-address=127.0.0.1",
                f"--secure-port={scheduler}",
                "--leader-elect=false",
                "--kube-api-qps=500",
                "--kube-api-burst=1000",
                "--profiling=false",
            ],
        )
        self._launch(
            "kwok",
            [
                f"--kubeconfig={self.kubeconfig}",
                f"--config={kwok_config}",
                "--v=WARN",
                f"--manage-nodes-with-annotation-selector={SIMULATED_NODE_ANNOTATION}=fake",
                f"--cidr={POD_CIDR}",
                f"--node-lease-duration-seconds={self.node_lease_s}",
            ],
        )

    def _launch(self, name: str, args: list[str]) -> ManagedProcess:
        assert self.work_dir is not None
        process = ManagedProcess(
            name,
            [str(self.binaries.path(name)), *args],
            log_path=self.work_dir / "logs" / f"{name}.log",
        )
        process.start()
        self._processes.append(process)
        return process

    def _apiserver_ready(self) -> bool:
        """GET /readyz as the admin user; True on 200."""
        assert self._pki is not None and self._apiserver_port is not None
        context = ssl.create_default_context(cafile=str(self._pki.ca.cert))
        context.load_cert_chain(str(self._pki.admin.cert), str(self._pki.admin.key))
        connection = http.client.HTTPSConnection(
            "127.0.0.1", self._apiserver_port, context=context, timeout=2
        )
        try:
            connection.request("GET", "/readyz")
            return connection.getresponse().status == 200
        except (OSError, http.client.HTTPException):
            return False
        finally:
            connection.close()

    def _wait_until_usable(self) -> None:
        """Wait for every node Ready and the default service account (pods need it)."""
        with self.api_client() as api:
            core = kube_client.CoreV1Api(api)

            def nodes_ready() -> bool:
                try:
                    nodes = core.list_node().items
                except ApiException as exc:
                    if exc.status and exc.status >= 500:
                        return False  # still settling; wait_for gives up at its deadline
                    raise KubeError(f"listing nodes failed: {exc.status} {exc.reason}") from exc
                ready = 0
                for node in nodes:
                    for condition in node.status.conditions or []:
                        if condition.type == "Ready" and condition.status == "True":
                            ready += 1
                return ready >= len(self.node_names)

            def default_service_account() -> bool:
                try:
                    core.read_namespaced_service_account("default", "default")
                except ApiException as exc:
                    if exc.status == 404:
                        return False
                    raise KubeError(f"reading the default service account: {exc}") from exc
                return True

            wait_for(
                "simulated nodes Ready",
                nodes_ready,
                timeout_s=self.startup_timeout_s,
                processes=self._processes,
                interval_s=0.2,
            )
            wait_for(
                "the default service account",
                default_service_account,
                timeout_s=self.startup_timeout_s,
                processes=self._processes,
                interval_s=0.2,
            )

"""The sandbox's background process: moto, the VPC network and the reconciler, together.

``clusterbook sandbox up`` starts it detached, as
``python -m clusterbook.sandbox.daemon --sandbox-dir DIR ...``; the folder on its command
line is how a later ``down`` finds it even when ``state.json`` is gone. It writes
``DIR/state.json`` once everything is up, reconciles until SIGTERM or SIGINT, then destroys
every host, removes its own network (``network.SandboxNames``: never another sandbox's) and
stops moto (a child tied to it: moto also exits if this process dies).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import threading
import time
from pathlib import Path

import boto3

from clusterbook.errors import ClusterbookError
from clusterbook.sandbox import network
from clusterbook.sandbox.image import find_cached_image
from clusterbook.sandbox.moto import start_moto_server
from clusterbook.sandbox.reconciler import Reconciler, prepare_sandbox_vpc

logger = logging.getLogger("clusterbook.sandbox.daemon")  # also when run as __main__

#: moto accepts any credentials; these name who is asking in its logs.
SANDBOX_CREDENTIALS = {"aws_access_key_id": "sandbox", "aws_secret_access_key": "sandbox"}


def state_path(sandbox_dir: Path) -> Path:
    return sandbox_dir / "state.json"


def write_state(sandbox_dir: Path, **fields: object) -> None:
    path = state_path(sandbox_dir)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(fields, indent=1))
    temporary.replace(path)


def sandbox_ec2_client(endpoint_url: str, region: str) -> object:
    return boto3.client("ec2", endpoint_url=endpoint_url, region_name=region, **SANDBOX_CREDENTIALS)


def serve(*, sandbox_dir: Path, cache_dir: Path, region: str, cidr: str) -> None:
    """Bring the sandbox up, reconcile until told to stop, then take it all down."""
    image = find_cached_image(cache_dir)
    if image is None:
        raise ClusterbookError(f"no base image in {cache_dir}; `sandbox up` builds it first")

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())

    names = network.SandboxNames.for_folder(sandbox_dir)
    moto = start_moto_server(log_path=sandbox_dir / "moto.log", owner_dir=sandbox_dir)
    reconciler = None
    try:
        ec2 = sandbox_ec2_client(moto.endpoint_url, region)
        vpc_id = prepare_sandbox_vpc(ec2, cidr=cidr)
        network.create_vpc_network(cidr, names=names)
        reconciler = Reconciler(ec2=ec2, image=image, sandbox_dir=sandbox_dir, cidr=cidr)
        write_state(
            sandbox_dir,
            status="running",
            pid=os.getpid(),
            endpoint_url=moto.endpoint_url,
            moto_pid=moto.pid,
            region=region,
            cidr=cidr,
            gateway=network.gateway_address(cidr),
            sandbox_id=names.sandbox_id,
            vpc_id=vpc_id,
            image=str(image.rootfs),
            started_at=time.time(),
        )
        logger.info("sandbox up: EC2 at %s, VPC %s", moto.endpoint_url, cidr)
        reconciler.run(stop)
    finally:
        logger.info("sandbox going down")
        if reconciler is not None:
            reconciler.destroy_all()
        network.destroy_vpc_network(names)
        moto.stop()
        write_state(sandbox_dir, status="stopped", pid=os.getpid(), stopped_at=time.time())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="clusterbook sandbox daemon (see `sandbox up`)")
    parser.add_argument("--sandbox-dir", type=Path, required=True)
    parser.add_argument("--cache-dir", type=Path, required=True)
    parser.add_argument("--region", required=True)
    parser.add_argument("--cidr", required=True)
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)

    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
    )
    for noisy in ("botocore", "boto3", "urllib3", "werkzeug"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        serve(
            sandbox_dir=args.sandbox_dir,
            cache_dir=args.cache_dir,
            region=args.region,
            cidr=args.cidr,
        )
    except ClusterbookError as exc:
        logger.error("sandbox failed: %s", exc)
        write_state(args.sandbox_dir, status="failed", pid=os.getpid(), error=str(exc))
        raise SystemExit(1) from exc


if __name__ == "__main__":
    main()

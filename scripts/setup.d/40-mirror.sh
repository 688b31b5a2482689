#!/usr/bin/env bash
# The signed package mirror the sandbox hosts install kubeadm, the kubelet, kubectl and
# containerd from (clusterbook.sandbox.mirror): apt-utils for apt-ftparchive, then the mirror
# itself, built from the cached Kubernetes binaries (step 20) and the base image (step 30) and
# cached under $CLUSTERBOOK_CACHE/mirror/<key>. Seconds when cold; a warm cache returns at once.
set -euo pipefail
cd "$CLUSTERBOOK_REPO"

if [ "$(id -u)" != 0 ]; then
  echo "not root: skipping the package mirror (apt-get install apt-utils; the sandbox needs root)"
  exit 0
fi

if ! command -v apt-ftparchive >/dev/null; then
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends apt-utils
fi
.venv/bin/python - <<'PY'
import logging
import os
import subprocess

from clusterbook.kube.toolchain import locate_binaries
from clusterbook.sandbox.image import build_base_image, default_cache_dir
from clusterbook.sandbox.mirror import (
    NODE_PREREQUISITES,
    build_mirror,
    find_cached_mirror,
    mirror_key,
)

logging.basicConfig(level=logging.INFO, format="%(message)s")
cache_dir = default_cache_dir(os.environ)
image = build_base_image(cache_dir=cache_dir)
binaries = locate_binaries(cache_dir)
key = mirror_key(
    kubernetes_version=binaries.versions.kubernetes,
    prerequisites=NODE_PREREQUISITES,
    base_image_hash=image.recipe_hash,
)
if find_cached_mirror(cache_dir, key) is None:
    # The Debian packages come through this machine's own apt sources: fresh lists first.
    subprocess.run(["apt-get", "update", "-q"], check=True)
mirror = build_mirror(
    cache_dir=cache_dir,
    binaries=binaries,
    base_rootfs=image.rootfs,
    base_image_hash=image.recipe_hash,
)
print(f"package mirror: {mirror.root} ({len(mirror.packages)} packages)")
PY

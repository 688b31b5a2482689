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
# The Debian packages are fetched with this machine's own apt sources; fresh lists first.
apt-get update -q

.venv/bin/python - <<'PY'
import logging
import os

from clusterbook.kube.toolchain import locate_binaries
from clusterbook.sandbox.image import build_base_image, default_cache_dir
from clusterbook.sandbox.mirror import build_mirror

logging.basicConfig(level=logging.INFO, format="%(message)s")
cache_dir = default_cache_dir(os.environ)
image = build_base_image(cache_dir=cache_dir)
mirror = build_mirror(
    cache_dir=cache_dir,
    binaries=locate_binaries(cache_dir),
    base_rootfs=image.rootfs,
    base_image_hash=image.recipe_hash,
)
print(f"package mirror: {mirror.root} ({len(mirror.packages)} packages)")
PY

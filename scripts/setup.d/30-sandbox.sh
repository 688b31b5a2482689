#!/usr/bin/env bash
# Sandbox hosts: the system tools they need (debootstrap, systemd-nspawn, ip, ssh-keygen)
# and the Debian 12 base image every host boots from, built once (about a minute) and cached
# under $CLUSTERBOOK_CACHE/images/<recipe hash>. Needs root; without it this step only says
# what it would do, and the sandbox tests skip (or fail, in CI).
set -euo pipefail
cd "$CLUSTERBOOK_REPO"

if [ "$(id -u)" != 0 ]; then
  echo "not root: skipping the sandbox (apt-get install debootstrap systemd-container; base image)"
  exit 0
fi

needed=()
for pair in debootstrap:debootstrap systemd-nspawn:systemd-container ip:iproute2 \
            ssh-keygen:openssh-client unshare:util-linux setpriv:util-linux; do
  command -v "${pair%%:*}" >/dev/null || needed+=("${pair##*:}")
done
if [ ${#needed[@]} -gt 0 ]; then
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${needed[@]}"
fi

# The mirror comes from this machine's apt sources; the recipe hash decides the cache folder.
.venv/bin/python - <<'PY'
import logging
import os

from clusterbook.sandbox.image import build_base_image, default_cache_dir

logging.basicConfig(level=logging.INFO, format="%(message)s")
image = build_base_image(cache_dir=default_cache_dir(os.environ))
print(f"sandbox base image: {image.rootfs}")
PY

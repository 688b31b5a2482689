#!/usr/bin/env bash
# The local image registry's tools and images (clusterbook.sandbox.registry): crane, CoreDNS
# and our pause program built from the Go modules pinned in toolchain/versions.env into
# $CLUSTERBOOK_CACHE/registry/tools-<key>/bin, then the OCI layouts of the control-plane
# images from those and the Kubernetes binaries of step 20, cached by version. A few minutes
# cold (mostly CoreDNS), instant when warm.
set -euo pipefail
cd "$CLUSTERBOOK_REPO"

.venv/bin/python - <<'PY'
import logging

from clusterbook.kube.toolchain import default_cache_dir, locate_binaries
from clusterbook.sandbox.registry import build_image_layouts, build_registry_tools

logging.basicConfig(level=logging.INFO, format="%(message)s")
cache_dir = default_cache_dir()
tools = build_registry_tools(cache_dir)
binaries = locate_binaries(cache_dir)
layouts = build_image_layouts(cache_dir=cache_dir, binaries=binaries, tools=tools)
print(f"registry tools in {tools.bin_dir}")
print("images:", ", ".join(f"{image.name}:{image.tag}" for image in layouts))
PY

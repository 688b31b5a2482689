#!/usr/bin/env bash
# Set up everything clusterbook needs on a fresh Debian 12 machine, idempotently.
# Each step lives in scripts/setup.d/NN-name.sh and runs in order; heavy results (Go binaries,
# base images, the package mirror) are cached outside the clone under $CLUSTERBOOK_CACHE,
# keyed by their pinned versions, so a warm machine skips them.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
export CLUSTERBOOK_REPO=$(cd "$here/.." && pwd)
export CLUSTERBOOK_CACHE=${CLUSTERBOOK_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/clusterbook}
mkdir -p "$CLUSTERBOOK_CACHE"
# Go's usual install place, for shells whose PATH does not carry it (a bare CI environment).
if ! command -v go >/dev/null 2>&1 && [ -x /usr/local/go/bin/go ]; then
  export PATH="$PATH:/usr/local/go/bin"
fi

for step in "$here"/setup.d/*.sh; do
  name=$(basename "$step" .sh)
  start=$(date +%s)
  echo "== setup: $name"
  bash "$step"
  echo "== setup: $name done in $(( $(date +%s) - start ))s"
done

#!/usr/bin/env bash
# Build the image registry tools into a bin directory, skipping any already there:
# crane (go-containerregistry), coredns, and our own pause program (toolchain/pause).
#
#   toolchain/build-registry.sh BIN_DIR
#
# Static, -trimpath, written to a temporary name and renamed, like build.sh.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bin_dir=${1:?usage: build-registry.sh BIN_DIR}
# shellcheck source=/dev/null
source "$here/versions.env"

if ! command -v go >/dev/null 2>&1; then
  echo "error: Go is not installed; install Go >= $GO_MINIMUM (https://go.dev/doc/install)" >&2
  exit 3
fi

export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS="-mod=readonly -buildvcs=false"
mkdir -p "$bin_dir"

build() {  # module dir, package, binary name, extra ldflags
  local dir=$1 package=$2 name=$3 ldflags=${4:-}
  if [ -x "$bin_dir/$name" ]; then
    return
  fi
  local start=$SECONDS
  echo "building $name ($package)"
  (cd "$here/$dir" && go build -trimpath -ldflags "-s -w $ldflags" \
    -o "$bin_dir/.$name.partial" "$package")
  mv "$bin_dir/.$name.partial" "$bin_dir/$name"
  echo "built $name in $((SECONDS - start))s"
}

build pause . pause "-X main.version=$PAUSE_VERSION"
build crane github.com/google/go-containerregistry/cmd/crane crane
build coredns github.com/coredns/coredns coredns

#!/usr/bin/env bash
# Build the pinned control-plane binaries into a bin directory, skipping any already there.
#
#   toolchain/build.sh BIN_DIR
#
# Static (CGO_ENABLED=0), -trimpath, stamped with the upstream version variables so that
# `kubectl version` and friends report the real release instead of v0.0.0. Each binary is
# built into a temporary name and renamed, so an interrupted build never leaves a truncated
# binary that a later run would take as finished.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bin_dir=${1:?usage: build.sh BIN_DIR}
# shellcheck source=/dev/null
source "$here/versions.env"

if ! command -v go >/dev/null 2>&1; then
  echo "error: Go is not installed; install Go >= $GO_MINIMUM (the official Go install guide," \
    "or the golang-go package if your distribution carries that version)" >&2
  exit 3
fi
go_version=$(go env GOVERSION)
if [ "$(printf '%s\n%s\n' "go$GO_MINIMUM" "$go_version" | sort -V | head -1)" != "go$GO_MINIMUM" ]; then
  echo "error: $go_version is older than go$GO_MINIMUM, which the pinned modules need;" \
    "install a newer Go" >&2
  exit 3
fi

export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS="-mod=readonly -buildvcs=false"
mkdir -p "$bin_dir"

# Upstream stamps the release commit too; the module proxy does not carry it, so it stays
# empty unless versions.env names it. The build date is the release's own module time,
# which keeps the stamp identical across rebuilds.
go mod download -json "k8s.io/kubernetes@$KUBERNETES_VERSION" >/dev/null
release_time=$(sed -n 's/.*"Time":"\([^"]*\)".*/\1/p' \
  "$(go env GOMODCACHE)/cache/download/k8s.io/kubernetes/@v/$KUBERNETES_VERSION.info")
minor=${KUBERNETES_VERSION#v1.}
minor=${minor%%.*}
stamp=""
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  stamp+=" -X $pkg.gitVersion=$KUBERNETES_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
  stamp+=" -X $pkg.gitCommit=${KUBERNETES_COMMIT:-} -X $pkg.gitTreeState=clean"
  stamp+=" -X $pkg.buildDate=$release_time"
done

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

build etcd go.etcd.io/etcd/server/v3 etcd
build etcd go.etcd.io/etcd/etcdctl/v3 etcdctl
build kwok sigs.k8s.io/kwok/cmd/kwok kwok
for name in kube-apiserver kube-controller-manager kube-scheduler kubectl kubeadm kubelet \
  kube-proxy; do
  build kubernetes "k8s.io/kubernetes/cmd/$name" "$name" "$stamp"
done

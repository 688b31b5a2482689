#!/usr/bin/env bash
# Regenerate the wrapper modules (toolchain/*/go.mod, go.sum) from toolchain/versions.env.
# Run after changing a version; commit the result. Needs Go and the Go module proxy.
#
# Why wrappers: `go install pkg@version` refuses modules whose go.mod has `replace`
# directives (k8s.io/kubernetes replaces its staging modules with local paths; etcd's server
# replaces forbidden modules), so each component is built from a tiny module of our own that
# requires it and lists its binaries as `tool` directives.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=/dev/null
source "$here/versions.env"
export GOTOOLCHAIN=local GOFLAGS=-mod=mod

k8s_minor_patch=${KUBERNETES_VERSION#v1.}
go mod download -json "k8s.io/kubernetes@$KUBERNETES_VERSION" >/dev/null
k8s_mod="$(go env GOMODCACHE)/cache/download/k8s.io/kubernetes/@v/$KUBERNETES_VERSION.mod"
staging=$(sed -n 's#^\s*\(k8s\.io/[a-z0-9-]*\) => \./staging/.*#\1#p' "$k8s_mod")

write_module() {  # dir, module path, requires..., then tools after "--"
  local dir=$1 path=$2
  shift 2
  rm -f "$here/$dir/go.mod" "$here/$dir/go.sum"
  (cd "$here/$dir" && go mod init "$path" >/dev/null 2>&1 && go mod edit -go="$GO_MINIMUM")
  local tools=0
  for arg in "$@"; do
    if [ "$arg" = -- ]; then tools=1; continue; fi
    if [ $tools = 0 ]; then
      (cd "$here/$dir" && go mod edit -require="$arg")
    else
      (cd "$here/$dir" && go mod edit -tool="$arg")
    fi
  done
}

write_module kubernetes clusterbook.local/toolchain/kubernetes \
  "k8s.io/kubernetes@$KUBERNETES_VERSION" -- \
  k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
  k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl \
  k8s.io/kubernetes/cmd/kubeadm k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-proxy
for module in $staging; do
  (cd "$here/kubernetes" && go mod edit -replace="$module=$module@v0.$k8s_minor_patch")
done

write_module etcd clusterbook.local/toolchain/etcd \
  "go.etcd.io/etcd/server/v3@$ETCD_VERSION" "go.etcd.io/etcd/etcdctl/v3@$ETCD_VERSION" -- \
  go.etcd.io/etcd/server/v3 go.etcd.io/etcd/etcdctl/v3

write_module kwok clusterbook.local/toolchain/kwok "sigs.k8s.io/kwok@$KWOK_VERSION" -- \
  sigs.k8s.io/kwok/cmd/kwok

# The image registry's tools (toolchain/build-registry.sh); toolchain/pause has no dependencies.
write_module crane clusterbook.local/toolchain/crane \
  "github.com/google/go-containerregistry@$CRANE_VERSION" -- \
  github.com/google/go-containerregistry/cmd/crane

write_module coredns clusterbook.local/toolchain/coredns \
  "github.com/coredns/coredns@$COREDNS_VERSION" -- github.com/coredns/coredns

for dir in kubernetes etcd kwok crane coredns; do
  (cd "$here/$dir" && go mod tidy)
  echo "pinned $dir: $(cd "$here/$dir" && go list -m all | wc -l) modules"
done

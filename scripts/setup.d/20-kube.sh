#!/usr/bin/env bash
# Kubernetes control-plane binaries (kube-apiserver, controller-manager, scheduler, kubectl,
# kubeadm, kubelet, kube-proxy, etcd, kwok) built from the Go modules pinned in
# toolchain/versions.env, cached under $CLUSTERBOOK_CACHE/kube/<versions>/bin. A warm cache
# returns at once; a cold one takes tens of minutes on 2 cores (see README).
set -euo pipefail
cd "$CLUSTERBOOK_REPO"
# shellcheck source=/dev/null
source toolchain/versions.env

# The key must match clusterbook.kube.toolchain.versions_key().
key="k8s-${KUBERNETES_VERSION}_etcd-${ETCD_VERSION}_kwok-${KWOK_VERSION}"
bin_dir="$CLUSTERBOOK_CACHE/kube/$key/bin"
if [ -f "$bin_dir/.complete" ]; then
  echo "kube binaries cached in $bin_dir"
  exit 0
fi

start=$SECONDS
nice -n 10 toolchain/build.sh "$bin_dir"
touch "$bin_dir/.complete"
echo "kube binaries built into $bin_dir in $((SECONDS - start))s"

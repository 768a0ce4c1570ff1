#!/usr/bin/env bash
# Builds the real Kubernetes control plane (etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler, kubectl) from the Go modules pinned
# in tools/kube and tools/etcd, into a cache outside the checkout keyed by
# those pins and the Go version, so a fresh clone and CI reuse one build.
# Prints the directory holding the binaries (usable as KUBEBUILDER_ASSETS).
# The first build takes about 10 minutes on 2 cores; later runs return at once.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache=${BALLAST_CACHE:-$HOME/.cache/ballast}
key=$( (go env GOVERSION; cat "$here"/kube/go.mod "$here"/kube/go.sum "$here"/etcd/go.mod "$here"/etcd/go.sum) | sha256sum | cut -c1-16)
bin=$cache/tools/$key/bin
if [[ -x $bin/kube-apiserver && -x $bin/etcd && -x $bin/kubectl && -x $bin/kube-controller-manager && -x $bin/kube-scheduler ]]; then
  echo "$bin"
  exit 0
fi
mkdir -p "$cache/tools"
# One build at a time: parallel test packages and sessions wait for it.
exec 9>"$cache/tools/.lock"
flock 9
if [[ -x $bin/kube-apiserver && -x $bin/etcd && -x $bin/kubectl && -x $bin/kube-controller-manager && -x $bin/kube-scheduler ]]; then
  echo "$bin"
  exit 0
fi
tmp=$(mktemp -d "$cache/tools/.build-XXXXXX")
trap 'rm -rf "$tmp"' EXIT
echo "building Kubernetes control-plane binaries into $bin (first run only, several minutes)" >&2
(cd "$here/etcd" && go build -o "$tmp/etcd" go.etcd.io/etcd/server/v3) >&2
echo "  etcd done" >&2
for cmd in kube-apiserver kube-controller-manager kube-scheduler kubectl; do
  (cd "$here/kube" && go build -o "$tmp/$cmd" "k8s.io/kubernetes/cmd/$cmd") >&2
  echo "  $cmd done" >&2
done
mkdir -p "$(dirname "$bin")"
rm -rf "$bin"
mv "$tmp" "$bin"
trap - EXIT
echo "$bin"

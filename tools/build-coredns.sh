#!/usr/bin/env bash
# Builds CoreDNS (pinned in tools/coredns) for the dev cluster's DNS into a
# cache outside the checkout keyed by that pin and the Go version, and
# prints the binary's path. About a minute the first time; later runs
# return at once.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache=${BALLAST_CACHE:-$HOME/.cache/ballast}
key=$( (go env GOVERSION; cat "$here"/coredns/go.mod "$here"/coredns/go.sum "$here"/coredns/main.go) | sha256sum | cut -c1-16)
bin=$cache/tools/coredns-$key/coredns
if [[ -x $bin ]]; then
  echo "$bin"
  exit 0
fi
mkdir -p "$cache/tools"
exec 9>"$cache/tools/.lock-coredns"
flock 9
if [[ -x $bin ]]; then
  echo "$bin"
  exit 0
fi
tmp=$(mktemp -d "$cache/tools/.build-coredns-XXXXXX")
trap 'rm -rf "$tmp"' EXIT
echo "building CoreDNS into $bin (first run only)" >&2
(cd "$here/coredns" && go build -o "$tmp/coredns" .) >&2
mkdir -p "$(dirname "$bin")"
mv "$tmp/coredns" "$bin"
echo "$bin"

#!/usr/bin/env bash
# Builds istiod (pilot-discovery, pinned in tools/istio) for ballast bench into a
# cache outside the checkout keyed by that pin and the Go version, and
# prints the binary's path. About 10 minutes on 2 cores the first time; later runs
# return at once.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache=${BALLAST_CACHE:-$HOME/.cache/ballast}
key=$( (go env GOVERSION; cat "$here"/istio/go.mod "$here"/istio/go.sum) | sha256sum | cut -c1-16)
bin=$cache/tools/istiod-$key/pilot-discovery
if [[ -x $bin ]]; then
  echo "$bin"
  exit 0
fi
mkdir -p "$cache/tools"
exec 9>"$cache/tools/.lock-istiod"
flock 9
if [[ -x $bin ]]; then
  echo "$bin"
  exit 0
fi
tmp=$(mktemp -d "$cache/tools/.build-istiod-XXXXXX")
trap 'rm -rf "$tmp"' EXIT
echo "building istiod (pilot-discovery) into $bin (first run only)" >&2
(cd "$here/istio" && go build -o "$tmp/pilot-discovery" istio.io/istio/pilot/cmd/pilot-discovery) >&2
mkdir -p "$(dirname "$bin")"
mv "$tmp/pilot-discovery" "$bin"
echo "$bin"

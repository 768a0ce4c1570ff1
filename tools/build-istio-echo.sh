#!/usr/bin/env bash
# Builds Istio's echo application (pkg/test/echo/cmd/server and client, from
# the istio.io/istio pinned in tools/istio, the same module istiod comes from)
# for the Gateway API conformance suite, whose mesh tests run its image
# (registry.k8s.io/gateway-api/echo-advanced) on the dev cluster. Into a cache
# outside the checkout keyed by that pin and the Go version; prints the
# directory, which holds the image's contents as the image has them:
#   usr/local/bin/server   the entrypoint
#   usr/local/bin/client   what the suite runs with exec
#   cert.crt, cert.key     tests/testdata/certs/dns of the module (the image's
#                          /cert.crt and /cert.key)
# A few minutes on 2 cores the first time (less after tools/build-istiod.sh,
# whose build cache it shares); later runs return at once.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache=${BALLAST_CACHE:-$HOME/.cache/ballast}
key=$( (go env GOVERSION; cat "$here"/istio/go.mod "$here"/istio/go.sum) | sha256sum | cut -c1-16)
dir=$cache/tools/istio-echo-$key
# The directory appears whole (a rename) or not at all.
if [[ -d $dir ]]; then
  echo "$dir"
  exit 0
fi
mkdir -p "$cache/tools"
exec 9>"$cache/tools/.lock-istio-echo"
flock 9
if [[ -d $dir ]]; then
  echo "$dir"
  exit 0
fi
tmp=$(mktemp -d "$cache/tools/.build-istio-echo-XXXXXX")
trap 'rm -rf "$tmp"' EXIT
echo "building Istio's echo server and client into $dir (first run only)" >&2
mkdir -p "$tmp/usr/local/bin"
(cd "$here/istio" && CGO_ENABLED=0 go build -o "$tmp/usr/local/bin/" \
  istio.io/istio/pkg/test/echo/cmd/server istio.io/istio/pkg/test/echo/cmd/client) >&2
src=$(cd "$here/istio" && go list -m -f '{{.Dir}}' istio.io/istio)
install -m 0644 "$src/tests/testdata/certs/dns/cert-chain.pem" "$tmp/cert.crt"
install -m 0644 "$src/tests/testdata/certs/dns/key.pem" "$tmp/cert.key"
chmod 0755 "$tmp"
mv "$tmp" "$dir"
echo "$dir"

#!/usr/bin/env bash
# Installs the Node packages of the language matrix's grpc-js client
# (interop/node: @grpc/grpc-js and @grpc/grpc-js-xds, pinned by its
# package-lock.json) with `npm ci` into a cache outside the checkout keyed by
# that lock and the Node version, so a fresh clone and CI reuse one install.
# Prints the directory holding node_modules.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
src=$here/interop/node
command -v node >/dev/null && command -v npm >/dev/null || { echo "tools/node.sh: need node and npm on PATH" >&2; exit 1; }
cache=${BALLAST_CACHE:-$HOME/.cache/ballast}
key=$( (node --version; cat "$src/package.json" "$src/package-lock.json") | sha256sum | cut -c1-16)
dir=$cache/node/$key
if [[ -f $dir/.done ]]; then
  echo "$dir"
  exit 0
fi
mkdir -p "$cache/node"
# One install at a time: parallel test packages wait for it.
exec 9>"$cache/node/.lock"
flock 9
if [[ -f $dir/.done ]]; then
  echo "$dir"
  exit 0
fi
tmp=$(mktemp -d "$cache/node/.install-XXXXXX")
trap 'rm -rf "$tmp"' EXIT
cp "$src/package.json" "$src/package-lock.json" "$tmp/"
# --ignore-scripts: the pinned packages are plain JavaScript; no install
# script is needed (protobufjs's postinstall only prints a version check).
(cd "$tmp" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error) >&2
touch "$tmp/.done"
rm -rf "$dir"
mv "$tmp" "$dir"
trap - EXIT
echo "$dir"

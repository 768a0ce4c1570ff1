#!/bin/sh
# deps.sh installs the system packages Ballast's tests need beyond Go:
# iptables, for `ballast proxy init` and the proxy's netns test. Idempotent:
# it does nothing when the tools are already installed.
set -eu
if command -v iptables >/dev/null 2>&1 && command -v iptables-restore >/dev/null 2>&1; then
	exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends iptables

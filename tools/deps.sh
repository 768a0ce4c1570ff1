#!/usr/bin/env bash
# Installs the system packages the dev cluster (devcluster/) needs and that a
# fresh Debian machine may lack: iptables (ClusterIP DNAT inside the harness's
# own network namespace) and iproute2 (ip netns, veth). Idempotent: installs
# only what is missing, and does nothing when everything is present.
set -euo pipefail
missing=()
command -v iptables >/dev/null 2>&1 || missing+=(iptables)
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
if ((${#missing[@]} == 0)); then
  exit 0
fi
if [[ $(id -u) != 0 ]]; then
  echo "tools/deps.sh: need ${missing[*]} (run as root to install them with apt-get)" >&2
  exit 1
fi
echo "tools/deps.sh: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >&2
apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2

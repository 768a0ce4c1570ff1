#!/usr/bin/env bash
# Installs the system packages the dev cluster (devcluster/) needs and that a
# fresh Debian machine may lack: iptables (ClusterIP DNAT inside the harness's
# own network namespace), iproute2 (ip netns, veth), util-linux (setpriv, for
# runAsUser), nginx and haproxy (the peers of ballast bench), and
# python3-grpcio (Debian's gRPC Python on C-core: the Python client of the
# language matrix, interop/python, run by Debian's /usr/bin/python3).
# Idempotent: installs
# only what is missing, and does nothing when everything is present.
set -euo pipefail
missing=()
command -v iptables >/dev/null 2>&1 || missing+=(iptables)
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
# setpriv: containers with a securityContext.runAsUser (the injected proxy).
command -v setpriv >/dev/null 2>&1 || missing+=(util-linux)
# The benchmark's peers; their tests check the configs ballast bench renders.
command -v nginx >/dev/null 2>&1 || missing+=(nginx)
command -v haproxy >/dev/null 2>&1 || missing+=(haproxy)
/usr/bin/python3 -c 'import grpc' >/dev/null 2>&1 || missing+=(python3-grpcio)
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
# Forbid package scripts from starting system services (nginx would take
# port 80): Ballast runs its own instances with their own configs.
policy=/usr/sbin/policy-rc.d
if [[ ! -e $policy ]]; then
  printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod +x "$policy"
  trap 'rm -f "$policy"' EXIT
fi
apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2

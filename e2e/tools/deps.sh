#!/usr/bin/env bash
# Installs what `make test` needs on a fresh machine: Debian packages (only when missing)
# and the pinned Go tools (etcd, Kubernetes, helm) via build.sh's cache.
set -euo pipefail

packages=(iproute2 nftables util-linux docker-registry ca-certificates lua5.1 wabt prometheus)
missing=()
for p in "${packages[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
	echo "installing Debian packages: ${missing[*]}" >&2
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

"$(dirname "${BASH_SOURCE[0]}")/build.sh" >/dev/null

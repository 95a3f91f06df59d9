#!/usr/bin/env bash
# Installs the host packages nodeforge's builds, boots and tests use, with
# apt. On Debian bookworm, QEMU and mmdebstrap come from bookworm-backports
# (QEMU must match the backported qemu-utils). Needs root.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
backports=()
if [ "$codename" = bookworm ]; then
  if ! grep -rqs bookworm-backports /etc/apt/sources.list /etc/apt/sources.list.d/; then
    cat > /etc/apt/sources.list.d/nodeforge-bookworm-backports.sources <<'SRC'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
  fi
  backports=(-t bookworm-backports)
fi

apt-get update
apt-get install -y --no-install-recommends \
  ca-certificates tar zstd xz-utils gdisk dosfstools ovmf bmap-tools gnupg apt-utils \
  docker-registry busybox-static
apt-get install -y --no-install-recommends "${backports[@]}" \
  mmdebstrap e2fsprogs qemu-system-x86 qemu-utils

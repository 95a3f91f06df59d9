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
  ca-certificates tar zstd xz-utils gdisk fdisk dosfstools cpio ovmf kmod openssl \
  bmap-tools gnupg apt-utils qemu-efi-aarch64 gcc-aarch64-linux-gnu libc6-dev-arm64-cross \
  docker-registry busybox-static squashfs-tools ipxe ipxe-qemu seabios curl
apt-get install -y --no-install-recommends "${backports[@]}" \
  mmdebstrap e2fsprogs qemu-system-x86 qemu-system-arm qemu-user-static qemu-utils

# arm64 images are bootstrapped through qemu-user: register it with
# binfmt_misc (not mounted on a fresh machine).
if [ ! -e /proc/sys/fs/binfmt_misc/status ]; then
  mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
fi
/usr/lib/systemd/systemd-binfmt

# The first-boot agent is cross-built for arm64 images.
if command -v rustup >/dev/null; then
  rustup target add aarch64-unknown-linux-gnu
fi

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

# Compose files are validated with trixie's docker-compose (v2, Go, static
# enough to run here); bookworm's is the old Python one. Fetched with a
# private apt configuration so the host's sources stay as they are, and
# installed at a fixed path the tests look for.
compose_bin=/usr/local/lib/nodeforge/docker-compose
if [ ! -x "$compose_bin" ]; then
  apt_dir=$(mktemp -d)
  mkdir -p "$apt_dir/state/lists/partial" "$apt_dir/cache/archives/partial" "$apt_dir/deb"
  cat > "$apt_dir/trixie.sources" <<'SRC'
Types: deb
URIs: http://deb.debian.org/debian
Suites: trixie
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
  apt_opts=(-o "Dir::Etc::SourceList=/dev/null" -o "Dir::Etc::SourceParts=$apt_dir"
    -o "Dir::State=$apt_dir/state" -o "Dir::State::status=/dev/null"
    -o "Dir::Cache=$apt_dir/cache" -o "APT::Architecture=amd64"
    -o "APT::Sandbox::User=root")
  apt-get "${apt_opts[@]}" update
  (cd "$apt_dir/deb" && apt-get "${apt_opts[@]}" download docker-compose)
  dpkg-deb -x "$apt_dir"/deb/docker-compose_*.deb "$apt_dir/root"
  install -D -m 0755 "$apt_dir/root/usr/libexec/docker/cli-plugins/docker-compose" "$compose_bin"
  rm -rf "$apt_dir"
fi
"$compose_bin" version

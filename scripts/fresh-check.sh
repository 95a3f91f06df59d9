#!/usr/bin/env bash
# The fresh-machine check (#22): bootstraps a minimal Debian bookworm root
# (what a new machine of this kind has: systemd, apt, and this machine's
# Rust toolchain bind-mounted read-only), runs the set-up script
# (scripts/host-packages.sh, with the nodeforge binary built here) inside
# it, then `nodeforge doctor`, which fails on anything still missing.
# A package the code needs but the table lacks fails the unit test
# doctor::table_tests on every CI run; this script shows the table's
# packages really provide what doctor probes for, from nothing.
# Run as root from the repository: scripts/fresh-check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --locked -q -p nodeforge
root=$(mktemp -d /var/tmp/nodeforge-fresh.XXXXXX)
cleanup() {
  for m in "$root/root/.cargo" "$root/root/.rustup" "$root/proc/sys/fs/binfmt_misc" "$root/proc" "$root/sys" "$root/dev"; do
    mountpoint -q "$m" 2>/dev/null && umount -l "$m"
  done
  rm -rf --one-file-system "$root"
}
trap cleanup EXIT

start=$(date +%s)
mmdebstrap --quiet --variant=minbase --include=systemd,ca-certificates \
  bookworm "$root" http://deb.debian.org/debian
echo "bootstrap: $(( $(date +%s) - start )) s"

mkdir -p "$root/repo" "$root/root/.cargo" "$root/root/.rustup"
cp -a scripts "$root/repo/"
install -m 0755 target/debug/nodeforge "$root/usr/local/bin/nodeforge"
mount -t proc proc "$root/proc"
mount --rbind /sys "$root/sys"
mount --rbind /dev "$root/dev"
mount --bind -o ro "${CARGO_HOME:-$HOME/.cargo}" "$root/root/.cargo"
mount --bind -o ro "${RUSTUP_HOME:-$HOME/.rustup}" "$root/root/.rustup"
cp /etc/resolv.conf "$root/etc/resolv.conf"

in_root() {
  chroot "$root" env -i HOME=/root PATH=/root/.cargo/bin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    NODEFORGE=/usr/local/bin/nodeforge "$@"
}
start=$(date +%s)
in_root bash /repo/scripts/host-packages.sh
echo "set-up script: $(( $(date +%s) - start )) s"
in_root nodeforge doctor
echo "ok: a fresh bookworm root has every host prerequisite after the set-up script"

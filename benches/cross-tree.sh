#!/usr/bin/env bash
# Check, not a timing: builds a foreign-architecture profile's base rootfs
# twice, cold, once as nodeforge does (the host's dash, perl and common
# tools run the maintainer scripts) and once with every script emulated
# (NODEFORGE_EMULATE_SCRIPTS=1), and compares the two trees: file list
# with type, mode, owner and link target, and the sha256 of every regular
# file (logs, apt's cache and the random SSH host keys left out). Prints
# both build times. Run as root from the repository:
#   benches/cross-tree.sh [profile]
set -euo pipefail
cd "$(dirname "$0")/.."
profile=${1:-qemu-tests/profiles/sentinel.toml}
cargo build --release --locked -q -p nodeforge
work=$(mktemp -d /var/tmp/nodeforge-cross-tree.XXXXXX)
trap 'rm -rf "$work"' EXIT
for mode in native emulated; do
  start=$(date +%s)
  if [ "$mode" = emulated ]; then export NODEFORGE_EMULATE_SCRIPTS=1; fi
  "${CARGO_TARGET_DIR:-target}/release/nodeforge" build "$profile" --quiet \
    --output "$work/out-$mode" --cache-dir "$work/cache-$mode" > /dev/null
  unset NODEFORGE_EMULATE_SCRIPTS
  echo "$mode build: $(( $(date +%s) - start )) s"
  mkdir "$work/tree-$mode"
  tar --zstd -xf "$work"/cache-$mode/rootfs/*.tar.zst -C "$work/tree-$mode"
  (cd "$work/tree-$mode" && find . -printf '%y %m %u %g %p -> %l\n' | sort > "$work/$mode.list" &&
    find . -type f ! -path './var/log/*' ! -path './var/cache/*' ! -name 'ssh_host_*' \
      -exec sha256sum {} + | sort -k2 > "$work/$mode.sum")
  rm -rf "$work/out-$mode"
done
if diff "$work/native.list" "$work/emulated.list" && diff "$work/native.sum" "$work/emulated.sum"; then
  echo "identical: $(wc -l < "$work/native.list") paths, $(wc -l < "$work/native.sum") files compared"
else
  echo "the trees differ (above)"; exit 1
fi

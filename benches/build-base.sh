#!/usr/bin/env bash
# Benchmark: cold build of profiles/base.toml (empty cache, so mmdebstrap
# runs), then a warm rebuild (rootfs reused); prints each step's time and
# the image's size. Run as root from the repository:
#   benches/build-base.sh [profile]
set -euo pipefail
cd "$(dirname "$0")/.."
profile=${1:-profiles/base.toml}
cargo build --release --locked -q -p nodeforge -p nodeforge-firstboot
# Build the agent now so its compile time is not counted as build time.
cargo build --release --locked -q -p nodeforge-firstboot --target x86_64-unknown-linux-gnu
. benches/lib/build.sh
bench_work_dir bench

run() {
  local label=$1; shift
  # Without its image, an unchanged profile is built again, not reused.
  rm -f "$work"/out/*.img
  timed_build "$work/$label.jsonl" "$profile" --output "$work/out" --cache-dir "$work/cache" "$@"
  python3 - "$work/$label.jsonl" "$label" "$wall" <<'PY'
import json, sys
path, label, wall = sys.argv[1], sys.argv[2], float(sys.argv[3])
events = [json.loads(l) for l in open(path)]
steps = [e["report"] for e in events if e["event"] == "step-end"]
result = next(e["result"] for e in events if e["event"] == "result")
print(f"== {label} build: {wall:.1f} s wall")
for s in steps:
    extra = f"  ({s['status']}: {s['reason']})" if s.get("reason") else ""
    print(f"   {s['name']:<16} {s['seconds']:7.2f} s{extra}")
print(f"   image {result['image_size'] / 2**20:.0f} MiB, data {result['allocated'] / 2**20:.0f} MiB")
PY
}

run cold
run warm
ls -ls "$work/out/"
zstd -q -T0 -3 -o "$work/image.zst" "$work/out/"*.img
echo "   zstd -3 of the image: $(( $(stat -c %s "$work/image.zst") / 1048576 )) MiB"

#!/usr/bin/env bash
# Benchmark: container images baked into a node image. Starts a local
# docker-registry holding two images (busybox httpd plus SMALL_MIB and
# LARGE_MIB of incompressible data), locks and builds a profile with one
# stack for each, and prints:
#   - each build's step times: cold (mmdebstrap, blobs fetched), warm blob
#     cache, warm --offline;
#   - the disk space the image gains per MiB of unpacked container layers
#     (the difference between the two builds' allocated bytes over the
#     difference of their layers' unpacked bytes in the engine's store):
#     at most 1.05 means one copy of each layer (#18), and per MiB of blobs.
# Run as root from the repository: benches/containers.sh
# Needs docker-registry and busybox-static (scripts/host-packages.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
small=${SMALL_MIB:-8}
large=${LARGE_MIB:-72}
. benches/lib/build.sh
. benches/lib/registry.sh
build_bench_tools
bench_work_dir bench-oci
start_bench_registry "$bench_target_dir" "$small" "$large"

mkdir -p "$work/profiles" "$work/stacks/bench"
cat > "$work/stacks/bench/compose.yaml.tera" <<'YAML'
services:
  web:
    image: {{ images[env.IMAGE] }}
    pull_policy: never
YAML
for i in 0 1; do
  stack_profile "$work/profiles/bench$i.toml" "bench$i" bench/compose.yaml.tera "${refs[$i]}"
done

run() {
  local label=$1 profile=$2; shift 2
  # Without its image, an unchanged profile is built again, not reused.
  rm -f "$work/out/$profile.img"
  timed_build "$work/$label.jsonl" "$work/profiles/$profile.toml" --output "$work/out" \
    --cache-dir "$work/cache" --agent "$agent" "$@"
  python3 - "$work/$label.jsonl" "$label" "$wall" "$work/out/$profile.manifest.json" <<'PY'
import json, sys
path, label, wall, manifest = sys.argv[1:5]
events = [json.loads(l) for l in open(path)]
steps = [e["report"] for e in events if e["event"] == "step-end"]
result = next(e["result"] for e in events if e["event"] == "result")
c = json.load(open(manifest))["facts"]["containers"]
print(f"== {label}: {float(wall):.1f} s wall")
print("   " + ", ".join(f"{s['name']} {s['seconds']:.2f}" for s in steps))
print(f"   container blobs {c['blob_bytes'] / 2**20:.1f} MiB, unpacked in the engine's store "
      f"{c['unpacked_bytes'] / 2**20:.1f} MiB, image data {result['allocated'] / 2**20:.1f} MiB")
open(path + ".sum", "w").write(f"{result['allocated']} {c['blob_bytes']} {c['unpacked_bytes']}\n")
PY
}

run "cold (mmdebstrap, blobs fetched)" bench0
cp "$work/cold (mmdebstrap, blobs fetched).jsonl.sum" "$work/small.sum"
run "warm blob cache" bench0
run "warm blob cache, --offline" bench0 --offline
run "large image, blobs fetched" bench1
cp "$work/large image, blobs fetched.jsonl.sum" "$work/large.sum"
run "large image, warm blob cache" bench1
read -r a0 b0 u0 < "$work/small.sum"
read -r a1 b1 u1 < "$work/large.sum"
python3 - "$a0" "$b0" "$u0" "$a1" "$b1" "$u1" <<'PY'
import sys
a0, b0, u0, a1, b1, u1 = map(int, sys.argv[1:7])
print(f"== image data added per MiB of unpacked layers: {(a1 - a0) / (u1 - u0):.3f} MiB "
      f"({(a1 - a0) / 2**20:.1f} MiB more data for {(u1 - u0) / 2**20:.1f} MiB more unpacked layers)")
print(f"   per MiB of blobs: {(a1 - a0) / (b1 - b0):.3f} MiB")
PY

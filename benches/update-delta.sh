#!/usr/bin/env bash
# Benchmark (#19): what an update downloads. Builds a role with a compose
# stack (the repository's base profile + Docker + one stack whose image a
# local registry serves, with a padded 64 MiB layer so the slot holds a
# container image of some size), then the same role after
#   - a compose edit (one line of the compose file), and
#   - an overlay edit (one file of an overlay);
# and prints, for each, what `nodeforge release diff` says a node running
# the first build fetches: the chunks of the new root slot its own slot
# lacks, against the whole slot and against the slot compressed with zstd
# (the download without deltas). The issue's targets: at most 10 % of the
# compressed slot for the compose edit and 5 % for the overlay edit.
# Run as root from the repository:
#   benches/update-delta.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/lib/build.sh
. benches/lib/registry.sh
build_bench_tools
bench_work_dir bench-update-delta
start_bench_registry "$bench_target_dir" 8 64
echo "host: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"

mkdir -p "$work/profiles" "$work/stacks/web" "$work/overlays/bench/etc"
echo "bench node" > "$work/overlays/bench/etc/motd"
web_compose "$work/stacks/web/compose.yaml.tera"
stack_profile "$work/profiles/role.toml" bench-update web/compose.yaml.tera "${refs[1]}"
echo 'overlays = ["bench"]' > "$work/overlay-line"
# The overlay list goes before the profile's first table.
sed -i "/^packages = /r $work/overlay-line" "$work/profiles/role.toml"

# build LABEL: builds into $work/LABEL, printing the wall time.
build() {
  timed_build "$work/$1.jsonl" "$work/profiles/role.toml" --output "$work/$1" \
    --cache-dir "$work/cache" --agent "$agent"
  printf '== build %s: %.1f s\n' "$1" "$wall"
}

build v1
sed -i 's/"8080:80"/"8081:80"/' "$work/stacks/web/compose.yaml.tera"
build v2-compose
echo "bench node, edited" > "$work/overlays/bench/etc/motd"
build v3-overlay

# diff OLD NEW TARGET: the figures, and whether they meet TARGET (percent
# of the compressed slot).
diff_builds() {
  "$nf" release diff "$work/$1" "$work/$2"
  "$nf" release diff --json "$work/$1" "$work/$2" > "$work/diff.json"
  python3 - "$work/diff.json" "$1" "$2" "$3" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
old, new, target = sys.argv[2], sys.argv[3], float(sys.argv[4])
pct = 100.0 * d["fetch_bytes"] / d["compressed_slot_size"]
print(f"== {old} -> {new}: {d['fetch_bytes']} bytes in {d['fetch_chunks']} of {d['chunks']} chunks; "
      f"slot {d['slot_size']} bytes, {d['compressed_slot_size']} compressed; "
      f"{pct:.2f} % of the compressed slot (target at most {target:g} %: {'met' if pct <= target else 'NOT met'})")
PY
}
diff_builds v1 v2-compose 10
diff_builds v2-compose v3-overlay 5

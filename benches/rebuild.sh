#!/usr/bin/env bash
# Benchmark: cold build and warm rebuild after a small edit, in one run on
# this machine, for
#   - base: profiles/base.toml plus one overlay file (it has no compose
#     stack); two edits: its hostname (every step after the rootfs re-runs:
#     the hostname is an input of each) and the overlay file (the `system`
#     step's layer is reused too);
#   - a role with a compose stack: base + Docker + one stack served by a
#     local registry (busybox httpd); the edit is one line of the compose
#     file;
# and an unchanged rebuild (the outputs are reused). Prints each build's
# steps, the warm/cold ratios and the issue's targets (cold base at most
# 180 s, warm rebuild at most 15 s). Run as root from the repository:
#   benches/rebuild.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/lib/build.sh
. benches/lib/registry.sh
build_bench_tools
bench_work_dir bench-rebuild
start_bench_registry "$bench_target_dir" 8 8
echo "host: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"

mkdir -p "$work/profiles" "$work/stacks/web" "$work/overlays/bench/etc"
echo "bench node" > "$work/overlays/bench/etc/motd"
cat > "$work/profiles/base.toml" <<TOML
extends = "$bench_repo/profiles/base.toml"
name = "bench-base"
hostname = "bench-a"
overlays = ["bench"]
TOML
web_compose "$work/stacks/web/compose.yaml.tera"
stack_profile "$work/profiles/role.toml" bench-role web/compose.yaml.tera "${refs[0]}"

# run LABEL PROFILE: builds, prints the steps, stores the wall time.
run() {
  local label=$1 profile=$2
  timed_build "$work/run.jsonl" "$work/profiles/$profile.toml" --output "$work/out" \
    --cache-dir "$work/cache" --agent "$agent"
  python3 - "$work/run.jsonl" "$label" "$wall" "$work/$label.seconds" <<'PY'
import json, sys
path, label, wall, out = sys.argv[1:5]
wall = float(wall)
steps = [json.loads(l)["report"] for l in open(path) if '"step-end"' in l]
print(f"== {label}: {wall:.1f} s wall")
print("   " + ", ".join(f"{s['name']} {s['seconds']:.2f}" + ("" if s["status"] == "done" else f" ({s['status']})") for s in steps))
open(out, "w").write(f"{wall}\n")
PY
}

run base-cold base
sed -i 's/^hostname = "bench-a"/hostname = "bench-b"/' "$work/profiles/base.toml"
run base-warm-edit base
echo "bench node, edited" > "$work/overlays/bench/etc/motd"
run base-warm-overlay-edit base
run base-unchanged base
run role-cold role
sed -i 's/"8080:80"/"8081:80"/' "$work/stacks/web/compose.yaml.tera"
run role-warm-compose-edit role
run role-unchanged role

python3 - "$work" <<'PY'
import sys
t = {n: float(open(f"{sys.argv[1]}/{n}.seconds").read()) for n in
     ["base-cold", "base-warm-edit", "base-warm-overlay-edit", "base-unchanged", "role-cold", "role-warm-compose-edit", "role-unchanged"]}
print(f"== base: cold {t['base-cold']:.1f} s (target at most 180 s), warm after a hostname edit "
      f"{t['base-warm-edit']:.1f} s = {t['base-warm-edit'] / t['base-cold']:.3f} of cold, after an overlay edit "
      f"{t['base-warm-overlay-edit']:.1f} s, unchanged {t['base-unchanged']:.1f} s")
print(f"== role with a stack: cold {t['role-cold']:.1f} s, warm after a compose edit "
      f"{t['role-warm-compose-edit']:.1f} s (target at most 15 s) = {t['role-warm-compose-edit'] / t['role-cold']:.3f} of cold, "
      f"unchanged {t['role-unchanged']:.1f} s")
PY

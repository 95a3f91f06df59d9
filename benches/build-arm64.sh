#!/usr/bin/env bash
# Benchmark: the arm64 Raspberry Pi image (the sentinel role, built
# through qemu-user) against the x86-64 base image (profiles/base.toml),
# both cold (fresh, empty cache directories, so mmdebstrap runs for each)
# in one run on this machine. Prints each build's steps and the
# arm64/amd64 ratio of the whole build. Run as root from the repository:
#   benches/build-arm64.sh [arm64-profile] [amd64-profile]
set -euo pipefail
cd "$(dirname "$0")/.."
# The sentinel role's packages without its container stacks: their images
# need a lock file made against the public registries (see
# qemu-tests/profiles/sentinel.toml).
arm_profile=${1:-qemu-tests/profiles/sentinel.toml}
x86_profile=${2:-profiles/base.toml}
cargo build --release --locked -q -p nodeforge
# Build both agents now so compile time is not counted as build time.
cargo build --release --locked -q -p nodeforge-firstboot --target x86_64-unknown-linux-gnu
CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=${CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER:-aarch64-linux-gnu-gcc} \
  cargo build --release --locked -q -p nodeforge-firstboot --target aarch64-unknown-linux-gnu
work=$(mktemp -d /var/tmp/nodeforge-bench-arm64.XXXXXX)
trap 'rm -rf "$work"' EXIT
echo "host: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"

run() {
  local label=$1 profile=$2
  local start end
  start=$(date +%s.%N)
  # CPU seconds of the build and everything it waited for (the emulated
  # programs included): unlike wall time, hardly changed by other load.
  python3 -c 'import resource, subprocess, sys
subprocess.run(sys.argv[2:], check=True, stdout=open(sys.argv[1], "w"))
r = resource.getrusage(resource.RUSAGE_CHILDREN)
print(r.ru_utime + r.ru_stime)' "$work/$label.jsonl" \
    "${CARGO_TARGET_DIR:-target}/release/nodeforge" build "$profile" --output "$work/out-$label" \
    --cache-dir "$work/cache-$label" --json > "$work/$label.cpu"
  end=$(date +%s.%N)
  python3 - "$work/$label.jsonl" "$label" "$start" "$end" "$work/$label.seconds" "$work/$label.cpu" <<'PY'
import json, sys
path, label, start, end, out, cpu = sys.argv[1:7]
wall = float(end) - float(start)
events = [json.loads(l) for l in open(path)]
steps = [e["report"] for e in events if e["event"] == "step-end"]
print(f"== {label} cold build: {wall:.1f} s wall, {float(open(cpu).read()):.1f} s CPU")
for s in steps:
    extra = f"  ({s['status']}: {s['reason']})" if s.get("reason") else ""
    print(f"   {s['name']:<16} {s['seconds']:7.2f} s{extra}")
open(out, "w").write(f"{wall}\n")
PY
}

run amd64 "$x86_profile"
run arm64 "$arm_profile"
python3 - "$work/arm64.seconds" "$work/amd64.seconds" "$work/arm64.cpu" "$work/amd64.cpu" <<'PY'
import sys
arm, x86, arm_cpu, x86_cpu = (float(open(p).read()) for p in sys.argv[1:5])
print(f"== arm64 {arm:.1f} s / amd64 {x86:.1f} s = {arm / x86:.2f}x (target: at most 2x)")
print(f"== CPU: arm64 {arm_cpu:.1f} s / amd64 {x86_cpu:.1f} s = {arm_cpu / x86_cpu:.2f}x")
PY
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"

#!/usr/bin/env bash
# Benchmark: the build cache shared through a registry (`--cache-to`,
# `--cache-from`), with the real docker-registry on 127.0.0.1. Builds the
# base image (profiles/base.toml) three times in one run:
#   A cold:  machine A, an empty cache, pushing everything with --cache-to;
#   A warm:  A again into a new output directory (every step from A's
#            local cache: the local warm build);
#   B:       machine B, an empty cache of its own, with --cache-from;
# and prints each wall time, B against the local warm build (the issue's
# target: at most 1.5x), B's steps and whether A and B made the same image.
# Run as root from the repository: benches/remote-cache.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/lib/build.sh
build_bench_tools
bench_work_dir bench-remote-cache
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cat > "$work/registry.yml" <<YAML
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $work/registry
http:
  addr: 127.0.0.1:$port
YAML
docker-registry serve "$work/registry.yml" > "$work/registry.log" 2>&1 &
reg=$!
trap 'kill $reg 2>/dev/null || true; rm -rf "$work"' EXIT
for _ in $(seq 50); do
  curl -fs "http://127.0.0.1:$port/v2/" > /dev/null && break
  sleep 0.2
done
cache=oci://127.0.0.1:$port/nodeforge-cache
# Reproducible by default (README): with no SOURCE_DATE_EPOCH both
# machines take the epoch from the archive's Release date.
echo "host: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"

timed_build "$work/a-cold.json" profiles/base.toml -o "$work/out-a" \
  --cache-dir "$work/cache-a" --agent "$agent" --cache-to "$cache"
cold=$wall
timed_build "$work/a-warm.json" profiles/base.toml -o "$work/out-a-warm" \
  --cache-dir "$work/cache-a" --agent "$agent"
warm=$wall
timed_build "$work/b.json" profiles/base.toml -o "$work/out-b" \
  --cache-dir "$work/cache-b" --agent "$agent" --cache-from "$cache"
remote=$wall

steps() {
  python3 - "$1" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    e = json.loads(line)
    if e.get("event") == "step-end":
        r = e["report"]
        print(f"  {r['name']:<16} {r['status']:<8} {r['seconds']:6.1f}s  {r.get('reason') or ''}")
PY
}
echo "machine B's steps:"
steps "$work/b.json"
registry_mib=$(du -sm "$work/registry" | cut -f1)
printf 'A cold %.1f s, A warm (local cache) %.1f s, B from the registry %.1f s: %.2fx the warm build (target at most 1.5x); the registry holds %s MiB\n' \
  "$cold" "$warm" "$remote" "$(python3 -c "print($remote / $warm)")" "$registry_mib"
a=$(cut -d' ' -f1 "$work/out-a/base.img.sha256")
b=$(cut -d' ' -f1 "$work/out-b/base.img.sha256")
if [ "$a" = "$b" ]; then
  echo "A and B made the same image: sha256 $a"
else
  echo "A and B differ: $a against $b" >&2
  exit 1
fi

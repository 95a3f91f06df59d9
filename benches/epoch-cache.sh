#!/usr/bin/env bash
# The three builds of #24 with the real bootstrap, in one empty cache:
#   a  no SOURCE_DATE_EPOCH           (caches a rootfs stamped with the archive's Release date)
#   b  SOURCE_DATE_EPOCH=1764547200   (must bootstrap anew, not reuse a's)
#   c  the same epoch, --no-cache
# Prints each build's rootfs outcome and the image sha256s; exits non-zero
# unless b and c are byte-identical and b's rootfs step was built. Run as
# root from the repository: benches/epoch-cache.sh [profile]
set -euo pipefail
cd "$(dirname "$0")/.."
profile=${1:-profiles/base.toml}
cargo build --release --locked -q -p nodeforge
. benches/lib/build.sh
bench_work_dir epoch
name=$("$nf" plan --json "$profile" | python3 -c 'import json,sys; print(json.load(sys.stdin)["profile"]["name"])')

build() {
  local label=$1; shift
  timed_build "$work/$label.jsonl" "$profile" --output "$work/$label" --cache-dir "$work/cache" "$@"
  python3 - "$work/$label.jsonl" "$label" "$wall" <<'PY'
import json, sys
path, label, wall = sys.argv[1], sys.argv[2], float(sys.argv[3])
events = [json.loads(l) for l in open(path)]
rootfs = next(e["report"] for e in events if e["event"] == "step-end" and e["report"]["name"] == "rootfs")
print(f"{label}: {wall:6.1f} s  rootfs {rootfs['status']}  {rootfs.get('reason', '')}")
PY
}

(unset SOURCE_DATE_EPOCH; build a)
SOURCE_DATE_EPOCH=1764547200 build b
SOURCE_DATE_EPOCH=1764547200 build c --no-cache
sha() { cut -d' ' -f1 "$work/$1/$name.img.sha256"; }
printf 'a %s\nb %s\nc %s\n' "$(sha a)" "$(sha b)" "$(sha c)"
status=$(python3 -c 'import json,sys; print(next(json.loads(l)["report"]["status"] for l in open(sys.argv[1]) if json.loads(l)["event"] == "step-end" and json.loads(l)["report"]["name"] == "rootfs"))' "$work/b.jsonl")
if [ "$status" != done ] || [ "$(sha b)" != "$(sha c)" ]; then
  echo "FAIL: b's rootfs was $status; b and c must be identical" >&2
  exit 1
fi
echo "ok: b bootstrapped anew and equals c byte for byte"

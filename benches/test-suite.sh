#!/usr/bin/env bash
# Benchmark: the whole test suite as CI runs it (.ci/run) in a fresh clone
# of HEAD with an empty target directory, printing its wall time and the
# most disk it took at any moment (the filesystem's used bytes, sampled
# every 5 s, minus those before the run). Run as root from the repository:
#   benches/test-suite.sh [clone-dir]
set -euo pipefail
cd "$(dirname "$0")/.."
clone=${1:-$(mktemp -d /var/tmp/nodeforge-suite.XXXXXX)}
rm -rf "$clone"
git clone -q . "$clone"
used() { df --output=used -B1M "$clone" | tail -1; }
base=$(used)
peak_file=$clone.peak
echo 0 > "$peak_file"
(
  peak=0
  while true; do
    now=$(( $(used) - base ))
    if [ "$now" -gt "$peak" ]; then peak=$now; echo "$peak" > "$peak_file"; fi
    sleep 5
  done
) &
sampler=$!
trap 'kill $sampler 2>/dev/null || true' EXIT
start=$(date +%s)
status=0
"$clone/.ci/run" > "$clone.log" 2>&1 || status=$?
end=$(date +%s)
kill $sampler 2>/dev/null || true
grep -E '^test result:' "$clone.log" | awk '{p += $4; f += $6} END {print "tests: " p " passed, " f " failed"}'
echo "exit status: $status"
echo "wall: $(( (end - start) / 60 )) min $(( (end - start) % 60 )) s"
echo "peak disk above the start: $(cat "$peak_file") MiB (log: $clone.log)"
exit "$status"

#!/usr/bin/env bash
# Benchmark: the tailnet join of a role image (data) in QEMU with the
# stand-in client (qemu-tests/tests/tailnet.rs, ten_minutes_of_failing_joins):
# a key the stand-in control server rejects as expired, ten minutes left
# alone: the join retries in that time (`tailscale up` calls the stand-in
# recorded, systemd's restarts of the agent) and what reached the console;
# then a good seed on the boot partition, and the agent's wall and CPU
# time for the `tailscale` step on the try that joins.
# Run as root from the repository: benches/tailnet.sh
# Needs the host packages of scripts/host-packages.sh; about 20 min under
# TCG (the guest is emulated: compare runs on one machine).
set -euo pipefail
cd "$(dirname "$0")/.."
log=$(mktemp /tmp/nodeforge-tailnet-bench.XXXXXX)
cargo test --locked -q -p qemu-tests --test tailnet -- --ignored ten_minutes_of_failing_joins \
  --exact --nocapture >"$log" 2>&1 || { tail -40 "$log"; exit 1; }
grep -E 'boot [a-z0-9-]+ reported after' "$log" | sed -E 's/: \{$//'
grep -E '^failing joins in 10 min' "$log"
grep -E '^tailscale step of the join' "$log"
echo "(log: $log)"

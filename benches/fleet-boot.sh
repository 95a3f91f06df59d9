#!/usr/bin/env bash
# Benchmark: the fleet's first boot, core, data and media booted together
# on one virtual LAN with their stacks (qemu-tests/tests/fleet.rs). Runs
# the fleet test, then prints its figures: per node, the time from QEMU's
# start to the agent's status line (as the test measured it) and the wall
# time of each agent step (from each node's status.json), and the
# fleet's time until its last node was ready.
# Run as root from the repository: benches/fleet-boot.sh
# Needs the host packages of scripts/host-packages.sh. Under TCG (no KVM)
# the figures are dominated by emulation; three guests share two cores;
# compare runs on one machine.
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(mktemp)
trap 'rm -f "$out"' EXIT
start=$(date +%s)
if ! cargo test --locked -q -p qemu-tests --test fleet -- --nocapture >"$out" 2>&1; then
  tail -n 80 "$out"
  echo "the fleet test failed: no figures" >&2
  exit 1
fi
echo "test wall time: $(($(date +%s) - start)) s"
grep -E '^fleet: (time to ready|agent steps)' "$out"

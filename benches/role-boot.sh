#!/usr/bin/env bash
# Benchmark: first boot of the core, data and media roles with their
# stacks (stand-in images, see qemu-tests/tests/role_stacks.rs). Runs the
# role boot tests, then prints per role, from each guest's console log:
# when the agent reported ready (guest clock, seconds since the kernel
# started), the containers step's wall time, and its summary.
# Run as root from the repository: benches/role-boot.sh
# Needs the host packages of scripts/host-packages.sh. Under TCG (no KVM)
# the figures are dominated by emulation; compare runs on one machine.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --locked -q -p qemu-tests --test role_stacks -- --test-threads=1
printf '%-8s %10s %14s  %s\n' role ready_s containers_s summary
for role in core data media; do
  log=target/qemu-tests/logs/role-$role.log
  ready=$(grep -o '\[ *[0-9.]*\] nodeforge-firstboot\[[0-9]*\]: nodeforge-firstboot: ready' "$log" \
    | tail -1 | sed 's/^\[ *\([0-9.]*\)\].*/\1/')
  step=$(grep -o '"name": "containers",[^}]*' "$log" | tail -1)
  wall=$(sed 's/.*"wall_ms": \([0-9.]*\).*/\1/' <<<"$step")
  detail=$(sed 's/.*"detail": "\([^"]*\)".*/\1/' <<<"$step")
  printf '%-8s %10s %14.1f  %s\n' "$role" "$ready" "$(awk "BEGIN{print $wall/1000}")" "$detail"
done

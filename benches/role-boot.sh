#!/usr/bin/env bash
# Benchmark: first boot, step by step. Boots the base image and the core,
# data and media roles with their stacks (the fleet test's profiles and
# stand-ins, qemu-tests/examples/role_boot.rs), one at a time, each alone
# in a TCG guest with 2 vCPUs, and prints one row per image: its name,
# seconds from QEMU's start to the agent's status line, the wall seconds
# of each agent step and, inside `containers`, the engine's start,
# `compose up` and the health wait.
# Run as root from the repository: benches/role-boot.sh [base core data media]
# Needs the host packages of scripts/host-packages.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo run --locked -q -p qemu-tests --example role_boot -- "$@"

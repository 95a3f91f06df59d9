#!/usr/bin/env bash
# Benchmark: the first-boot agent against cloud-init on the same first
# boot. Two images from one trixie package set (the base image plus
# cloud-init's packages; qemu-tests/profiles/vs-agent.toml and
# vs-cloud-init.toml) boot one after the other in the same QEMU settings
# (TCG, 2 vCPUs, 2 GiB); each sets the hostname, adds one authorized key,
# grows the root and makes an ed25519 host key, the agent from its seed,
# cloud-init from a NoCloud seed. A unit in both images prints systemd's
# timestamps once the boot has finished; this prints each one's seconds
# from its service's start to finished and to the boot's end, and checks
# that both did the work (qemu-tests/examples/vs_cloud_init.rs).
# Run as root from the repository: benches/vs-cloud-init.sh
# Needs the host packages of scripts/host-packages.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo run --locked -q -p qemu-tests --example vs_cloud_init

#!/usr/bin/env bash
# Installs everything nodeforge's builds, boots and tests need on the host:
# `nodeforge doctor --install`, whose table (builder/src/doctor/table.rs) is
# the one list of host prerequisites. Builds nodeforge first unless
# NODEFORGE names a binary. Needs root, and cargo with gcc (this machine's
# Rust toolchain).
set -euo pipefail
cd "$(dirname "$0")/.."

nodeforge=${NODEFORGE:-}
if [ -z "$nodeforge" ]; then
  # The debug build: the one `cargo test` reuses.
  cargo build --locked -p nodeforge
  nodeforge=target/debug/nodeforge
fi
"$nodeforge" doctor --install

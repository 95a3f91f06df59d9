#!/usr/bin/env bash
# Builds the default image (profiles/base.toml) and boots it in QEMU until
# the first-boot agent says the node is ready. Installs the host programs
# it needs first. Run as root from the repository.
set -euo pipefail
cd "$(dirname "$0")/.."
profile=${1:-profiles/base.toml}

cargo build --release --locked -p nodeforge
./target/release/nodeforge doctor --install
./target/release/nodeforge build "$profile" --output out
name=$(./target/release/nodeforge plan --json "$profile" | python3 -c 'import json,sys; print(json.load(sys.stdin)["profile"]["name"])')
./target/release/nodeforge boot "out/$name.img" --log "out/$name.console.log"

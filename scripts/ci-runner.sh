#!/usr/bin/env bash
# Prepares a bare Debian container (a CI runner's job container) to build
# nodeforge: apt's basics, a C compiler for the crates that build C, and a
# Rust toolchain from rustup. On a machine with cargo already, it only
# checks. Run as root from the repository.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v cargo >/dev/null 2>&1 && [ ! -x "$HOME/.cargo/bin/cargo" ]; then
  apt-get update
  apt-get install -y --no-install-recommends ca-certificates curl git gcc libc6-dev pkg-config
  curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
fi
export PATH="$HOME/.cargo/bin:$PATH"
if [ -n "${GITHUB_PATH:-}" ]; then
  echo "$HOME/.cargo/bin" >> "$GITHUB_PATH"
fi
cargo --version

# Sourced by benchmarks that build images, from the repository's root: the
# set-up and the timed build they share.
#   build_bench_tools: builds nodeforge with the bench registry helper
#     (benches/lib/registry.sh) and the x86-64 agent, and sets `nf` (the
#     nodeforge binary) and `agent`. The agent is built here so its compile
#     time is not counted as build time.
#   bench_work_dir NAME: sets `work` to a new directory
#     /var/tmp/nodeforge-NAME.XXXXXX. On exit the bench registry, if one
#     was started (benches/lib/registry.sh), is stopped and `work` removed.
#   timed_build EVENTS ARGS...: runs `nodeforge build --json ARGS` with its
#     events in the file EVENTS and sets `wall` to its wall time (seconds).
#   web_compose FILE: writes the compose template of the stack `web` (one
#     service running env.IMAGE, port 8080 published).
#   stack_profile FILE NAME COMPOSE IMAGE: writes the profile FILE (named
#     NAME, on the repository's base, with Docker and one stack `web` that
#     runs IMAGE from the compose template COMPOSE) and locks it.
# Binaries are looked for in $CARGO_TARGET_DIR, as cargo puts them there.
bench_repo=$PWD
bench_target_dir=${CARGO_TARGET_DIR:-$bench_repo/target}
nf=$bench_target_dir/release/nodeforge

build_bench_tools() {
  cargo build --release --locked -q -p nodeforge --bin nodeforge --example bench_registry \
    --features test-support
  cargo build --release --locked -q -p nodeforge-firstboot --target x86_64-unknown-linux-gnu
  agent=$bench_target_dir/x86_64-unknown-linux-gnu/release/nodeforge-firstboot
}

bench_work_dir() {
  work=$(mktemp -d "/var/tmp/nodeforge-$1.XXXXXX")
  trap 'if [ -n "${reg_pid:-}" ]; then stop_bench_registry; fi; rm -rf "$work"' EXIT
}

timed_build() {
  local events=$1 start end; shift
  start=$(date +%s.%N)
  "$nf" build --json "$@" > "$events"
  end=$(date +%s.%N)
  wall=$(python3 -c 'import sys; print(float(sys.argv[2]) - float(sys.argv[1]))' "$start" "$end")
}

web_compose() {
  cat > "$1" <<'YAML'
services:
  web:
    image: {{ images[env.IMAGE] }}
    pull_policy: never
    ports: ["8080:80"]
YAML
}

stack_profile() {
  local file=$1 name=$2 compose=$3 image=$4
  cat > "$file" <<TOML
extends = "$bench_repo/profiles/base.toml"
name = "$name"
packages = ["docker.io", "docker-cli", "docker-compose"]
[disk]
size = "3GiB"
[[stacks]]
name = "web"
compose = "$compose"
images = ["$image"]
env = { IMAGE = "$image" }
TOML
  "$nf" lock "$file" > /dev/null
}

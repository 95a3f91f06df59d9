# Sourced by benchmarks: starts the bench registry (a local docker-registry
# with busybox httpd images, see builder/examples/bench_registry.rs) and
# fills the array `refs` with its image references. Stops it on exit of
# the sourcing script through `stop_bench_registry`.
#   start_bench_registry TARGET_DIR SMALL_MIB LARGE_MIB
start_bench_registry() {
  local tdir=$1 small=$2 large=$3 kind ref bytes
  coproc REG { "$tdir/release/examples/bench_registry" "$small" "$large"; }
  reg_pid=$REG_PID reg_in=${REG[1]} reg_out=${REG[0]}
  refs=(); blobs=()
  while read -r kind ref bytes <&"$reg_out"; do
    [ "$kind" = READY ] && break
    refs+=("$ref"); blobs+=("$bytes")
  done
  [ "${#refs[@]}" = 2 ] || { echo "the bench registry did not start" >&2; return 1; }
}

# Closing its stdin ends the helper, which stops its registry.
stop_bench_registry() {
  exec {reg_in}>&- 2>/dev/null || true
  wait "$reg_pid" 2>/dev/null || true
}

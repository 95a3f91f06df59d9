#!/usr/bin/env bash
# Benchmarks `nodeforge flash` (verify on) against `dd bs=4M conv=fsync` and
# `bmaptool copy`, writing one 8 GiB sparse image with ~1.5 GiB of
# incompressible data in a few dozen extents, to a regular file and to a
# loop device. Prints times and ratios.
#
# Usage: benches/flash.sh    (root for the loop-device half)
# Env:   BENCH_DIR   scratch directory (default: a new one under /var/tmp);
#                    needs ~18 GiB free, removed afterwards
#        IMAGE_GIB   image size (default 8), EXTENTS (36), EXTENT_MIB (42)
#        ROUNDS      runs of nodeforge and bmaptool, interleaved; the median
#                    counts (default 3; dd runs once, it is far slower)
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
IMAGE_GIB=${IMAGE_GIB:-8}
EXTENTS=${EXTENTS:-36}
EXTENT_MIB=${EXTENT_MIB:-42}
ROUNDS=${ROUNDS:-3}
dir=${BENCH_DIR:-$(mktemp -d /var/tmp/bench-flash.XXXXXX)}
mkdir -p "$dir"
loopdev=""
cleanup() {
    if [ -n "$loopdev" ]; then losetup -d "$loopdev" || true; fi
    rm -rf "$dir"
}
trap cleanup EXIT

need_kib=$(( (IMAGE_GIB * 2 + 2) * 1024 * 1024 ))
avail_kib=$(df -Pk "$dir" | awk 'NR==2 {print $4}')
if [ "$avail_kib" -lt "$need_kib" ]; then
    echo "bench-flash: $dir has $((avail_kib / 1048576)) GiB free, needs $((need_kib / 1048576)) GiB" >&2
    exit 1
fi

echo "== building (cargo build --release)"
(cd "$repo" && cargo build --release -q -p nodeforge)
nodeforge="${CARGO_TARGET_DIR:-$repo/target}/release/nodeforge"

echo "== making a ${IMAGE_GIB} GiB sparse image with ${EXTENTS} x ${EXTENT_MIB} MiB of random data"
img="$dir/node.img"
truncate -s "${IMAGE_GIB}G" "$img"
size_mib=$((IMAGE_GIB * 1024))
# Data in the first MiB (partition table), spread through the image, and
# in the last MiB (backup GPT), like a real partitioned image.
dd if=/dev/urandom of="$img" bs=64K count=1 conv=notrunc status=none
dd if=/dev/urandom of="$img" bs=64K count=1 seek=$(((size_mib - 1) * 16)) conv=notrunc status=none
for i in $(seq 0 $((EXTENTS - 1))); do
    off=$((2 + i * (size_mib - 2 - EXTENT_MIB) / EXTENTS))
    dd if=/dev/urandom of="$img" bs=1M count="$EXTENT_MIB" seek="$off" conv=notrunc status=none
done
sync
"$nodeforge" bmap "$img" -o "$img.bmap"
mapped=$(du -m "$img" | cut -f1)
echo "   image: $(du -h --apparent-size "$img" | cut -f1) apparent, ${mapped} MiB mapped"

have_bmaptool=1
command -v bmaptool >/dev/null || { have_bmaptool=0; echo "   (bmaptool not installed: apt-get install bmap-tools; its column is skipped)"; }

now() { date +%s.%N; }
declare -A T

# time_run KEY CMD...: times CMD (on a target made fresh just before) and
# appends the seconds to T[KEY].
time_run() {
    local key=$1; shift
    sync; sleep 1
    local t0 t1 dt
    t0=$(now)
    "$@" >/dev/null 2>"$dir/err" || { echo "$key failed:"; cat "$dir/err"; exit 1; }
    t1=$(now)
    dt=$(echo "$t1 - $t0" | bc)
    T[$key]="${T[$key]:-} $dt"
    printf '   %-22s %7.2f s\n' "$key" "$dt"
}

median() { tr ' ' '\n' <<<"$1" | grep . | sort -g | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }
fastest() { tr ' ' '\n' <<<"$1" | grep . | sort -g | head -1; }

fresh_file() { rm -f "$dir/target.img"; }
fresh_loop() {
    if [ -n "$loopdev" ]; then losetup -d "$loopdev"; loopdev=""; fi
    rm -f "$dir/disk"
    truncate -s "${IMAGE_GIB}G" "$dir/disk"
    loopdev=$(losetup --find --show "$dir/disk")
}

echo "== to a regular file"
fresh_file; time_run file/dd dd if="$img" of="$dir/target.img" bs=4M conv=fsync
for r in $(seq "$ROUNDS"); do
    if [ $have_bmaptool = 1 ]; then
        fresh_file; time_run file/bmaptool bmaptool copy --bmap "$img.bmap" "$img" "$dir/target.img"
    fi
    fresh_file; time_run file/nodeforge "$nodeforge" flash "$img" "$dir/target.img" --yes --quiet
done
cmp -n $((IMAGE_GIB << 30)) "$img" "$dir/target.img" && echo "   (nodeforge's file target is byte-identical to the image)"
fresh_file

loop=1
if [ "$(id -u)" != 0 ] || ! losetup --find >/dev/null 2>&1; then
    loop=0; echo "== loop device: skipped (needs root and a free loop device)"
fi
if [ $loop = 1 ]; then
    echo "== to a loop device"
    fresh_loop; time_run loop/dd dd if="$img" of="$loopdev" bs=4M conv=fsync
    for r in $(seq "$ROUNDS"); do
        if [ $have_bmaptool = 1 ]; then
            fresh_loop; time_run loop/bmaptool bmaptool copy --bmap "$img.bmap" "$img" "$loopdev"
        fi
        # Loop devices are not removable: --force.
        fresh_loop; time_run loop/nodeforge "$nodeforge" flash "$img" "$loopdev" --yes --force --quiet
    done
    losetup -d "$loopdev"; loopdev=""
fi

echo "== results over $ROUNDS rounds, median and fastest (nodeforge reads everything back to verify; bmaptool checks the image while copying; dd checks nothing)"
for where in file loop; do
    [ -n "${T[$where/nodeforge]:-}" ] || continue
    for stat in median fastest; do
        nf=$($stat "${T[$where/nodeforge]}")
        dd_t=$($stat "${T[$where/dd]}")
        printf '   %-5s %-8s dd %6.2f s, ' "$where" "$stat" "$dd_t"
        if [ -n "${T[$where/bmaptool]:-}" ]; then bt=$($stat "${T[$where/bmaptool]}"); printf 'bmaptool %6.2f s, ' "$bt"; fi
        printf 'nodeforge %6.2f s  ->  %4.1fx faster than dd' "$nf" "$(echo "$dd_t / $nf" | bc -l)"
        [ -n "${T[$where/bmaptool]:-}" ] && printf ', bmaptool/nodeforge %.2f' "$(echo "$bt / $nf" | bc -l)"
        echo
    done
done

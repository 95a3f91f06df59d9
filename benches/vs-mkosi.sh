#!/usr/bin/env bash
# Benchmark: nodeforge against mkosi building a comparable image — Debian
# trixie, the same package set as profiles/base.toml, a bootable UEFI disk
# with systemd-boot — cold (empty caches) on the same machine, in one run.
# Prints times, image sizes and the ratios. Then, where it can be had, the
# size of Debian's official genericcloud image of the same release against
# nodeforge's (GENERICCLOUD_RAW=FILE uses a copy already downloaded;
# otherwise it is fetched, and a failed fetch is reported, not fatal).
# Run as root from the repo:
#   benches/vs-mkosi.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive
# mkosi 24 from bookworm-backports, and what it runs on the host.
apt-get install -y -q -t bookworm-backports mkosi systemd-boot > /dev/null
apt-get install -y -q kmod mtools dosfstools e2fsprogs > /dev/null

cargo build --release --locked -q -p nodeforge -p nodeforge-firstboot
cargo build --release --locked -q -p nodeforge-firstboot --target x86_64-unknown-linux-gnu
work=$(mktemp -d /var/tmp/nodeforge-vs-mkosi.XXXXXX)
trap 'rm -rf "$work"' EXIT

packages=$(./target/release/nodeforge plan --json profiles/base.toml \
  | python3 -c 'import json,sys; print("\n".join(json.load(sys.stdin)["packages"]))')
mkdir -p "$work/mkosi/pmt/etc/apt/trusted.gpg.d"
# mkosi's own repository list adds debian-debug, which is not reachable
# here; LocalMirror= uses only the mirror, trusted through this keyring.
cp /usr/share/keyrings/debian-archive-keyring.gpg "$work/mkosi/pmt/etc/apt/trusted.gpg.d/"
{
  printf '[Distribution]\nDistribution=debian\nRelease=trixie\nLocalMirror=http://deb.debian.org/debian\n\n'
  printf '[Build]\nPackageManagerTrees=pmt\n\n'
  printf '[Output]\nFormat=disk\nImageId=mkosi-base\nCompressOutput=no\n\n'
  printf '[Content]\nBootable=yes\nBootloader=systemd-boot\nPackages='
  # mkosi splits lists at commas (a space-separated line is one name).
  echo "$packages" | paste -sd,
} > "$work/mkosi/mkosi.conf"

time_it() { local s e; s=$(date +%s.%N); "$@"; e=$(date +%s.%N); python3 -c "print(f'{$e-$s:.1f}')"; }

echo "host: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "== nodeforge (cold cache)"
nf=$(time_it ./target/release/nodeforge build profiles/base.toml --quiet --output "$work/nf-out" --cache-dir "$work/nf-cache")
echo "== mkosi (cold cache)"
# Only mkosi's own output goes to the log; time_it prints the seconds.
if ! mk=$(cd "$work/mkosi" && time_it sh -c 'exec mkosi -f build > ../mkosi.log 2>&1'); then
  echo "mkosi failed; the end of its log:" >&2
  tail -20 "$work/mkosi.log" >&2
  exit 1
fi

nf_img="$work/nf-out/base.img"
mk_img=$(ls "$work"/mkosi/mkosi-base*.raw | head -1)
size() { stat -c %s "$1"; }
alloc() { echo $(( $(stat -c %b "$1") * 512 )); }
zsize() { zstd -q -T0 -3 -c "$1" | wc -c; }
python3 - "$nf" "$mk" "$(size "$nf_img")" "$(alloc "$nf_img")" "$(zsize "$nf_img")" \
  "$(size "$mk_img")" "$(alloc "$mk_img")" "$(zsize "$mk_img")" <<'PY'
import sys
nf, mk = float(sys.argv[1]), float(sys.argv[2])
a = [int(x) for x in sys.argv[3:]]
M = 2**20
print(f"build time   nodeforge {nf:7.1f} s   mkosi {mk:7.1f} s   nodeforge/mkosi {nf/mk:.2f}")
print(f"image size   nodeforge {a[0]/M:7.0f} MiB mkosi {a[3]/M:7.0f} MiB")
print(f"data blocks  nodeforge {a[1]/M:7.0f} MiB mkosi {a[4]/M:7.0f} MiB   ratio {a[1]/a[4]:.2f}")
print(f"zstd -3      nodeforge {a[2]/M:7.0f} MiB mkosi {a[5]/M:7.0f} MiB   ratio {a[2]/a[5]:.2f}")
PY

# Debian's genericcloud image (cloud-init, a cloud kernel, no Docker): the
# image a user would otherwise start from. Sizes only: it is not built here.
gc_url=https://cloud.debian.org/images/cloud/trixie/latest/debian-13-genericcloud-amd64.raw
gc=${GENERICCLOUD_RAW:-}
if [ -z "$gc" ] && curl -fsSL --max-time 900 -o "$work/gc.raw" "$gc_url" 2> "$work/gc.err"; then
  gc=$work/gc.raw
fi
if [ -n "$gc" ]; then
  # Downloaded, its zero blocks take space: count only the data.
  cp --sparse=always "$gc" "$work/gc.sparse"
  python3 - "$(alloc "$nf_img")" "$(zsize "$nf_img")" "$(alloc "$work/gc.sparse")" "$(zsize "$gc")" <<'PY'
import sys
a = [int(x) for x in sys.argv[1:]]
M = 2**20
print(f"data blocks  nodeforge {a[0]/M:7.0f} MiB genericcloud {a[2]/M:7.0f} MiB   ratio {a[0]/a[2]:.2f}")
print(f"zstd -3      nodeforge {a[1]/M:7.0f} MiB genericcloud {a[3]/M:7.0f} MiB   ratio {a[1]/a[3]:.2f}")
PY
else
  echo "genericcloud: not compared, $gc_url could not be fetched: $(head -c 200 "$work/gc.err")"
fi

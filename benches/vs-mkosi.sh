#!/usr/bin/env bash
# Benchmark: nodeforge against mkosi building a comparable image — Debian
# trixie, the same package set as profiles/base.toml, a bootable UEFI disk
# with systemd-boot — cold (empty caches) on the same machine, in one run.
# Prints times, image sizes and the ratios. Run as root from the repo:
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

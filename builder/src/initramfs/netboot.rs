//! The netboot initramfs: the same busybox and module loading as the disk
//! initramfs, but /init brings up the network with busybox's DHCP client,
//! fetches the root squashfs from the URL in `nodeforge.root=`, checks it
//! against the sha256 in `nodeforge.root_sha256=` (the build's, in its
//! iPXE script), mounts it under a RAM overlay and switches to it. The image's kernel supplies the
//! modules (NIC drivers, squashfs, overlay, loop).

use std::path::Path;

use anyhow::Result;

use super::{assemble, Built, Extra, INIT_PRELUDE};
use crate::install::{INSTALLER_PATH, INSTALL_PARAM};

/// Kernel command-line parameter naming the root squashfs's URL.
pub const ROOT_PARAM: &str = "nodeforge.root";
/// Kernel command-line parameter with the root squashfs's sha256 (hex):
/// nothing is mounted before it matches. It arrives in the iPXE script,
/// over the same plain HTTP as the root, so it catches damage (a disk, a
/// network, a partial copy), not someone who can rewrite both.
pub const ROOT_SHA256_PARAM: &str = "nodeforge.root_sha256";

/// Modules netboot cannot do without (each may be built in).
const REQUIRED_MODULES: [&str; 4] = ["af_packet", "squashfs", "overlay", "loop"];
/// Network drivers, taken when the kernel has them: virtual machines'
/// and the common server and desktop NICs.
const NIC_MODULES: [&str; 10] = [
    "virtio_pci",
    "virtio_net",
    "e1000",
    "e1000e",
    "igb",
    "igc",
    "ixgbe",
    "i40e",
    "r8169",
    "tg3",
];
/// Disk drivers, taken when the kernel has them: install mode writes the
/// local disk from the initramfs.
const DISK_MODULES: [&str; 6] = [
    "virtio_blk",
    "virtio_scsi",
    "sd_mod",
    "ahci",
    "nvme",
    "mmc_block",
];
/// How many rounds of DHCP on every interface before giving up.
const DHCP_ROUNDS: u32 = 10;

/// Builds the netboot initramfs for kernel `version` of `rootfs`.
pub fn build(rootfs: &Path, version: &str, mtime: i64) -> Result<Built> {
    let wanted: Vec<String> = REQUIRED_MODULES.iter().map(|m| m.to_string()).collect();
    assemble(
        rootfs,
        version,
        &wanted,
        &[&NIC_MODULES[..], &DISK_MODULES[..]].concat(),
        &init_script(),
        &[Extra {
            path: "/etc/udhcpc.script",
            mode: 0o755,
            data: UDHCPC_SCRIPT.as_bytes(),
        }],
        mtime,
    )
}

/// udhcpc calls this with the lease in its environment (`mask` is the
/// prefix length).
const UDHCPC_SCRIPT: &str = r#"#!/bin/sh
case "$1" in
deconfig)
    ip addr flush dev "$interface"
    ip link set "$interface" up
    ;;
bound|renew)
    ip addr flush dev "$interface"
    ip addr add "$ip/${mask:-24}" dev "$interface"
    for r in $router; do ip route add default via "$r" dev "$interface"; break; done
    : > /etc/resolv.conf
    for d in $dns; do echo "nameserver $d" >> /etc/resolv.conf; done
    ;;
esac
exit 0
"#;

/// /init for netboot. Any failure prints why and ends in a kernel panic
/// (init exits), which boot watchers and people both see.
pub fn init_script() -> String {
    format!(
        r##"#!/bin/sh
# nodeforge netboot initramfs: DHCP, fetch the root squashfs over HTTP,
# mount it under a RAM overlay and hand over to its init.
{INIT_PRELUDE}fail() {{
    echo "nodeforge-netboot: $*"
    sleep 10
    exit 1
}}
param() {{
    v=
    for w in $(cat /proc/cmdline); do
        case "$w" in "$1="*) v="${{w#*=}}" ;; esac
    done
    echo "$v"
}}
url=$(param {ROOT_PARAM})
[ -n "$url" ] || fail "no {ROOT_PARAM}=URL on the kernel command line"
want=$(param {ROOT_SHA256_PARAM})
case "$want" in
*[!0-9a-f]* | "") fail "no {ROOT_SHA256_PARAM}=HEX (64 lowercase hex digits) on the kernel command line: boot with the iPXE script of the same build as this initramfs" ;;
esac
[ "${{#want}}" -eq 64 ] || fail "{ROOT_SHA256_PARAM}=$want is not 64 hex digits: boot with the iPXE script of the same build as this initramfs"
ip link set lo up
iface=
round=0
while [ -z "$iface" ]; do
    round=$((round + 1))
    [ "$round" -gt {DHCP_ROUNDS} ] && fail "no DHCP answer on any interface: $(ls /sys/class/net)"
    for d in /sys/class/net/*; do
        i=${{d##*/}}
        [ "$i" = lo ] && continue
        ip link set "$i" up
        if udhcpc -i "$i" -f -q -n -t 3 -T 2 -s /etc/udhcpc.script >/dev/null 2>&1; then
            iface=$i
            break
        fi
    done
done
echo "nodeforge-netboot: $iface is $(ip -4 -o addr show dev "$iface" | awk '{{print $4}}'); fetching $url"
mkdir -p /media/ram /media/lower /media/rw
mount -t tmpfs -o mode=0700 tmpfs /media/ram
n=0
until wget -q -O /media/ram/root.squashfs "$url"; do
    n=$((n + 1))
    [ "$n" -ge 5 ] && fail "cannot fetch $url"
    sleep 2
done
sum=$(sha256sum /media/ram/root.squashfs) || fail "cannot hash the root fetched from $url (out of RAM?)"
got=${{sum%% *}}
if [ "$got" != "$want" ]; then
    rm -f /media/ram/root.squashfs
    fail "REFUSING the root from $url: its sha256 is $got, the build's is $want (damaged on the way or on the server); rebuild or copy the build's netboot files again"
fi
echo "nodeforge-netboot: root sha256 $got matches the build's"
mount -t squashfs -o ro,loop /media/ram/root.squashfs /media/lower || fail "cannot mount the squashfs from $url"
mount -t tmpfs -o mode=0755 tmpfs /media/rw
mkdir -p /media/rw/upper /media/rw/work
mount -t overlay -o lowerdir=/media/lower,upperdir=/media/rw/upper,workdir=/media/rw/work overlay /newroot \
    || fail "cannot mount the overlay root"
order=$(param {INSTALL_PARAM})
if [ -n "$order" ]; then
    # Install mode: the fetched root's installer writes the role's image to
    # a local disk; then the machine restarts into it.
    [ -x /newroot{INSTALLER_PATH} ] || fail "this build has no installer ({INSTALLER_PATH}); rebuild it with the host's nodeforge"
    mount -t proc proc /newroot/proc
    mount -t sysfs sysfs /newroot/sys
    mount --bind /dev /newroot/dev
    if chroot /newroot {INSTALLER_PATH} netinstall "$order"; then
        echo "nodeforge-netboot: installed; restarting into the installed system"
        sync
        reboot -f
    fi
    fail "installing from $order failed"
fi
# The image's fstab names its disk's partitions; a diskless node has none.
echo "# nodeforge netboot: root is the squashfs under a RAM overlay" > /newroot/etc/fstab
# The system's own network setup starts from the interface as the
# firmware left it (down, unnamed by udev, no address).
ip addr flush dev "$iface"
ip link set "$iface" down
umount /proc /sys
mount --move /dev /newroot/dev
exec switch_root /newroot /sbin/init "$@"
"##
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn init_fetches_the_root_from_the_command_line_url_and_overlays_it() {
        let s = init_script();
        assert!(s.starts_with("#!/bin/sh\n"));
        assert!(s.contains("url=$(param nodeforge.root)"), "{s}");
        assert!(s.contains("udhcpc -i \"$i\""), "{s}");
        assert!(s.contains("wget -q -O /media/ram/root.squashfs \"$url\""));
        // Checked before anything mounts it.
        let check = s
            .find("want=$(param nodeforge.root_sha256)")
            .expect("reads the sha256");
        let compare = s.find("if [ \"$got\" != \"$want\" ]").expect("compares");
        let mount = s.find("mount -t squashfs").unwrap();
        assert!(check < compare && compare < mount, "{s}");
        assert!(s.contains("REFUSING the root from $url"), "{s}");
        assert!(s.contains("lowerdir=/media/lower,upperdir=/media/rw/upper"));
        assert!(s.contains("exec switch_root /newroot /sbin/init"));
        assert!(s.contains("order=$(param nodeforge.install)"), "{s}");
        assert!(
            s.contains("chroot /newroot /usr/lib/nodeforge/nodeforge netinstall \"$order\""),
            "{s}"
        );
        // Braces of the shell survive the format string.
        assert!(s.contains("fail() {\n") && s.contains("${w#*=}"), "{s}");
    }

    #[test]
    fn missing_nic_drivers_are_skipped_but_missing_squashfs_is_an_error() {
        let root = super::super::fake_root(
            "6.12.0-amd64",
            &[
                ("kernel/net/virtio_net.ko", b"virtio_net object"),
                ("modules.dep", b"kernel/net/virtio_net.ko:\n"),
                (
                    "modules.builtin",
                    b"kernel/net/packet/af_packet.ko\nkernel/fs/overlayfs/overlay.ko\nkernel/drivers/block/loop.ko\n",
                ),
            ],
        );
        let r = root.path();
        let md = r.join("usr/lib/modules/6.12.0-amd64");
        let err = build(r, "6.12.0-amd64", 0).unwrap_err().to_string();
        assert!(err.contains("no module squashfs"), "{err}");
        let builtin = fs::read_to_string(md.join("modules.builtin")).unwrap();
        fs::write(
            md.join("modules.builtin"),
            builtin + "kernel/fs/squashfs/squashfs.ko\n",
        )
        .unwrap();
        let built = build(r, "6.12.0-amd64", 0).unwrap();
        assert_eq!(built.modules, ["virtio_net"]);
        let text = String::from_utf8_lossy(&built.bytes);
        assert!(text.contains("etc/udhcpc.script") && text.contains("$router"));
    }
}

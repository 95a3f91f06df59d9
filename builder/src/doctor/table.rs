//! The host's prerequisites, one entry each: what it is for, how doctor
//! sees it, how it is installed. This table is the only list:
//! `nodeforge doctor [--install]` and `scripts/host-packages.sh` (which
//! runs `doctor --install`) both use it, and a unit test fails when the
//! code runs a host program that has no entry here.

use super::{Fix, Probe, Requirement};
use crate::profile::Arch;

const fn apt(what: &'static str, probe: Probe, package: &'static str) -> Requirement {
    Requirement {
        what,
        probe,
        fix: Fix::Apt {
            package,
            backports: false,
        },
    }
}

/// On Debian bookworm this comes from bookworm-backports (QEMU must match
/// the backported qemu-utils; mmdebstrap and e2fsprogs need trixie's
/// features).
const fn backported(what: &'static str, probe: Probe, package: &'static str) -> Requirement {
    Requirement {
        what,
        probe,
        fix: Fix::Apt {
            package,
            backports: true,
        },
    }
}

use Probe::{File, Program};

pub const REQUIREMENTS: &[Requirement] = &[
    backported("bootstrap Debian", Program("mmdebstrap"), "mmdebstrap"),
    // Only a recommendation of mmdebstrap, so --no-install-recommends
    // leaves it out; mmdebstrap refuses a foreign architecture without it.
    apt(
        "bootstrap another architecture",
        Program("arch-test"),
        "arch-test",
    ),
    apt(
        "trust TLS mirrors",
        File(super::CA_BUNDLE),
        "ca-certificates",
    ),
    backported("ext4 root filesystem", Program("mkfs.ext4"), "e2fsprogs"),
    backported("read ext4 images (tests)", Program("debugfs"), "e2fsprogs"),
    backported("check ext4 images (tests)", Program("e2fsck"), "e2fsprogs"),
    apt("unpack cached rootfs", Program("tar"), "tar"),
    apt("compress cache entries", Program("zstd"), "zstd"),
    apt("check repository keys", Program("gpg"), "gnupg"),
    // Recommended by mmdebstrap: debconf's template extraction.
    apt(
        "debconf helpers for mmdebstrap",
        Program("apt-extracttemplates"),
        "apt-utils",
    ),
    backported(
        "boot x86-64 images",
        Program("qemu-system-x86_64"),
        "qemu-system-x86",
    ),
    backported(
        "boot arm64 images",
        Program("qemu-system-aarch64"),
        "qemu-system-arm",
    ),
    apt(
        "UEFI firmware for x86-64",
        File("/usr/share/OVMF/OVMF_CODE_4M.fd"),
        "ovmf",
    ),
    backported("qcow2 output", Program("qemu-img"), "qemu-utils"),
    apt("check GPT (tests)", Program("sgdisk"), "gdisk"),
    apt("check FAT (tests)", Program("fsck.vfat"), "dosfstools"),
    apt("write and check MBR", Program("sfdisk"), "fdisk"),
    apt("decompress kernel modules", Program("xz"), "xz-utils"),
    apt("read initramfs archives", Program("cpio"), "cpio"),
    apt("module index for arm64 images", Program("depmod"), "kmod"),
    apt("CA links for arm64 images", Program("openssl"), "openssl"),
    apt("strip netboot binaries", Program("strip"), "binutils"),
    apt("SSH keys (tests)", Program("ssh-keygen"), "openssh-client"),
    apt("check bash completions (tests)", Program("bash"), "bash"),
    apt(
        "check firewall rulesets (tests)",
        Program("nft"),
        "nftables",
    ),
    apt(
        "registries that want a login (tests)",
        Program("htpasswd"),
        "apache2-utils",
    ),
    apt("SSH to test guests", Program("ssh"), "openssh-client"),
    apt(
        "flash with bmaptool (tests)",
        Program("bmaptool"),
        "bmap-tools",
    ),
    backported(
        "run arm64 programs",
        Program("qemu-aarch64-static"),
        "qemu-user-static",
    ),
    Requirement {
        what: "arm64 emulation in chroots",
        probe: Probe::Binfmt(Arch::Arm64),
        fix: Fix::Binfmt,
    },
    apt(
        "UEFI firmware for arm64",
        File("/usr/share/AAVMF/AAVMF_CODE.fd"),
        "qemu-efi-aarch64",
    ),
    apt(
        "link the arm64 agent",
        Program("aarch64-linux-gnu-gcc"),
        "gcc-aarch64-linux-gnu",
    ),
    apt(
        "arm64 C library for linking",
        File("/usr/aarch64-linux-gnu/lib/crt1.o"),
        "libc6-dev-arm64-cross",
    ),
    Requirement {
        what: "build the arm64 agent",
        probe: Probe::RustTarget("aarch64-unknown-linux-gnu"),
        fix: Fix::Rustup("aarch64-unknown-linux-gnu"),
    },
    apt(
        "OCI registry (tests)",
        Program("docker-registry"),
        "docker-registry",
    ),
    apt(
        "netboot root filesystem",
        Program("mksquashfs"),
        "squashfs-tools",
    ),
    apt(
        "iPXE for TFTP clients",
        File("/usr/lib/ipxe/undionly.kpxe"),
        "ipxe",
    ),
    apt(
        "iPXE ROMs for netboot guests",
        File("/usr/lib/ipxe/qemu/efi-virtio.rom"),
        "ipxe-qemu",
    ),
    apt("fetch over HTTP (tests, benches)", Program("curl"), "curl"),
    apt(
        "busybox for test images (tests)",
        File("/bin/busybox"),
        "busybox-static",
    ),
    Requirement {
        what: "validate compose files (tests)",
        probe: File(super::compose::COMPOSE_BIN),
        fix: Fix::TrixieCompose,
    },
];

/// Programs the code runs that need no entry: part of every Debian system
/// (Essential or priority required: coreutils, dash, dpkg, apt, mount,
/// gzip), or the Rust toolchain nodeforge itself is built with.
#[cfg(test)]
pub const ALWAYS_THERE: &[&str] = &[
    "sh",
    "cat",
    "cp",
    "date",
    "dd",
    "echo",
    "sleep",
    "sha256sum",
    "chroot",
    "mount",
    "losetup",
    "gzip",
    "dpkg-deb",
    "dpkg-divert",
    "dpkg-query",
    "apt-get",
    "apt-cache",
    "apt-config",
    "cargo",
    "rustc",
    "rustup",
];

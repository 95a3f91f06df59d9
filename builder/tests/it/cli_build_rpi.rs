//! The Raspberry Pi pipeline end to end without a network or emulation:
//! a fake arm64 rootfs (kernel, Pi firmware, device tree, busybox, a
//! compressed ext4 module) sits in the cache under the plan's key, so the
//! initramfs, the FAT boot partition, the ext4 root and the MBR are all
//! written for real and checked with outside tools. Needs root.

use std::fs;
use std::process::Command;

use crate::support::fake::{build_args, offline_build, store_rootfs_tree};
use crate::support::image::{assert_fsck_clean, copy_out, Ext4};
use crate::support::{require_root, require_tool, Project, KEY};
use nodeforge::disk::{esp, mbr};

const VERSION: &str = "6.12.0-test-arm64";
const PI: &str = r#"arch = "arm64"
firmware = "rpi"
packages = ["linux-image-arm64", "raspi-firmware", "busybox-static"]
kernel_cmdline = ["console=ttyS1,115200", "rootwait"]
initramfs = "nodeforge"
initramfs_modules = ["ext4"]

[rpi]
firmware_files = ["start4.elf", "fixup4.dat"]
device_trees = ["bcm2711-rpi-4-b.dtb"]
config = ["dtparam=audio=off"]
"#;

fn project() -> Project {
    let p = Project::new();
    p.write("hardware/pi.toml", PI);
    p.write(
        "profiles/pi.toml",
        &format!("name = \"pi\"\nhardware = \"pi\"\noverlays = [\"base\"]\n[debian]\ncomponents = [\"main\", \"non-free-firmware\"]\n[[users]]\nname = \"admin\"\nsudo = true\nauthorized_keys = [\"{KEY}\"]\n[disk]\nsize = \"800MiB\"\nesp_size = \"64MiB\"\n"),
    );
    p.write("agent", "#!/bin/sh\necho fake arm64 agent\n");
    let tree = p.path("fake-rootfs");
    let modules = format!("usr/lib/modules/{VERSION}");
    for (rel, text) in [
        ("etc/passwd", "root:x:0:0:root:/root:/bin/bash\n"),
        ("etc/group", "root:x:0:\nsudo:x:27:\n"),
        ("etc/shadow", "root:*:19000:0:99999:7:::\n"),
        ("etc/gshadow", "root:*::\nsudo:*::\n"),
        (
            "var/lib/dpkg/status",
            "Package: raspi-firmware\nStatus: install ok installed\nArchitecture: all\nVersion: 1.2\n\n",
        ),
        (&format!("boot/vmlinuz-{VERSION}"), "arm64 kernel"),
        ("usr/lib/raspi-firmware/start4.elf", "start4"),
        ("usr/lib/raspi-firmware/fixup4.dat", "fixup4"),
        // What raspi-firmware's hook copies below the mount point.
        ("boot/firmware/start4.elf", "hidden copy"),
        (
            &format!("usr/lib/linux-image-{VERSION}/broadcom/bcm2711-rpi-4-b.dtb"),
            "dtb",
        ),
        ("usr/bin/busybox", "busybox binary"),
        ("etc/default/raspi-firmware", "#ROOTPART=/dev/mmcblk0p2\n"),
        (
            &format!("{modules}/modules.dep"),
            "kernel/fs/ext4/ext4.ko.xz: kernel/fs/jbd2/jbd2.ko\nkernel/fs/jbd2/jbd2.ko:\n",
        ),
        (&format!("{modules}/kernel/fs/jbd2/jbd2.ko"), "jbd2 object"),
        (&format!("{modules}/kernel/fs/ext4/ext4.ko"), "ext4 object"),
    ] {
        crate::support::write_file(&tree.join(rel), text);
    }
    // Debian ships modules xz-compressed; the initramfs holds them plain.
    require_tool("xz", "xz-utils");
    let ok = Command::new("xz")
        .arg(tree.join(format!("{modules}/kernel/fs/ext4/ext4.ko")))
        .status()
        .expect("xz (xz-utils) is installed");
    assert!(ok.success());
    store_rootfs_tree(&p, &tree, "profiles/pi.toml");
    p
}

#[test]
fn pi_image_has_an_mbr_a_fat_boot_partition_and_an_ext4_root() {
    require_root();
    let p = project();
    let steps = offline_build(&p, "profiles/pi.toml", &["--json"]).steps();
    steps.assert(&["initramfs", "boot-partition", "partition-table"], "done");

    let img_path = p.path("out/pi.img");
    let parts = mbr::read(&img_path).unwrap().expect("an MBR disk");
    assert_eq!(parts.len(), 2, "{parts:?}");
    let (boot, root) = (&parts[0], &parts[1]);
    assert_eq!((boot.mbr_type, boot.bootable), (0x0C, true));
    assert_eq!((root.mbr_type, root.bootable), (0x83, false));
    assert_eq!(boot.offset, 1 << 20);

    require_tool("sfdisk", "fdisk");
    let sfdisk = Command::new("sfdisk")
        .arg("--dump")
        .arg(&img_path)
        .output()
        .expect("sfdisk (fdisk) is installed");
    let dump = String::from_utf8_lossy(&sfdisk.stdout);
    assert!(dump.contains("label: dos"), "{dump}");
    assert!(dump.contains("type=c, bootable"), "{dump}");
    assert!(dump.contains("type=83"), "{dump}");

    let img = fs::File::open(&img_path).unwrap();
    let read = |name: &str| esp::read_file(&img, boot.offset, boot.size, name).unwrap();
    let cmdline = String::from_utf8(read("cmdline.txt")).unwrap();
    assert_eq!(
        cmdline,
        format!(
            "root=PARTUUID={} rw console=ttyS1,115200 rootwait\n",
            root.partuuid
        )
    );
    let config = String::from_utf8(read("config.txt")).unwrap();
    for line in [
        "arm_64bit=1",
        "kernel=vmlinuz",
        "initramfs initrd.img followkernel",
        "dtparam=audio=off",
    ] {
        assert!(config.lines().any(|l| l == line), "{line} in:\n{config}");
    }
    assert_eq!(read("start4.elf"), b"start4");
    assert_eq!(read("fixup4.dat"), b"fixup4");
    assert_eq!(read("bcm2711-rpi-4-b.dtb"), b"dtb");
    assert_eq!(read("vmlinuz"), b"arm64 kernel");
    let initrd = read("initrd.img");
    assert!(initrd.starts_with(b"070701"), "a newc cpio");
    let text = String::from_utf8_lossy(&initrd);
    assert!(text.contains("ext4 object"), "module decompressed");
    assert!(text.contains("kernel/fs/jbd2/jbd2.ko\nkernel/fs/ext4/ext4.ko\n"));
    assert!(text.contains("switch_root"));

    let vfat = copy_out(&img_path, boot.offset, boot.size, &p.path("boot.vfat"));
    assert_fsck_clean("fsck.vfat", "-n", &vfat);

    let ext4 = Ext4 {
        path: copy_out(&img_path, root.offset, root.size, &p.path("root.ext4")),
    };
    assert_fsck_clean("e2fsck", "-fn", &ext4.path);
    let debugfs = |req: &str| ext4.debugfs(req);
    let fstab = debugfs("cat /etc/fstab");
    assert!(
        fstab.contains(&format!("PARTUUID={}\t/\text4", root.partuuid)),
        "{fstab}"
    );
    assert!(
        fstab.contains(&format!("PARTUUID={}\t/boot/firmware\tvfat", boot.partuuid)),
        "{fstab}"
    );
    assert!(
        debugfs("cat /etc/default/raspi-firmware")
            .contains(&format!("ROOTPART=\"PARTUUID={}\"", root.partuuid)),
        "kernel upgrades on the node keep the root by PARTUUID"
    );
    assert_eq!(
        debugfs("cat /etc/default/raspi-firmware-custom"),
        "# Written by nodeforge: the hardware's config.txt lines.\ndtparam=audio=off\n"
    );
    assert!(
        !debugfs("ls -l /boot/firmware").contains("start4.elf"),
        "files below the mount point are removed"
    );
    assert_eq!(
        debugfs("cat /usr/bin/nodeforge-firstboot"),
        "#!/bin/sh\necho fake arm64 agent\n"
    );
}

#[test]
fn missing_pi_firmware_names_the_package() {
    require_root();
    let p = project();
    // Point the hardware at a firmware file the fake rootfs lacks; the
    // rootfs key does not change (only packages shape it).
    p.write("hardware/pi.toml", &PI.replace("fixup4.dat", "start4x.elf"));
    p.fails(&build_args("profiles/pi.toml", &[])).stderr_has(&[
        "build step `boot-partition` failed",
        "start4x.elf",
        "raspi-firmware",
    ]);
    assert!(!p.path("out/pi.img").exists());
}

//! profiles/base.toml built for real (mmdebstrap from Debian's mirror),
//! checked with outside tools, and booted in QEMU to the agent's line.

use std::time::Duration;

use nodeforge::boot::{self, VmOptions};
use nodeforge::disk::gpt_table;
use qemu_tests::{build_profile, extract, run_check, vm_slot};

#[test]
fn base_image_passes_sgdisk_fsck_vfat_and_e2fsck() {
    let built = build_profile("profiles/base.toml");
    let (ok, text) = run_check("sgdisk", &["-v"], &built.image);
    assert!(
        ok && text.contains("No problems found"),
        "sgdisk -v:\n{text}"
    );

    let parts = gpt_table::read(&built.image).unwrap();
    assert_eq!(parts.len(), 2, "{parts:?}");
    let dir = tempfile::tempdir().unwrap();
    let esp = dir.path().join("esp.vfat");
    extract(&built.image, parts[0].offset, parts[0].size, &esp).unwrap();
    let (ok, text) = run_check("fsck.vfat", &["-n"], &esp);
    assert!(ok, "fsck.vfat -n:\n{text}");
    assert!(text.contains("files"), "fsck.vfat said:\n{text}");

    let root = dir.path().join("root.ext4");
    extract(&built.image, parts[1].offset, parts[1].size, &root).unwrap();
    let (ok, text) = run_check("e2fsck", &["-fn"], &root);
    assert!(ok, "e2fsck -fn:\n{text}");

    qemu_tests::assert_manifest_lists(
        &built.manifest,
        &[
            "systemd",
            "openssh-server",
            "systemd-boot-efi",
            "linux-image-amd64",
        ],
    );
}

#[test]
fn base_image_boots_to_the_agent_ready_line() {
    let built = build_profile("profiles/base.toml");
    let _slot = vm_slot();
    let (accel, took) = boot::boot(
        &VmOptions::new(&built.image),
        nodeforge_firstboot::READY_MARKER,
        Duration::from_secs(300),
    )
    .unwrap_or_else(|e| panic!("booting {}: {e:#}", built.image.display()));
    eprintln!(
        "base image reached {:?} after {:.1}s ({accel:?})",
        nodeforge_firstboot::READY_MARKER,
        took.as_secs_f64()
    );
}

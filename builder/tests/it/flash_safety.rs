//! The safety rules against fixture sysfs and mountinfo trees
//! (tests/fixtures/flash, made by make-fixtures.sh there).

use nodeforge::flash::device::{self, DevNum, ImageFacts, SafetyRefusal, TargetInfo};
use std::path::{Path, PathBuf};

const GIB: u64 = 1 << 30;

fn root(tree: &str) -> PathBuf {
    crate::support::fixture("flash").join(tree)
}

fn inspect(tree: &str, name: &str, major: u32, minor: u32) -> TargetInfo {
    device::inspect_block(
        &root(tree),
        &Path::new("/dev").join(name),
        DevNum { major, minor },
    )
    .unwrap_or_else(|e| panic!("inspecting {name}: {e:#}"))
}

fn image(size: u64) -> ImageFacts {
    ImageFacts {
        size,
        mapped_bytes: size / 4,
        file_id: None,
    }
}

fn refusal(info: &TargetInfo, force: bool) -> Option<SafetyRefusal> {
    device::check(info, &image(4 * GIB), force).err()
}

/// The refusal `info` gets even with --force; fails if it is accepted.
fn forced_refusal(info: &TargetInfo) -> SafetyRefusal {
    refusal(info, true).unwrap_or_else(|| panic!("{} was accepted", info.path.display()))
}

/// The message of the `Mounted` refusal `info` gets even with --force.
fn mounted_message(info: &TargetInfo) -> String {
    match forced_refusal(info) {
        r @ SafetyRefusal::Mounted { .. } => r.to_string(),
        other => panic!("expected Mounted, got {other:?}"),
    }
}

#[test]
fn removable_unmounted_big_enough_disk_is_accepted() {
    let info = inspect("machine", "sdd", 8, 48);
    assert_eq!(info.size, 62521344 * 512);
    assert!(info.removable && info.mounts.is_empty() && !info.holds_root);
    assert_eq!(info.model.as_deref(), Some("Kingston DataTraveler"));
    assert_eq!(refusal(&info, false), None);
    let shown = info.describe();
    assert!(
        shown.contains("Kingston DataTraveler")
            && shown.contains("29.8 GiB")
            && shown.contains("Removable: yes"),
        "{shown}"
    );
}

#[test]
fn mounted_partition_is_refused_even_with_force() {
    let info = inspect("machine", "sdb", 8, 16);
    assert_eq!(info.mounts.len(), 1);
    assert_eq!(info.mounts[0].mount_point, "/media/user/MY STICK");
    assert!(info
        .describe()
        .contains("Mounted:   sdb1 on /media/user/MY STICK"));
    let msg = mounted_message(&info);
    assert!(msg.contains("umount /media/user/MY STICK"), "{msg}");
}

#[test]
fn filesystem_mounted_through_device_mapper_counts_as_mounted() {
    let info = inspect("machine", "sde", 8, 64);
    let got: Vec<_> = info
        .mounts
        .iter()
        .map(|m| (m.device.as_str(), m.mount_point.as_str()))
        .collect();
    assert_eq!(got, vec![("dm-0", "/mnt/secret")]);
    let msg = mounted_message(&info);
    assert!(msg.contains("umount /mnt/secret"), "{msg}");
}

#[test]
fn active_swap_partition_counts_as_in_use() {
    let info = inspect("machine", "sdf", 8, 80);
    assert_eq!(info.mounts.len(), 1);
    let msg = mounted_message(&info);
    assert!(msg.contains("/dev/sdf2"), "{msg}");
}

#[test]
fn root_disk_is_refused_even_with_force() {
    let info = inspect("machine", "sda", 8, 0);
    assert!(info.holds_root);
    assert_eq!(info.mounts.len(), 2, "/ and /boot/efi");
    let r = forced_refusal(&info);
    assert!(matches!(r, SafetyRefusal::SystemDisk { .. }), "{r:?}");
    // Root on btrfs shows up as 0:NN; the mount source still names sda2.
    let info = inspect("btrfs-root", "sda", 8, 0);
    assert!(info.holds_root);
    assert!(matches!(
        forced_refusal(&info),
        SafetyRefusal::SystemDisk { .. }
    ));
}

#[test]
fn too_small_disk_is_refused() {
    let info = inspect("machine", "sdc", 8, 32);
    match forced_refusal(&info) {
        r @ SafetyRefusal::TooSmall { .. } => {
            let msg = r.to_string();
            assert!(
                msg.contains("954.0 MiB") && msg.contains("4.0 GiB"),
                "{msg}"
            );
        }
        other => panic!("expected TooSmall, got {other:?}"),
    }
    // The same disk takes an image that fits.
    assert_eq!(device::check(&info, &image(900 << 20), false), Ok(()));
}

#[test]
fn non_removable_disk_needs_force() {
    let info = inspect("machine", "nvme0n1", 259, 0);
    assert!(!info.removable && info.mounts.is_empty());
    match refusal(&info, false) {
        Some(r @ SafetyRefusal::NotRemovable { .. }) => {
            assert!(r.to_string().contains("--force") && r.to_string().contains("WD Blue SN570"))
        }
        other => panic!("expected NotRemovable, got {other:?}"),
    }
    assert_eq!(refusal(&info, true), None);
    assert!(info.describe().contains("Removable: NO"));
}

#[test]
fn partition_and_read_only_card_are_refused() {
    let info = inspect("machine", "sdb1", 8, 17);
    assert_eq!(info.partition_of.as_deref(), Some("sdb"));
    assert!(
        matches!(forced_refusal(&info), SafetyRefusal::Partition { ref disk, .. } if disk == "sdb")
    );
    let info = inspect("machine", "mmcblk0", 179, 0);
    assert_eq!(info.model.as_deref(), Some("SD32G"));
    assert!(matches!(
        forced_refusal(&info),
        SafetyRefusal::ReadOnly { .. }
    ));
}

#[test]
fn unknown_device_number_is_an_error_naming_it() {
    let err = device::inspect_block(
        &root("machine"),
        Path::new("/dev/sdz"),
        DevNum {
            major: 8,
            minor: 240,
        },
    )
    .unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("8:240") && msg.contains("/dev/sdz"), "{msg}");
}

#[test]
fn sd_card_in_a_built_in_slot_counts_as_removable() {
    let info = inspect("machine", "mmcblk1", 179, 8);
    assert!(info.removable);
    assert_eq!(refusal(&info, false), None);
}

#[test]
fn file_target_needs_room_for_the_mapped_data() {
    let dir = tempfile::tempdir().unwrap();
    let info = device::inspect(&root("machine"), &dir.path().join("new.img")).unwrap();
    let room = info.room.expect("files report free space");
    let fits = ImageFacts {
        size: 64 * GIB,
        mapped_bytes: room / 2,
        file_id: None,
    };
    assert_eq!(
        device::check(&info, &fits, false),
        Ok(()),
        "a sparse 64 GiB image with little data fits"
    );
    let too_big = ImageFacts {
        size: 64 * GIB,
        mapped_bytes: room + 1,
        file_id: None,
    };
    assert!(matches!(
        device::check(&info, &too_big, false),
        Err(SafetyRefusal::TooSmall { .. })
    ));
}

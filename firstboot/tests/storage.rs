//! The storage step against a fake machine with fixture /sys and /dev
//! trees: a blank disk is formatted exactly once (even across kills), a
//! labelled one is only mounted, a disk holding data is refused by name
//! and left byte-for-byte alone, and the root disk is never considered.

mod common;

use std::fs;

use common::*;
use nodeforge_firstboot::agent::RunError;
use nodeforge_firstboot::status::{RunState, StepState};

const MEDIA_RULE: &str = r#"
[[storage]]
label = "media"
filesystem = "ext4"
mount = "/srv/media"
options = ["noatime"]
[storage.match]
serial = "media-*"
"#;

fn machine_with(rules: &str) -> Machine {
    let m = Machine::new();
    m.write("/etc/nodeforge/firstboot.toml", &format!("{BAKED}{rules}"));
    m
}

/// Boots to the end and checks that `taken` was partitioned, not `left`.
fn boots_formatting(m: &Machine, taken: &str, left: &str) {
    m.boot().unwrap().unwrap();
    assert_eq!(m.calls_starting(&format!("sfdisk --quiet {taken}")), 1);
    assert_eq!(m.calls_starting(&format!("sfdisk --quiet {left}")), 0);
}

/// Boots to the storage step's refusal (a person must act; the other
/// steps still run) and returns the error.
fn boot_refused_at_storage(m: &Machine) -> RunError {
    let err = m.boot().unwrap().unwrap_err();
    assert!(
        matches!(
            &err,
            RunError::Refused {
                step: "storage",
                ..
            }
        ),
        "{err}"
    );
    err
}

fn bytes(m: &Machine, abs: &str) -> Vec<u8> {
    fs::read(m.path(abs)).unwrap()
}

#[test]
fn blank_disk_is_formatted_once_and_mounted_by_label() {
    let m = machine_with(MEDIA_RULE);
    m.add_disk("vdb", 64, "media-01");
    let st = m.boot().unwrap().unwrap();
    assert_eq!(st.state, RunState::Complete);
    let s = m.step("storage");
    assert_eq!(s.state, StepState::Done, "{s:?}");
    let detail = s.detail.unwrap();
    assert!(detail.contains("formatted blank /dev/vdb"), "{detail}");
    assert!(
        detail.contains("mounted /dev/vdb1 at /srv/media"),
        "{detail}"
    );
    assert_eq!(m.calls_starting("sfdisk --quiet /dev/vdb"), 1);
    assert_eq!(m.calls_starting("mkfs.ext4 -q -L media /dev/vdb1"), 1);
    assert_eq!(
        m.read("/etc/fstab")
            .lines()
            .filter(|l| l.starts_with("LABEL=media "))
            .collect::<Vec<_>>(),
        ["LABEL=media /srv/media ext4 nofail,noatime 0 2"]
    );
    assert!(m.path("/srv/media").is_dir());
    // The root disk was never touched.
    assert_eq!(m.calls_starting("sfdisk --quiet /dev/vda"), 0);

    // Later boots: the journal says done; nothing is run again.
    m.boot().unwrap().unwrap();
    assert_eq!(m.world.borrow().data_partitionings, 1);
    assert_eq!(m.world.borrow().mkfs, 1);
}

#[test]
fn interrupted_formatting_finishes_without_partitioning_again() {
    for kill in [
        Kill::AfterCmd("sfdisk --quiet /dev/vdb"),
        Kill::AfterCmd("mkfs.ext4"),
        Kill::AfterCmd("mount /srv/media"),
    ] {
        let m = machine_with(MEDIA_RULE);
        m.add_disk("vdb", 64, "media-01");
        assert!(m.boot_with_kill(kill.clone()), "{kill:?} did not fire");
        let st = m.boot().unwrap().unwrap();
        assert_eq!(st.state, RunState::Complete, "after {kill:?}");
        let w = m.world.borrow();
        assert_eq!(w.data_partitionings, 1, "after {kill:?}");
        assert_eq!(w.mkfs, 1, "after {kill:?}");
        assert_eq!(
            m.read("/etc/fstab").matches("LABEL=media").count(),
            1,
            "after {kill:?}"
        );
        assert_eq!(
            m.read("/proc/self/mountinfo").matches("/srv/media").count(),
            1
        );
    }
}

#[test]
fn mount_racing_systemd_is_fine_but_a_failed_mount_is_not() {
    let m = machine_with(MEDIA_RULE);
    m.add_disk("vdb", 64, "media-01");
    m.world.borrow_mut().mount_race = true;
    m.boot().unwrap().unwrap();
    let s = m.step("storage");
    assert!(
        s.detail
            .as_deref()
            .unwrap()
            .contains("mounted at /srv/media by systemd"),
        "{s:?}"
    );

    // A mount that really fails is an ordinary, retried failure.
    let m = machine_with(MEDIA_RULE);
    m.add_disk("vdb", 64, "media-01");
    m.write("/etc/fstab", "# empty\n");
    m.world.borrow_mut().missing.push("mount");
    let err = m.boot().unwrap().unwrap_err();
    assert!(
        matches!(
            err,
            RunError::Step {
                step: "storage",
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(err.exit_code(), 1);
}

#[test]
fn labelled_disk_is_mounted_not_formatted() {
    let m = machine_with(MEDIA_RULE);
    m.add_disk("vdb", 64, "media-01");
    m.partition_disk("vdb");
    m.put_ext4("vdb1", "media");
    let before = bytes(&m, "/dev/vdb");
    m.boot().unwrap().unwrap();
    let s = m.step("storage");
    assert_eq!(s.state, StepState::Done, "{s:?}");
    assert!(
        s.detail
            .as_deref()
            .unwrap()
            .contains("already ext4 labelled media"),
        "{s:?}"
    );
    assert_eq!(m.calls_starting("sfdisk --quiet"), 0);
    assert_eq!(m.calls_starting("mkfs"), 0);
    assert_eq!(m.calls_starting("mount /srv/media"), 1);
    assert_eq!(bytes(&m, "/dev/vdb"), before);
}

#[test]
fn disk_holding_data_is_refused_by_name_and_the_rest_runs() {
    let m = machine_with(&format!(
        "{MEDIA_RULE}\n[[storage]]\nlabel = \"backup\"\nmount = \"/srv/backup\"\n[storage.match]\nby_id = \"virtio-old-*\"\n"
    ));
    m.add_disk("vdb", 64, "media-01");
    m.add_disk("vdc", 32, "old-data");
    m.partition_disk("vdc");
    m.put_ext4("vdc1", "olddata");
    let before = (bytes(&m, "/dev/vdc"), bytes(&m, "/dev/vdc1"));

    let err = boot_refused_at_storage(&m);
    assert_eq!(err.exit_code(), 3, "an operator must act: no retry loop");
    let st = m.status();
    assert_eq!(st.state, RunState::Failed);
    let s = m.step("storage");
    assert_eq!(s.state, StepState::Failed);
    assert_eq!(s.reason.as_deref(), Some("disk-holds-data"));
    let e = s.error.unwrap();
    for want in [
        "storage `backup`",
        "/dev/vdc",
        "ext4 labelled \"olddata\"",
        "never formatted",
    ] {
        assert!(e.contains(want), "{want:?} not in {e}");
    }
    // The blank disk of the other rule was still set up.
    assert!(e.contains("formatted blank /dev/vdb"), "{e}");
    assert_eq!(m.calls_starting("sfdisk --quiet /dev/vdc"), 0);
    assert_eq!(m.calls_starting("mkfs.ext4 -q -L backup"), 0);
    assert_eq!((bytes(&m, "/dev/vdc"), bytes(&m, "/dev/vdc1")), before);
    assert!(!m.read("/etc/fstab").contains("backup"));
    // Steps that do not need the disks ran; the stacks wait.
    assert_eq!(m.step("tailscale").state, StepState::Done);
    assert_eq!(m.step("scrub-secrets").state, StepState::Done);
    let c = m.step("containers");
    assert_eq!(c.state, StepState::Pending);
    assert_eq!(c.detail.as_deref(), Some("waits for step storage"));
    assert!(
        m.summaries
            .borrow()
            .iter()
            .any(|l| l.contains("FAILED at storage (disk-holds-data)") && l.contains("/dev/vdc")),
        "{:?}",
        m.summaries.borrow()
    );

    // Next boot (say the operator did nothing): refused again, nothing
    // formatted twice, tailnet not joined twice.
    boot_refused_at_storage(&m);
    assert_eq!(m.world.borrow().mkfs, 1);
    assert_eq!(m.world.borrow().joins, 1);
    assert_eq!((bytes(&m, "/dev/vdc"), bytes(&m, "/dev/vdc1")), before);
}

#[test]
fn filesystem_behind_a_wiped_table_is_data() {
    let m = machine_with(MEDIA_RULE);
    m.add_disk("vdb", 64, "media-01");
    // A partition's ext4 at 1 MiB; the table that pointed at it is gone.
    patch(&m.path("/dev/vdb"), (1 << 20) + 1080, &[0x53, 0xEF]);
    patch(&m.path("/dev/vdb"), (1 << 20) + 1144, b"photos");
    let err = boot_refused_at_storage(&m);
    assert!(err.to_string().contains("holds data"), "{err}");
    let s = m.step("storage");
    assert_eq!(s.reason.as_deref(), Some("disk-holds-data"));
    assert!(
        s.error
            .unwrap()
            .contains("ext4 labelled \"photos\" at byte 1048576"),
        "{:?}",
        m.step("storage")
    );
    assert_eq!(m.calls_starting("sfdisk --quiet"), 0);
}

#[test]
fn root_disk_is_never_considered() {
    // The root disk (8 GiB, vda) is the largest and matches; with no other
    // disk the rule finds nothing.
    let rule =
        "\n[[storage]]\nlabel = \"data\"\nmount = \"/srv/data\"\n[storage.match]\nlargest = true\n";
    let m = machine_with(rule);
    boot_refused_at_storage(&m);
    let s = m.step("storage");
    assert_eq!(s.reason.as_deref(), Some("no-matching-disk"), "{s:?}");
    assert!(s.error.unwrap().contains("disks seen: /dev/vda (8.0 GiB)"));
    assert_eq!(m.calls_starting("sfdisk --quiet"), 0);

    // A small blank disk beside it is taken, though vda is larger.
    let m = machine_with(rule);
    m.add_disk("vdb", 16, "small");
    boots_formatting(&m, "/dev/vdb", "/dev/vda");
}

#[test]
fn two_matching_disks_without_a_tie_breaker_are_refused() {
    let rule = "\n[[storage]]\nlabel = \"data\"\nmount = \"/srv/data\"\n[storage.match]\nmin_bytes = 1048576\n";
    let m = machine_with(rule);
    m.add_disk("vdb", 16, "a");
    m.add_disk("vdc", 32, "b");
    boot_refused_at_storage(&m);
    let s = m.step("storage");
    assert_eq!(s.reason.as_deref(), Some("storage-ambiguous"));
    assert!(s.error.unwrap().contains("/dev/vdb, /dev/vdc"));
    assert_eq!(
        m.calls_starting("sfdisk"),
        m.calls_starting("sfdisk --json")
            + m.calls_starting("sfdisk --relocate")
            + m.calls_starting("sfdisk --no-reread")
    );

    // With `largest`, the larger one.
    let m =
        machine_with(&rule.replace("min_bytes = 1048576", "min_bytes = 1048576\nlargest = true"));
    m.add_disk("vdb", 16, "a");
    m.add_disk("vdc", 32, "b");
    boots_formatting(&m, "/dev/vdc", "/dev/vdb");
}

#[test]
fn machine_without_rules_skips_storage() {
    let m = Machine::new();
    m.boot().unwrap().unwrap();
    let s = m.step("storage");
    assert_eq!(s.state, StepState::Skipped);
    assert_eq!(
        s.detail.as_deref(),
        Some("the profile has no storage rules")
    );
}

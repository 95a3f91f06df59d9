//! The switch to a written slot and the assessment of its boot, on a fake
//! node: its ESP, its /etc, the new slot as a directory (mount is recorded,
//! not run), and the agent's status for this boot.

use std::cell::RefCell;
use std::fs;
use std::path::Path;

use nodeforge_firstboot::runner::{Cmd, CmdOutput, CommandRunner, SpawnError};
use nodeforge_firstboot::slots::{Entry, Slot, SlotsConfig};
use nodeforge_firstboot::update::assess::{self, Assessment};
use nodeforge_firstboot::update::switch;

/// Records commands and answers every one with success.
#[derive(Default)]
struct Recorder(RefCell<Vec<String>>);

impl CommandRunner for Recorder {
    fn output(&self, cmd: &Cmd) -> Result<CmdOutput, SpawnError> {
        self.0.borrow_mut().push(cmd.line());
        Ok(CmdOutput {
            code: Some(0),
            stdout: String::new(),
            stderr: String::new(),
            timed_out: false,
        })
    }
}

fn slots() -> SlotsConfig {
    SlotsConfig {
        disk_guid: "d0".into(),
        a: "aaaa-1".into(),
        b: "bbbb-2".into(),
        state: "ssss-3".into(),
        tries: nodeforge_firstboot::slots::TRIES,
    }
}

fn put(root: &Path, abs: &str, text: &str) {
    let p = root.join(abs.trim_start_matches('/'));
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, text).unwrap();
}

fn read(root: &Path, abs: &str) -> String {
    fs::read_to_string(root.join(abs.trim_start_matches('/')))
        .unwrap_or_else(|e| panic!("{abs}: {e}"))
}

/// A node running slot A as the image leaves it, after first boot.
fn node() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    let r = d.path();
    let a = Entry {
        slot: Slot::A,
        version: 1,
        title: "nodeforge web (web), slot a".into(),
        options: "root=PARTUUID=aaaa-1 rw rootflags=errors=remount-ro panic=10 console=ttyS0"
            .into(),
    };
    put(r, "/boot/efi/loader/entries/nodeforge-a.conf", &a.text());
    put(
        r,
        "/proc/cmdline",
        "root=PARTUUID=aaaa-1 rw console=ttyS0\n",
    );
    put(r, "/etc/hostname", "web-7\n");
    put(
        r,
        "/etc/passwd",
        "root:x:0:0:root:/root:/bin/bash\nadmin:x:1000:1000::/home/admin:/bin/bash\n",
    );
    put(r, "/etc/machine-id", "0123456789abcdef0123456789abcdef\n");
    put(r, "/etc/ssh/ssh_host_ed25519_key", "PRIVATE\n");
    put(
        r,
        "/etc/ssh/ssh_host_ed25519_key.pub",
        "ssh-ed25519 AAAA web-7\n",
    );
    put(
        r,
        "/home/admin/.ssh/authorized_keys",
        "ssh-ed25519 BBBB ops\n",
    );
    // The new slot, "mounted" where switch mounts it.
    put(r, "/run/nodeforge/slot/boot/vmlinuz-6.12.9", "old kernel");
    put(r, "/run/nodeforge/slot/boot/vmlinuz-6.12.10", "new kernel");
    put(
        r,
        "/run/nodeforge/slot/boot/initrd.img-6.12.10",
        "new initrd",
    );
    put(r, "/run/nodeforge/slot/etc/hostname", "web\n");
    d
}

/// Regression: the admin's keys were looked for under /home/<user>
/// whatever the passwd entry said, so a home elsewhere lost them.
#[test]
fn the_admins_keys_are_carried_from_the_home_passwd_gives() {
    let d = node();
    let r = d.path();
    put(
        r,
        "/etc/passwd",
        "root:x:0:0:root:/root:/bin/bash\nops:x:1001:1001::/srv/ops:/bin/bash\n",
    );
    put(r, "/srv/ops/.ssh/authorized_keys", "ssh-ed25519 CCCC ops\n");
    let slot = r.join("run/nodeforge/slot");
    switch::carry_over(r, &slot, Some("ops")).unwrap();
    assert_eq!(
        read(r, "/run/nodeforge/slot/srv/ops/.ssh/authorized_keys"),
        "ssh-ed25519 CCCC ops\n"
    );
    assert!(!slot.join("home/ops").exists());
}

fn entry_names(r: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(r.join("boot/efi/loader/entries"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn switch_carries_the_nodes_files_installs_the_kernel_and_counts_three_tries() {
    let d = node();
    let r = d.path();
    let runner = Recorder::default();
    let p = switch::switch(r, &slots(), Slot::B, Some("admin"), "v2key", &runner).unwrap();
    assert_eq!(
        (p.slot, p.generation, p.version.as_str()),
        (Slot::B, 2, "v2key")
    );
    assert_eq!(
        *runner.0.borrow(),
        [
            "mount -t ext4 /dev/disk/by-partuuid/bbbb-2 /run/nodeforge/slot",
            "umount /run/nodeforge/slot"
        ]
    );
    let slot = "/run/nodeforge/slot";
    for f in [
        "/etc/hostname",
        "/etc/machine-id",
        "/etc/ssh/ssh_host_ed25519_key",
        "/home/admin/.ssh/authorized_keys",
    ] {
        assert_eq!(read(r, &format!("{slot}{f}")), read(r, f), "{f}");
    }
    assert_eq!(read(r, "/boot/efi/nodeforge/b/vmlinuz"), "new kernel");
    assert_eq!(read(r, "/boot/efi/nodeforge/b/initrd.img"), "new initrd");
    assert_eq!(read(r, "/boot/efi/nodeforge/b/version"), "v2key\n");
    assert_eq!(entry_names(r), ["nodeforge-a.conf", "nodeforge-b+3.conf"]);
    let b = read(r, "/boot/efi/loader/entries/nodeforge-b+3.conf");
    assert!(b.contains("version  2\n"), "{b}");
    assert!(b.contains("sort-key nodeforge\n"), "{b}");
    assert!(b.contains("title    nodeforge web (web), slot b\n"), "{b}");
    assert!(
        b.contains(
            "options  root=PARTUUID=bbbb-2 rw rootflags=errors=remount-ro panic=10 console=ttyS0\n"
        ),
        "{b}"
    );
    assert!(b.contains("linux    /nodeforge/b/vmlinuz\n"), "{b}");
}

#[test]
fn a_slot_about_to_be_written_loses_its_entry_version_and_pending_record_first() {
    let d = node();
    let r = d.path();
    switch::switch(r, &slots(), Slot::B, None, "v2key", &Recorder::default()).unwrap();
    assert!(switch::on_trial(r, Slot::B).unwrap());
    assert!(!switch::on_trial(r, Slot::A).unwrap());
    switch::retire(r, Slot::B).unwrap();
    assert_eq!(entry_names(r), ["nodeforge-a.conf"]);
    assert!(!r.join("boot/efi/nodeforge/b/version").exists());
    assert!(!switch::pending_path(r).exists());
}

#[test]
fn a_healthy_trial_is_blessed_and_an_unhealthy_one_spends_its_tries_at_once() {
    let d = node();
    let r = d.path();
    switch::switch(r, &slots(), Slot::B, None, "v2key", &Recorder::default()).unwrap();
    // Booted into B; systemd-boot counted the try.
    let entries = r.join("boot/efi/loader/entries");
    fs::rename(
        entries.join("nodeforge-b+3.conf"),
        entries.join("nodeforge-b+2-1.conf"),
    )
    .unwrap();
    put(r, "/proc/cmdline", "root=PARTUUID=bbbb-2 rw\n");

    // Puts B's spent entry back on its first try, for the next case.
    let try_b_again = || {
        fs::rename(
            entries.join("nodeforge-b+0-3.conf"),
            entries.join("nodeforge-b+2-1.conf"),
        )
        .unwrap()
    };
    let mut said = Vec::new();
    let e = assess::assess(r, &slots(), &mut |l| said.push(l.to_owned())).unwrap_err();
    assert!(format!("{e:#}").contains("no status this boot"), "{e:#}");
    // Unhealthy: the tries left are spent at once (1 done + 2 left), so
    // the reboot that follows is slot A's, not another try of B's.
    assert_eq!(entry_names(r), ["nodeforge-a.conf", "nodeforge-b+0-3.conf"]);
    try_b_again();
    put(r, "/run/nodeforge/status.json", &status("failed"));
    let e = assess::assess(r, &slots(), &mut |l| said.push(l.to_owned())).unwrap_err();
    assert!(format!("{e:#}").contains("slot b is on trial"), "{e:#}");
    assert!(format!("{e:#}").contains("its tries are spent"), "{e:#}");
    assert_eq!(entry_names(r), ["nodeforge-a.conf", "nodeforge-b+0-3.conf"]);
    try_b_again();

    put(r, "/run/nodeforge/status.json", &status("complete"));
    let a = assess::assess(r, &slots(), &mut |l| said.push(l.to_owned())).unwrap();
    assert_eq!(
        a,
        Assessment::Blessed {
            slot: 'b',
            generation: Some(2)
        }
    );
    assert_eq!(entry_names(r), ["nodeforge-a.conf", "nodeforge-b.conf"]);
    assert!(!switch::pending_path(r).exists());
    // Blessed: later boots are not on trial.
    let a = assess::assess(r, &slots(), &mut |l| said.push(l.to_owned())).unwrap();
    assert_eq!(a, Assessment::NotOnTrial);
}

#[test]
fn a_trial_out_of_tries_is_recorded_as_failed_and_its_entry_removed() {
    let d = node();
    let r = d.path();
    switch::switch(r, &slots(), Slot::B, None, "v3key", &Recorder::default()).unwrap();
    let entries = r.join("boot/efi/loader/entries");
    fs::rename(
        entries.join("nodeforge-b+3.conf"),
        entries.join("nodeforge-b+0-3.conf"),
    )
    .unwrap();
    // systemd-boot sorted B last and booted A (its command line unchanged).
    let mut said = Vec::new();
    let a = assess::assess(r, &slots(), &mut |l| said.push(l.to_owned())).unwrap();
    assert_eq!(a, Assessment::NotOnTrial);
    assert_eq!(entry_names(r), ["nodeforge-a.conf"]);
    assert!(!r.join("boot/efi/nodeforge/b").exists());
    assert_eq!(
        nodeforge_firstboot::update::failed_versions(&r.join("var/lib/nodeforge/update")),
        ["v3key"]
    );
    assert!(
        said[0].contains("did not come up healthy in 3 tries"),
        "{said:?}"
    );
}

fn status(state: &str) -> String {
    use nodeforge_firstboot::status::{RunState, Status};
    let mut s = Status::new("web", "web", &[]);
    s.state = match state {
        "complete" => RunState::Complete,
        _ => RunState::Failed,
    };
    s.to_json()
}

//! After the inactive slot is written: carry the node's own files into it,
//! put its kernel on the ESP and give it a boot entry with three tries
//! (systemd-boot's boot counting). `assess` (next boot) blesses it or,
//! once its tries are spent and the old slot booted again, records it as
//! failed.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::fsutil::{atomic_write, under};
use crate::runner::{Cmd, CommandRunner};
use crate::slots::{self, Entry, Slot, SlotsConfig};

/// The ESP as the image mounts it.
pub const ESP_MOUNT: &str = "/boot/efi";
/// Where the new slot is mounted while its files are carried over.
const SLOT_MOUNT: &str = "/run/nodeforge/slot";

/// What a slot carries in /etc that belongs to the node, not the image:
/// the seed's results and the node's identity. Copied from the running
/// slot into the new one (the seed that made them is gone by then).
pub const CARRIED: &[&str] = &[
    "/etc/hostname",
    "/etc/hosts",
    "/etc/machine-id",
    "/etc/ssh/ssh_host_ed25519_key",
    "/etc/ssh/ssh_host_ed25519_key.pub",
    "/etc/ssh/ssh_host_rsa_key",
    "/etc/ssh/ssh_host_rsa_key.pub",
    "/etc/ssh/ssh_host_ecdsa_key",
    "/etc/ssh/ssh_host_ecdsa_key.pub",
];

/// The slot written and not yet blessed, in the updater's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    pub slot: Slot,
    pub version: String,
    pub generation: u64,
}

pub fn pending_path(root: &Path) -> PathBuf {
    under(root, super::STATE_DIR).join("pending.json")
}

/// Before `target` is written: its boot entries and version go, and a
/// pending record of it, so a slot left half written (power lost, a
/// failed write) is never booted nor taken for a version it no longer
/// holds.
pub fn retire(root: &Path, target: Slot) -> Result<()> {
    let esp = under(root, ESP_MOUNT);
    for e in entries(&esp)? {
        if e.slot == target {
            let p = esp.join("loader/entries").join(&e.name);
            fs::remove_file(&p).with_context(|| format!("removing {}", p.display()))?;
        }
    }
    crate::fsutil::sync_dir(&esp.join("loader/entries"))?;
    let version = esp.join(slots::version_file(target));
    match fs::remove_file(&version) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing {}", version.display())),
    }
    let pending = pending_path(root);
    let p: Option<Pending> = fs::read(&pending)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    if p.is_some_and(|p| p.slot == target) {
        fs::remove_file(&pending).with_context(|| format!("removing {}", pending.display()))?;
    }
    Ok(())
}

/// Whether `slot`'s entry still counts tries: it is on trial.
pub fn on_trial(root: &Path, slot: Slot) -> Result<bool> {
    Ok(entries(&under(root, ESP_MOUNT))?
        .iter()
        .any(|e| e.slot == slot && e.counter.is_some()))
}

/// Prepares `target` (already written) to boot next.
pub fn switch(
    root: &Path,
    slots: &SlotsConfig,
    target: Slot,
    admin_user: Option<&str>,
    version: &str,
    runner: &dyn CommandRunner,
) -> Result<Pending> {
    let mnt = under(root, SLOT_MOUNT);
    fs::create_dir_all(&mnt).with_context(|| format!("creating {}", mnt.display()))?;
    let dev = format!("/dev/disk/by-partuuid/{}", slots.partuuid(target));
    runner
        .run(&Cmd::new("mount").args(["-t", "ext4", &dev, SLOT_MOUNT]))
        .with_context(|| format!("mounting the new slot {dev}"))?;
    let esp = under(root, ESP_MOUNT);
    let inside = (|| {
        carry_over(root, &mnt, admin_user)?;
        install_kernel(&mnt, &esp, target)?;
        atomic_write(
            &esp.join(slots::version_file(target)),
            format!("{version}\n").as_bytes(),
            0o644,
        )
    })();
    let unmounted = runner.run(&Cmd::new("umount").arg(SLOT_MOUNT));
    inside?;
    unmounted.with_context(|| format!("unmounting {SLOT_MOUNT}"))?;
    let generation = write_entry(&under(root, ESP_MOUNT), slots, target)?;
    let pending = Pending {
        slot: target,
        version: version.to_owned(),
        generation,
    };
    let path = pending_path(root);
    atomic_write(
        &path,
        &serde_json::to_vec_pretty(&pending).expect("serialises"),
        0o644,
    )?;
    Ok(pending)
}

/// Copies [`CARRIED`] and the admin's authorized keys (under the home
/// the running slot's passwd gives) from `root` into the slot mounted at
/// `slot`, keeping mode and owner.
pub fn carry_over(root: &Path, slot: &Path, admin_user: Option<&str>) -> Result<()> {
    let mut files: Vec<String> = CARRIED.iter().map(|s| s.to_string()).collect();
    if let Some(user) = admin_user {
        // Not in passwd: no keys of theirs to carry.
        if let Ok(pw) = crate::steps::system::lookup_user(root, user) {
            files.push(format!(
                "{}/.ssh/authorized_keys",
                pw.home.trim_end_matches('/')
            ));
        }
    }
    for abs in &files {
        let from = under(root, abs);
        let meta = match fs::metadata(&from) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("reading {}", from.display())),
        };
        let bytes = fs::read(&from).with_context(|| format!("reading {}", from.display()))?;
        let to = under(slot, abs);
        let dir = to.parent().expect("an absolute path has a parent");
        if !dir.is_dir() {
            // ~/.ssh of the admin: made as the running slot has it.
            let src_dir = from.parent().expect("has a parent");
            fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            let dmeta = fs::metadata(src_dir)?;
            fs::set_permissions(dir, fs::Permissions::from_mode(dmeta.mode() & 0o7777))?;
            chown(dir, dmeta.uid(), dmeta.gid())?;
        }
        atomic_write(&to, &bytes, meta.mode() & 0o7777)?;
        chown(&to, meta.uid(), meta.gid())?;
    }
    Ok(())
}

fn chown(path: &Path, uid: u32, gid: u32) -> Result<()> {
    // Only root can give files away; tests run unprivileged, where every
    // file is theirs anyway.
    match std::os::unix::fs::chown(path, Some(uid), Some(gid)) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => Ok(()),
        Err(e) => Err(e).with_context(|| format!("setting the owner of {}", path.display())),
    }
}

/// The new slot's newest kernel and its initrd, onto the ESP.
fn install_kernel(slot: &Path, esp: &Path, target: Slot) -> Result<()> {
    let boot = slot.join("boot");
    let newest =
        slots::newest_kernel(&boot).with_context(|| format!("reading {}", boot.display()))?;
    let Some(version) = newest else {
        bail!("the new slot has no kernel in /boot: the release is not a bootable root");
    };
    let dir = esp.join(slots::esp_dir(target));
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    for (from, to) in [
        (format!("vmlinuz-{version}"), "vmlinuz"),
        (format!("initrd.img-{version}"), "initrd.img"),
    ] {
        let src = boot.join(&from);
        let bytes = fs::read(&src).with_context(|| format!("reading {}", src.display()))?;
        atomic_write(&dir.join(to), &bytes, 0o644)?;
    }
    Ok(())
}

/// A slot's entry as found on the ESP.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct FoundEntry {
    pub name: String,
    pub slot: Slot,
    /// Tries left and done, while the entry counts them.
    pub counter: Option<(u32, u32)>,
    pub text: String,
}

/// The slots' entries on the ESP, by file name.
pub fn entries(esp: &Path) -> Result<Vec<FoundEntry>> {
    let dir = esp.join("loader/entries");
    let mut found = Vec::new();
    for e in fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
        let e = e.with_context(|| format!("reading {}", dir.display()))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some((slot, counter)) = slots::parse_entry_file_name(&name) {
            let text = fs::read_to_string(e.path())
                .with_context(|| format!("reading {}", e.path().display()))?;
            found.push(FoundEntry {
                name,
                slot,
                counter,
                text,
            });
        }
    }
    found.sort();
    Ok(found)
}

/// Writes `target`'s entry with the configured tries ([`SlotsConfig::tries`]), one generation
/// above every other entry, its options those of the other slot's entry
/// with the root swapped; removes `target`'s older entries.
pub fn write_entry(esp: &Path, cfg: &SlotsConfig, target: Slot) -> Result<u64> {
    let found = entries(esp)?;
    let source = target.other();
    let Some(FoundEntry { text, .. }) = found.iter().find(|e| e.slot == source) else {
        bail!(
            "{} has no boot entry of slot {}: is this node booted from a nodeforge A/B image?",
            esp.join("loader/entries").display(),
            source.letter()
        );
    };
    let field = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key).map(|v| v.trim().to_owned()))
            .unwrap_or_default()
    };
    let (from, to) = (
        format!("root=PARTUUID={}", cfg.partuuid(source)),
        format!("root=PARTUUID={}", cfg.partuuid(target)),
    );
    let options = field("options");
    if !options.split_whitespace().any(|w| w == from) {
        bail!(
            "slot {}'s entry boots no `{from}`; its options are {options:?}",
            source.letter()
        );
    }
    let generation = found
        .iter()
        .filter_map(|e| slots::entry_version(&e.text))
        .max()
        .unwrap_or(0)
        + 1;
    for e in &found {
        if e.slot == target {
            let p = esp.join("loader/entries").join(&e.name);
            fs::remove_file(&p).with_context(|| format!("removing {}", p.display()))?;
        }
    }
    let entry = Entry {
        slot: target,
        version: generation,
        title: format!(
            "{}, slot {}",
            field("title").trim_end_matches(&format!(", slot {}", source.letter())),
            target.letter()
        ),
        options: options
            .split_whitespace()
            .map(|w| if w == from { to.as_str() } else { w })
            .collect::<Vec<_>>()
            .join(" "),
    };
    let path = esp
        .join("loader/entries")
        .join(slots::entry_file_name(target, Some((cfg.tries, 0))));
    atomic_write(&path, entry.text().as_bytes(), 0o644)?;
    Ok(generation)
}

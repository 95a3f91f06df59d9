//! What a flash target is (sysfs, mountinfo) and whether writing it is safe.
//!
//! Everything reads below a root path so tests run against fixture trees
//! (`<root>/sys/...`, `<root>/proc/self/mountinfo`, `<root>/proc/swaps`).

use anyhow::{bail, Context, Result};
use std::fmt;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// A block device number, `major:minor`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DevNum {
    pub major: u32,
    pub minor: u32,
}

impl DevNum {
    pub fn from_rdev(rdev: u64) -> DevNum {
        DevNum {
            major: libc::major(rdev),
            minor: libc::minor(rdev),
        }
    }

    fn parse(s: &str) -> Option<DevNum> {
        let (a, b) = s.trim().split_once(':')?;
        Some(DevNum {
            major: a.parse().ok()?,
            minor: b.parse().ok()?,
        })
    }
}

impl fmt::Display for DevNum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.major, self.minor)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TargetKind {
    BlockDevice,
    /// A regular file (existing or to be created): for tests and for writing
    /// into other images.
    RegularFile,
}

/// One filesystem or swap area in use from the target disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    /// The disk, partition or holder (dm, md) it comes from, e.g. `sdb1`.
    pub device: String,
    /// Where it is mounted, or `[swap]`.
    pub mount_point: String,
}

/// Everything the safety rules and the confirmation prompt need.
#[derive(Clone, Debug)]
pub struct TargetInfo {
    pub path: PathBuf,
    pub kind: TargetKind,
    /// Kernel name (`sdb`, `mmcblk0`) or the file's name.
    pub name: String,
    pub devnum: Option<DevNum>,
    /// Vendor and model, or what backs a loop device.
    pub model: Option<String>,
    /// Bytes; for a file its current length.
    pub size: u64,
    pub removable: bool,
    pub read_only: bool,
    /// Set when the target is a partition: the whole disk's name.
    pub partition_of: Option<String>,
    pub mounts: Vec<Mount>,
    pub holds_root: bool,
    /// For files: bytes the file may still grow by (free space + its own
    /// allocation).
    pub room: Option<u64>,
    /// (st_dev, st_ino) of an existing file, to catch flashing an image onto itself.
    pub file_id: Option<(u64, u64)>,
}

impl TargetInfo {
    /// The lines shown before asking for confirmation.
    pub fn describe(&self) -> String {
        let mut s = format!("Target:    {}", self.path.display());
        match self.kind {
            TargetKind::RegularFile => s.push_str(" (regular file)\n"),
            TargetKind::BlockDevice => {
                s.push_str(&format!(
                    " ({}, {})\n",
                    self.name,
                    self.devnum.map(|d| d.to_string()).unwrap_or_default()
                ));
                s.push_str(&format!(
                    "Model:     {}\n",
                    self.model.as_deref().unwrap_or("unknown")
                ));
            }
        }
        s.push_str(&format!("Size:      {}\n", human(self.size)));
        if self.kind == TargetKind::BlockDevice {
            s.push_str(&format!(
                "Removable: {}\n",
                if self.removable { "yes" } else { "NO" }
            ));
            if self.mounts.is_empty() {
                s.push_str("Mounted:   nothing\n");
            }
            for m in &self.mounts {
                s.push_str(&format!("Mounted:   {} on {}\n", m.device, m.mount_point));
            }
        }
        s
    }
}

/// Why a flash was refused; each message says what to do instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SafetyRefusal {
    #[error("{device} is a partition; give the whole disk (/dev/{disk}) instead")]
    Partition { device: String, disk: String },
    #[error("{device} holds the running system's root filesystem; pick another disk")]
    SystemDisk { device: String },
    #[error(
        "{device} is in use ({uses}); unmount it (e.g. `umount {first}`) or swapoff, then retry"
    )]
    Mounted {
        device: String,
        uses: String,
        first: String,
    },
    #[error("{device} is read-only (write-protect switch?); make it writable and retry")]
    ReadOnly { device: String },
    #[error("{device} has {have} but the image needs {need}; use a bigger card or stick")]
    TooSmall {
        device: String,
        need: String,
        have: String,
    },
    #[error("{device} ({model}) is not a removable disk; pass --force if you really mean to overwrite it")]
    NotRemovable { device: String, model: String },
    #[error("{device} is the image itself; write to another file or device")]
    SameAsImage { device: String },
    #[error("{device} does not exist; is the card plugged in? `lsblk` lists the disks")]
    NoSuchDevice { device: String },
}

/// What the image needs from its target.
#[derive(Clone, Copy, Debug)]
pub struct ImageFacts {
    pub size: u64,
    pub mapped_bytes: u64,
    /// (st_dev, st_ino) of the image file.
    pub file_id: Option<(u64, u64)>,
}

/// Applies the rules in order of how bad the mistake would be. `force` only
/// lifts the removable-disk rule.
pub fn check(info: &TargetInfo, image: &ImageFacts, force: bool) -> Result<(), SafetyRefusal> {
    let device = info.path.display().to_string();
    if let (Some(a), Some(b)) = (info.file_id, image.file_id) {
        if a == b {
            return Err(SafetyRefusal::SameAsImage { device });
        }
    }
    if let Some(disk) = &info.partition_of {
        return Err(SafetyRefusal::Partition {
            device,
            disk: disk.clone(),
        });
    }
    if info.holds_root {
        return Err(SafetyRefusal::SystemDisk { device });
    }
    if let Some(first) = info.mounts.first() {
        let uses = info
            .mounts
            .iter()
            .map(|m| format!("{} on {}", m.device, m.mount_point))
            .collect::<Vec<_>>()
            .join(", ");
        let first = if first.mount_point == "[swap]" {
            format!("/dev/{}", first.device)
        } else {
            first.mount_point.clone()
        };
        return Err(SafetyRefusal::Mounted {
            device,
            uses,
            first,
        });
    }
    if info.read_only {
        return Err(SafetyRefusal::ReadOnly { device });
    }
    match info.kind {
        TargetKind::BlockDevice if info.size < image.size => {
            return Err(SafetyRefusal::TooSmall {
                device,
                need: human(image.size),
                have: human(info.size),
            });
        }
        TargetKind::RegularFile => {
            if let Some(room) = info.room {
                if room < image.mapped_bytes {
                    return Err(SafetyRefusal::TooSmall {
                        device: format!("the filesystem holding {device}"),
                        need: human(image.mapped_bytes),
                        have: human(room),
                    });
                }
            }
        }
        _ => {}
    }
    if info.kind == TargetKind::BlockDevice && !info.removable && !force {
        let model = info.model.clone().unwrap_or_else(|| "unknown model".into());
        return Err(SafetyRefusal::NotRemovable { device, model });
    }
    Ok(())
}

/// Looks at `target` (which need not exist yet if it is to be a file).
pub fn inspect(root: &Path, target: &Path) -> Result<TargetInfo> {
    let meta = match fs::metadata(target) {
        Ok(m) => Some(m),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("inspecting {}", target.display())),
    };
    match meta {
        Some(m) if m.file_type().is_block_device() => {
            inspect_block(root, target, DevNum::from_rdev(m.rdev()))
        }
        Some(m) if m.is_file() => inspect_file(target, Some(&m)),
        // A mistyped device name must not become a multi-GiB file in RAM.
        None if under_dev(target) => Err(SafetyRefusal::NoSuchDevice {
            device: target.display().to_string(),
        }
        .into()),
        None => inspect_file(target, None),
        Some(_) => bail!(
            "{} is neither a block device nor a regular file",
            target.display()
        ),
    }
}

fn under_dev(target: &Path) -> bool {
    let parent = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    fs::canonicalize(parent)
        .map(|p| p.starts_with("/dev"))
        .unwrap_or(false)
}

fn inspect_file(target: &Path, meta: Option<&fs::Metadata>) -> Result<TargetInfo> {
    let dir = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let free = crate::fsutil::free_bytes(dir)?;
    let own = meta.map(|m| m.blocks() * 512).unwrap_or(0);
    Ok(TargetInfo {
        path: target.to_path_buf(),
        kind: TargetKind::RegularFile,
        name: target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        devnum: None,
        model: None,
        size: meta.map(|m| m.len()).unwrap_or(0),
        removable: true,
        read_only: false,
        partition_of: None,
        mounts: Vec::new(),
        holds_root: false,
        room: Some(free + own),
        file_id: meta.map(|m| (m.dev(), m.ino())),
    })
}

/// Inspects the block device `dev` (shown as `path`) through `root`'s sysfs
/// and mount tables.
pub fn inspect_block(root: &Path, path: &Path, dev: DevNum) -> Result<TargetInfo> {
    let link = root.join(format!("sys/dev/block/{dev}"));
    let dir = fs::canonicalize(&link).with_context(|| {
        format!(
            "finding sysfs entry {} for {}",
            link.display(),
            path.display()
        )
    })?;
    let name = file_name(&dir);
    let partition_of = dir
        .join("partition")
        .exists()
        .then(|| dir.parent().map(file_name).unwrap_or_default());
    let read = |f: &str| {
        fs::read_to_string(dir.join(f))
            .map(|s| s.trim().to_string())
            .ok()
    };
    let size = read("size")
        .and_then(|s| s.parse::<u64>().ok())
        .with_context(|| format!("reading {}/size", dir.display()))?
        * 512;
    let model = [
        read("device/vendor"),
        read("device/model").or_else(|| read("device/name")),
    ]
    .into_iter()
    .flatten()
    .filter(|s| !s.is_empty())
    .collect::<Vec<_>>()
    .join(" ");
    let model = if model.is_empty() {
        read("loop/backing_file").map(|b| format!("loop device backed by {b}"))
    } else {
        Some(model)
    };

    let users = disk_users(root, &dir)?;
    let table = read_mounts(root)?;
    let uses = |m: &MountEntry| {
        users.iter().find(|u| {
            m.devnum == Some(u.devnum)
                || m.source == format!("/dev/{}", u.name)
                || u.alias.as_ref().is_some_and(|a| m.source == *a)
        })
    };
    let mut mounts = Vec::new();
    let mut holds_root = false;
    // The last "/" entry is the one in effect (later mounts stack on top).
    let root_entry = table.iter().rev().find(|m| m.mount_point == "/");
    for m in &table {
        if let Some(u) = uses(m) {
            mounts.push(Mount {
                device: u.name.clone(),
                mount_point: m.mount_point.clone(),
            });
        }
    }
    if let Some(r) = root_entry {
        holds_root = uses(r).is_some();
    }
    Ok(TargetInfo {
        path: path.to_path_buf(),
        kind: TargetKind::BlockDevice,
        name,
        devnum: Some(dev),
        model,
        size,
        // Built-in SD slots report removable=0 although the card is
        // removable; the MMC layer knows it is an SD card.
        removable: read("removable").as_deref() == Some("1")
            || read("device/type").as_deref() == Some("SD"),
        read_only: read("ro").as_deref() == Some("1"),
        partition_of,
        mounts,
        holds_root,
        room: None,
        file_id: None,
    })
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// A block device whose mounting means the disk is in use.
struct User {
    name: String,
    devnum: DevNum,
    /// `/dev/mapper/NAME` for device-mapper holders.
    alias: Option<String>,
}

/// The disk itself, its partitions, and everything stacked on them (dm,
/// md, ...) through `holders/`, recursively.
fn disk_users(root: &Path, disk: &Path) -> Result<Vec<User>> {
    let mut out = Vec::new();
    let mut todo = vec![disk.to_path_buf()];
    if let Ok(entries) = fs::read_dir(disk) {
        for e in entries.flatten() {
            if e.path().join("partition").exists() {
                todo.push(e.path());
            }
        }
    }
    while let Some(dir) = todo.pop() {
        let dev = fs::read_to_string(dir.join("dev"))
            .with_context(|| format!("reading {}/dev", dir.display()))?;
        let devnum = DevNum::parse(&dev)
            .with_context(|| format!("{}/dev holds {dev:?}, not major:minor", dir.display()))?;
        let alias = fs::read_to_string(dir.join("dm/name"))
            .ok()
            .map(|n| format!("/dev/mapper/{}", n.trim()));
        if out.iter().any(|u: &User| u.devnum == devnum) {
            continue;
        }
        out.push(User {
            name: file_name(&dir),
            devnum,
            alias,
        });
        if let Ok(holders) = fs::read_dir(dir.join("holders")) {
            for h in holders.flatten() {
                let class = root.join("sys/class/block").join(h.file_name());
                todo.push(fs::canonicalize(&class).unwrap_or(class));
            }
        }
    }
    Ok(out)
}

struct MountEntry {
    devnum: Option<DevNum>,
    mount_point: String,
    source: String,
}

/// /proc/self/mountinfo plus active swap areas.
fn read_mounts(root: &Path) -> Result<Vec<MountEntry>> {
    let path = root.join("proc/self/mountinfo");
    let text = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let mut out = Vec::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(sep) = fields.iter().position(|f| *f == "-") else {
            continue;
        };
        if fields.len() < 5 || fields.len() < sep + 3 {
            continue;
        }
        out.push(MountEntry {
            devnum: DevNum::parse(fields[2]),
            mount_point: unescape(fields[4]),
            source: unescape(fields[sep + 2]),
        });
    }
    // No swaps file (e.g. a fixture or a kernel without swap) means none.
    if let Ok(swaps) = fs::read_to_string(root.join("proc/swaps")) {
        for line in swaps.lines().skip(1) {
            if let Some(dev) = line.split_whitespace().next() {
                out.push(MountEntry {
                    devnum: None,
                    mount_point: "[swap]".into(),
                    source: unescape(dev),
                });
            }
        }
    }
    Ok(out)
}

/// mountinfo escapes space, tab, newline and backslash as \ooo.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Binary units, one decimal.
pub fn human(n: u64) -> String {
    crate::fsutil::binary_size(n, "B")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescapes_mountinfo_octal() {
        assert_eq!(unescape(r"/media/my\040stick"), "/media/my stick");
        assert_eq!(unescape(r"/a\\b"), r"/a\\b");
        assert_eq!(unescape(r"/x\0"), r"/x\0");
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human(512), "512 B");
        assert_eq!(human(8 << 30), "8.0 GiB");
    }
}

//! Disks as the kernel shows them (/sys/block, /dev/disk/by-id, by-path),
//! the disks holding mounted filesystems (root above all), and what a disk
//! holds according to the signatures in its first and last MiB. Pure
//! reads against a root directory, so tests run on fixture trees.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::fsutil::under;

/// How much of each end of a disk is searched for signatures: tables at
/// either end, and a filesystem starting anywhere in the first MiB (so a
/// partition whose table was wiped still counts as data).
pub const PROBE_BYTES: u64 = 1 << 20;
/// How much of a partition is read for its filesystem label.
const SUPERBLOCK_BYTES: u64 = 128 << 10;

/// One whole disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskInfo {
    /// Kernel name: `vdb`, `sda`, `nvme0n1`.
    pub name: String,
    pub bytes: u64,
    pub model: Option<String>,
    pub serial: Option<String>,
    /// Names in /dev/disk/by-id and by-path pointing at the disk.
    pub by_id: Vec<String>,
    pub by_path: Vec<String>,
    /// Kernel names of its partitions, in order.
    pub partitions: Vec<String>,
}

impl DiskInfo {
    pub fn dev(&self) -> String {
        format!("/dev/{}", self.name)
    }
}

/// Kernel device classes that are never data disks.
const NOT_DISKS: &[&str] = &["loop", "ram", "zram", "dm-", "md", "sr", "fd", "nbd"];

/// The writable whole disks under /sys/block.
pub fn list_disks(root: &Path) -> Result<Vec<DiskInfo>> {
    let sys = under(root, "/sys/block");
    let mut names: Vec<String> = match fs::read_dir(&sys) {
        Ok(rd) => rd
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !NOT_DISKS.iter().any(|p| n.starts_with(p)))
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e).with_context(|| format!("listing {}", sys.display())),
    };
    names.sort();
    let by_id = links(root, "/dev/disk/by-id")?;
    let by_path = links(root, "/dev/disk/by-path")?;
    let mut disks = Vec::new();
    for name in names {
        let dir = sys.join(&name);
        let sectors = read_trim(&dir.join("size"))
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(0);
        if sectors == 0 || read_trim(&dir.join("ro")).as_deref() == Some("1") {
            continue;
        }
        let mut partitions: Vec<(u64, String)> = fs::read_dir(&dir)
            .with_context(|| format!("listing {}", dir.display()))?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let n = read_trim(&e.path().join("partition"))?.parse().ok()?;
                Some((n, e.file_name().to_string_lossy().into_owned()))
            })
            .collect();
        partitions.sort();
        let pick = |m: &[(String, String)]| {
            m.iter()
                .filter(|(_, target)| *target == name)
                .map(|(link, _)| link.clone())
                .collect()
        };
        disks.push(DiskInfo {
            bytes: sectors.saturating_mul(512),
            model: read_trim(&dir.join("device/model")),
            serial: read_trim(&dir.join("serial"))
                .or_else(|| read_trim(&dir.join("device/serial"))),
            by_id: pick(&by_id),
            by_path: pick(&by_path),
            partitions: partitions.into_iter().map(|(_, n)| n).collect(),
            name,
        });
    }
    Ok(disks)
}

fn read_trim(p: &Path) -> Option<String> {
    let s = fs::read_to_string(p).ok()?;
    let s = s.trim();
    (!s.is_empty()).then(|| s.to_string())
}

/// (link name, target's kernel name) of the symlinks in `dir`.
fn links(root: &Path, dir: &str) -> Result<Vec<(String, String)>> {
    let d = under(root, dir);
    let rd = match fs::read_dir(&d) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("listing {}", d.display())),
    };
    let mut out = Vec::new();
    for e in rd.filter_map(|e| e.ok()) {
        if let Ok(t) = fs::read_link(e.path()) {
            if let Some(n) = t.file_name() {
                out.push((
                    e.file_name().to_string_lossy().into_owned(),
                    n.to_string_lossy().into_owned(),
                ));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// A mounted filesystem: its mount point and the whole disks beneath it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mounted {
    pub mount_point: String,
    pub source: String,
    pub disks: BTreeSet<String>,
}

/// Every mount from /proc/self/mountinfo whose device is a block device,
/// with the whole disks it lives on (through partitions and
/// device-mapper/md slaves).
pub fn mounts(root: &Path) -> Result<Vec<Mounted>> {
    let path = under(root, "/proc/self/mountinfo");
    let text = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let mut out = Vec::new();
    for l in text.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        let (Some(majmin), Some(mp), Some(dash)) =
            (f.get(2), f.get(4), f.iter().position(|x| *x == "-"))
        else {
            continue;
        };
        let mut disks = BTreeSet::new();
        if let Ok(dir) = fs::canonicalize(under(root, &format!("/sys/dev/block/{majmin}"))) {
            disks_below(&dir, &mut disks, 0);
        }
        if !disks.is_empty() {
            out.push(Mounted {
                mount_point: unescape_mountinfo(mp),
                source: f.get(dash + 2).unwrap_or(&"").to_string(),
                disks,
            });
        }
    }
    Ok(out)
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape_mountinfo(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

fn disks_below(dev_dir: &Path, out: &mut BTreeSet<String>, depth: u32) {
    let slaves: Vec<PathBuf> = fs::read_dir(dev_dir.join("slaves"))
        .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    if !slaves.is_empty() && depth < 8 {
        for s in slaves {
            if let Ok(c) = fs::canonicalize(&s) {
                disks_below(&c, out, depth + 1);
            }
        }
        return;
    }
    let disk_dir = if dev_dir.join("partition").exists() {
        dev_dir.parent().unwrap_or(dev_dir)
    } else {
        dev_dir
    };
    if let Some(n) = disk_dir.file_name() {
        out.insert(n.to_string_lossy().into_owned());
    }
}

/// The kernel name of partition `n` of `disk` (`vdb1`, `nvme0n1p1`).
pub fn partition_name(disk: &str, n: u32) -> String {
    if disk.ends_with(|c: char| c.is_ascii_digit()) {
        format!("{disk}p{n}")
    } else {
        format!("{disk}{n}")
    }
}

/// A filesystem found at the start of a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsFound {
    pub fstype: &'static str,
    pub label: Option<String>,
}

/// Reads up to `len` bytes at `offset` (fewer at the end of the device).
fn read_at(path: &Path, offset: u64, len: u64) -> Result<Vec<u8>> {
    let mut f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    f.seek(SeekFrom::Start(offset))
        .with_context(|| format!("seeking in {}", path.display()))?;
    let mut buf = Vec::new();
    f.take(len)
        .read_to_end(&mut buf)
        .with_context(|| format!("reading {}", path.display()))?;
    Ok(buf)
}

fn at(buf: &[u8], off: usize, magic: &[u8]) -> bool {
    buf.get(off..off + magic.len()) == Some(magic)
}

fn label_at(buf: &[u8], off: usize, len: usize) -> Option<String> {
    let raw = buf.get(off..off + len)?;
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    let s = String::from_utf8_lossy(&raw[..end]).trim().to_string();
    (!s.is_empty()).then_some(s)
}

/// The filesystem (or volume format) whose superblock starts `buf`.
pub fn filesystem_in(buf: &[u8]) -> Option<FsFound> {
    let found = |fstype, label| Some(FsFound { fstype, label });
    if at(buf, 1080, &[0x53, 0xEF]) {
        return found("ext4", label_at(buf, 1024 + 120, 16));
    }
    if at(buf, 0, b"XFSB") {
        return found("xfs", label_at(buf, 108, 12));
    }
    if at(buf, 65536 + 64, b"_BHRfS_M") {
        return found("btrfs", label_at(buf, 65536 + 299, 256));
    }
    if at(buf, 0, b"LUKS\xba\xbe") {
        return found("LUKS", None);
    }
    if (0..4).any(|s| at(buf, s * 512, b"LABELONE") && at(buf, s * 512 + 24, b"LVM2")) {
        return found("LVM2 physical volume", None);
    }
    if at(buf, 4096 - 10, b"SWAPSPACE2") || at(buf, 4096 - 10, b"SWAP-SPACE") {
        return found("swap", label_at(buf, 1024 + 28, 16));
    }
    if at(buf, 82, b"FAT32   ") || at(buf, 54, b"FAT1") {
        return found("vfat", None);
    }
    if at(buf, 32769, b"CD001") {
        return found("iso9660", None);
    }
    // md RAID superblocks 1.1 (at 0) and 1.2 (at 4 KiB).
    if at(buf, 0, &[0xFC, 0x4E, 0x2B, 0xA9]) || at(buf, 4096, &[0xFC, 0x4E, 0x2B, 0xA9]) {
        return found("md RAID member", None);
    }
    None
}

/// Everything recognisable in a disk's first (`head`) and last (`tail`)
/// MiB, described for a person; empty means the ends hold nothing known.
pub fn signatures(head: &[u8], tail: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    let gpt = at(head, 512, b"EFI PART") || at(head, 4096, b"EFI PART");
    if gpt {
        out.push("a GPT partition table".to_string());
    } else if at(head, 510, &[0x55, 0xAA]) {
        out.push("an MBR partition table or boot sector".to_string());
    }
    if let Some(fs) = filesystem_in(head) {
        out.push(describe_fs(&fs));
    }
    // Filesystems of partitions (starting on a sector boundary within the
    // first MiB), whether or not a partition table still points at them.
    let mut off = 512;
    while off <= PROBE_BYTES as usize && off < head.len() {
        if let Some(fs) = filesystem_in(&head[off..]) {
            out.push(format!("{} at byte {off}", describe_fs(&fs)));
        }
        off += 512;
    }
    let end = tail.len();
    if !gpt && end >= 512 && at(tail, end - 512, b"EFI PART") {
        out.push("a GPT backup header".to_string());
    }
    // md 0.90/1.0 superblocks sit near the end, 4 KiB aligned.
    if (0..end / 4096).any(|i| at(tail, i * 4096, &[0xFC, 0x4E, 0x2B, 0xA9])) {
        out.push("an md RAID superblock".to_string());
    }
    out
}

pub fn describe_fs(fs: &FsFound) -> String {
    match &fs.label {
        Some(l) => format!("{} labelled \"{l}\"", fs.fstype),
        None => format!("{} without a label", fs.fstype),
    }
}

/// Reads the disk's first and last MiB and returns [`signatures`].
pub fn disk_signatures(root: &Path, disk: &DiskInfo) -> Result<Vec<String>> {
    let dev = under(root, &disk.dev());
    // The first MiB plus room for a superblock of a filesystem starting
    // at its end (btrfs keeps its own 64 KiB in).
    let head = read_at(&dev, 0, PROBE_BYTES + SUPERBLOCK_BYTES)?;
    let tail_start = disk.bytes.saturating_sub(PROBE_BYTES);
    let tail = read_at(&dev, tail_start, PROBE_BYTES)?;
    Ok(signatures(&head, &tail))
}

/// The filesystem on a partition (or whole disk), if any.
pub fn filesystem_on(root: &Path, kernel_name: &str) -> Result<Option<FsFound>> {
    let dev = under(root, &format!("/dev/{kernel_name}"));
    Ok(filesystem_in(&read_at(&dev, 0, SUPERBLOCK_BYTES)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ext4(label: &str) -> Vec<u8> {
        let mut b = vec![0u8; 4096];
        b[1080..1082].copy_from_slice(&[0x53, 0xEF]);
        b[1144..1144 + label.len()].copy_from_slice(label.as_bytes());
        b
    }

    #[test]
    fn recognises_filesystems_and_tables() {
        assert_eq!(
            filesystem_in(&ext4("media")),
            Some(FsFound {
                fstype: "ext4",
                label: Some("media".into())
            })
        );
        let mut xfs = vec![0u8; 4096];
        xfs[..4].copy_from_slice(b"XFSB");
        xfs[108..113].copy_from_slice(b"pool1");
        assert_eq!(
            describe_fs(&filesystem_in(&xfs).unwrap()),
            "xfs labelled \"pool1\""
        );
        let mut lvm = vec![0u8; 4096];
        lvm[512..520].copy_from_slice(b"LABELONE");
        lvm[536..540].copy_from_slice(b"LVM2");
        assert_eq!(filesystem_in(&lvm).unwrap().fstype, "LVM2 physical volume");
        let mut luks = vec![0u8; 4096];
        luks[..6].copy_from_slice(b"LUKS\xba\xbe");
        assert_eq!(filesystem_in(&luks).unwrap().fstype, "LUKS");
        let mut btrfs = vec![0u8; 70000];
        btrfs[65600..65608].copy_from_slice(b"_BHRfS_M");
        assert_eq!(filesystem_in(&btrfs).unwrap().fstype, "btrfs");
        let zero = vec![0u8; 1 << 16];
        assert!(signatures(&zero, &zero).is_empty());
        let mut gpt = zero.clone();
        gpt[510..512].copy_from_slice(&[0x55, 0xAA]);
        gpt[512..520].copy_from_slice(b"EFI PART");
        assert_eq!(signatures(&gpt, &zero), ["a GPT partition table"]);
        // Only the backup header left (the front was zeroed).
        let mut tail = zero.clone();
        let n = tail.len();
        tail[n - 512..n - 504].copy_from_slice(b"EFI PART");
        assert_eq!(signatures(&zero, &tail), ["a GPT backup header"]);
        // A partition's filesystem at 1 MiB, its table gone.
        let mut head = vec![0u8; (1 << 20) + 4096];
        head[(1 << 20)..].copy_from_slice(&ext4("old"));
        assert_eq!(
            signatures(&head, &zero),
            ["ext4 labelled \"old\" at byte 1048576"]
        );
    }

    #[test]
    fn partition_names_follow_the_kernel() {
        assert_eq!(partition_name("vdb", 1), "vdb1");
        assert_eq!(partition_name("nvme0n1", 1), "nvme0n1p1");
        assert_eq!(partition_name("mmcblk1", 2), "mmcblk1p2");
    }
}

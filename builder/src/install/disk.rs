//! Which local disk an install goes to: a rule from the fleet file, and
//! the same refusals as `nodeforge flash`, plus one: a disk that holds
//! data (a partition table or a filesystem signature) is never chosen
//! unless the fleet entry says `force = true`.

use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use nodeforge_firstboot::text::join_or;

use crate::flash::device::{self, human, ImageFacts};

/// `install_disk` in the fleet file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskRule {
    /// The smallest disk that is big enough, safe and empty (the default).
    SmallestEmpty,
    /// This device (e.g. /dev/disk/by-path/pci-0000:00:05.0, /dev/nvme0n1).
    Path(PathBuf),
}

impl DiskRule {
    pub fn parse(s: &str) -> Result<DiskRule> {
        match s {
            "smallest-empty" => Ok(DiskRule::SmallestEmpty),
            p if p.starts_with("/dev/") => Ok(DiskRule::Path(p.into())),
            other => bail!(
                "install_disk `{other}`: use \"smallest-empty\" or a device path under /dev/ \
                 (e.g. /dev/disk/by-path/…)"
            ),
        }
    }
}

/// A disk as the rule sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub path: PathBuf,
    pub size: u64,
    /// Why `flash` would refuse it (mounted, too small, …).
    pub refusal: Option<String>,
    /// What data it holds, if any.
    pub holds: Option<&'static str>,
}

/// The disk for the install, or why there is none.
pub fn choose(rule: &DiskRule, disks: &[Candidate], force: bool) -> Result<PathBuf> {
    // Why a disk may not be installed to; None for a usable one.
    let unusable = |c: &Candidate| -> Option<String> {
        if let Some(r) = &c.refusal {
            return Some(r.clone());
        }
        match c.holds {
            Some(what) if !force => Some(format!(
                "{} holds data ({what}); set force = true for this node in the fleet file to overwrite it",
                c.path.display()
            )),
            _ => None,
        }
    };
    match rule {
        DiskRule::Path(p) => {
            let c = disks.iter().find(|c| &c.path == p).with_context(|| {
                format!("install_disk {} is not a disk of this machine", p.display())
            })?;
            if let Some(why) = unusable(c) {
                bail!(why);
            }
            Ok(c.path.clone())
        }
        DiskRule::SmallestEmpty => {
            let mut ok: Vec<&Candidate> = disks.iter().filter(|c| unusable(c).is_none()).collect();
            ok.sort_by_key(|c| c.size);
            if let Some(c) = ok.first() {
                return Ok(c.path.clone());
            }
            // None is usable here, so each disk has its reason.
            let why: Vec<String> = disks.iter().filter_map(unusable).collect();
            bail!(
                "no disk to install to: {}",
                join_or(&why, "; ", "this machine has no disks")
            )
        }
    }
}

/// Bytes from the start of a disk that [`signature`] looks at.
pub const PROBE_BYTES: usize = 70 * 1024;

/// The kind of data the first bytes of a disk show, if any.
pub fn signature(head: &[u8]) -> Option<&'static str> {
    let at = |off: usize, magic: &[u8]| head.get(off..off + magic.len()) == Some(magic);
    if at(512, b"EFI PART") {
        return Some("a GPT partition table");
    }
    let boot_sig = at(510, &[0x55, 0xAA]);
    if boot_sig && (at(54, b"FAT") || at(82, b"FAT32")) {
        return Some("a FAT filesystem");
    }
    if boot_sig && (0..4).any(|i| head.get(446 + 16 * i + 4).is_some_and(|t| *t != 0)) {
        return Some("an MBR partition table");
    }
    let checks: [(usize, &[u8], &str); 7] = [
        (1080, &[0x53, 0xEF], "an ext2/3/4 filesystem"),
        (0, b"XFSB", "an XFS filesystem"),
        (0, b"LUKS\xba\xbe", "a LUKS volume"),
        (65600, b"_BHRfS_M", "a btrfs filesystem"),
        (4086, b"SWAPSPACE2", "swap"),
        (32769, b"CD001", "an ISO 9660 filesystem"),
        (24, &[0xfc, 0x4e, 0x2b, 0xa9], "an LVM physical volume"),
    ];
    checks
        .iter()
        .find(|(off, magic, _)| at(*off, magic))
        .map(|(_, _, what)| *what)
}

/// Every whole disk of this machine (under `sys_root`), with what `flash`
/// thinks of it and what data it holds.
pub fn candidates(sys_root: &Path, image: &ImageFacts) -> Result<Vec<Candidate>> {
    let block = sys_root.join("sys/block");
    let mut out = Vec::new();
    for e in fs::read_dir(&block).with_context(|| format!("listing {}", block.display()))? {
        let name = e
            .with_context(|| format!("listing {}", block.display()))?
            .file_name()
            .to_string_lossy()
            .into_owned();
        if ["loop", "ram", "zram", "sr", "dm-", "nbd", "md"]
            .iter()
            .any(|p| name.starts_with(p))
        {
            continue;
        }
        let path = PathBuf::from(format!("/dev/{name}"));
        let info = device::inspect(sys_root, &path)?;
        // Servers' disks are not removable; that flash rule is lifted.
        let refusal = device::check(&info, image, true)
            .err()
            .map(|r| r.to_string());
        let mut head = vec![0u8; PROBE_BYTES];
        let holds = match File::open(&path).and_then(|f| f.read_at(&mut head, 0)) {
            Ok(n) => signature(&head[..n]),
            Err(_) => Some("unreadable contents"),
        };
        out.push(Candidate {
            path,
            size: info.size,
            refusal,
            holds,
        });
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

/// One line per disk, for the console.
pub fn describe(disks: &[Candidate]) -> String {
    disks
        .iter()
        .map(|c| {
            format!(
                "{} {}{}{}",
                c.path.display(),
                human(c.size),
                c.holds.map(|h| format!(", holds {h}")).unwrap_or_default(),
                c.refusal
                    .as_ref()
                    .map(|r| format!(", refused: {r}"))
                    .unwrap_or_default()
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk(path: &str, gib: u64, holds: Option<&'static str>, refusal: Option<&str>) -> Candidate {
        Candidate {
            path: path.into(),
            size: gib << 30,
            refusal: refusal.map(str::to_owned),
            holds,
        }
    }

    #[test]
    fn rules_parse() {
        assert_eq!(
            DiskRule::parse("smallest-empty").unwrap(),
            DiskRule::SmallestEmpty
        );
        assert_eq!(
            DiskRule::parse("/dev/disk/by-path/pci-0000:00:05.0").unwrap(),
            DiskRule::Path("/dev/disk/by-path/pci-0000:00:05.0".into())
        );
        assert!(DiskRule::parse("largest")
            .unwrap_err()
            .to_string()
            .contains("smallest-empty"));
    }

    #[test]
    fn smallest_empty_skips_disks_with_data_or_refused_by_flash() {
        let disks = [
            disk("/dev/vda", 2, Some("an ext2/3/4 filesystem"), None),
            disk("/dev/vdb", 3, None, Some("too small")),
            disk("/dev/vdc", 8, None, None),
            disk("/dev/vdd", 4, None, None),
        ];
        let rule = DiskRule::SmallestEmpty;
        assert_eq!(
            choose(&rule, &disks, false).unwrap(),
            PathBuf::from("/dev/vdd")
        );
        // force lifts the data rule only.
        assert_eq!(
            choose(&rule, &disks, true).unwrap(),
            PathBuf::from("/dev/vda")
        );
        let err = choose(&rule, &disks[..2], false).unwrap_err().to_string();
        assert!(
            err.contains("holds data (an ext2/3/4 filesystem)") && err.contains("too small"),
            "{err}"
        );
        let err = choose(&rule, &[], false).unwrap_err().to_string();
        assert!(err.contains("no disks"), "{err}");
    }

    #[test]
    fn a_named_disk_is_still_checked() {
        let disks = [disk("/dev/sda", 100, Some("a GPT partition table"), None)];
        let rule = DiskRule::Path("/dev/sda".into());
        let err = choose(&rule, &disks, false).unwrap_err().to_string();
        assert!(err.contains("force = true"), "{err}");
        assert_eq!(
            choose(&rule, &disks, true).unwrap(),
            PathBuf::from("/dev/sda")
        );
        let err = choose(&DiskRule::Path("/dev/sdz".into()), &disks, true)
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a disk of this machine"), "{err}");
    }

    #[test]
    fn signatures_of_tables_and_filesystems_are_seen() {
        let blank = vec![0u8; PROBE_BYTES];
        assert_eq!(signature(&blank), None);
        let with = |off: usize, bytes: &[u8]| {
            let mut b = blank.clone();
            b[off..off + bytes.len()].copy_from_slice(bytes);
            b
        };
        assert_eq!(
            signature(&with(512, b"EFI PART")),
            Some("a GPT partition table")
        );
        assert_eq!(
            signature(&with(1080, &[0x53, 0xEF])),
            Some("an ext2/3/4 filesystem")
        );
        assert_eq!(
            signature(&with(65600, b"_BHRfS_M")),
            Some("a btrfs filesystem")
        );
        let mut mbr = with(510, &[0x55, 0xAA]);
        assert_eq!(signature(&mbr), None, "a boot signature alone is no table");
        mbr[446 + 4] = 0x83;
        assert_eq!(signature(&mbr), Some("an MBR partition table"));
        // A short read (tiny disk) is looked at as far as it goes.
        assert_eq!(signature(&blank[..100]), None);
    }
}

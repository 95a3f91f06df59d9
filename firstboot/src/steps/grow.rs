//! Grow the root partition and its ext4 filesystem to fill the disk, like
//! cloud-utils' growpart + resize2fs; on an image with A/B slots, the
//! state partition (the last one) instead, so both slots keep their size. State first: the layout is read from
//! /proc/self/mountinfo and /sys, the on-disk table and the filesystem
//! size from the disk itself (ondisk.rs), so a re-run after an
//! interruption only does what is still missing.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::{Ctx, Outcome};
use crate::fsutil::under;
use crate::runner::{Cmd, SpawnError};

/// Less slack than this is "already full size" (partitions are 1 MiB
/// aligned, so sfdisk would not grow by less anyway).
const MIN_GROW_BYTES: u64 = 1 << 20;
const SECTOR: u64 = 512;

/// The root filesystem's place on its disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrowPlan {
    /// Kernel names, e.g. `vda` and `vda2`, `mmcblk0` and `mmcblk0p2`.
    pub disk: String,
    pub part: String,
    pub part_number: u32,
    pub fstype: String,
    /// GPT (backup header in the last 33 sectors) rather than MBR.
    pub gpt: bool,
    /// Partition size as the kernel sees it, as the on-disk table says
    /// (larger after sfdisk ran but before partx told the kernel), and the
    /// size it can grow to, in bytes.
    pub part_bytes: u64,
    pub table_bytes: u64,
    pub max_bytes: u64,
}

/// What the on-disk table says: GPT or not, and the root partition's size
/// in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableView {
    pub gpt: bool,
    pub part_sectors: Option<u64>,
}

impl GrowPlan {
    pub fn disk_dev(&self) -> String {
        format!("/dev/{}", self.disk)
    }

    pub fn part_dev(&self) -> String {
        format!("/dev/{}", self.part)
    }

    /// The on-disk table still leaves room at the end.
    pub fn can_grow(&self) -> bool {
        self.max_bytes.saturating_sub(self.table_bytes) >= MIN_GROW_BYTES
    }

    /// The table was grown but the kernel still has the old size.
    pub fn kernel_behind(&self) -> bool {
        self.table_bytes.saturating_sub(self.part_bytes) >= MIN_GROW_BYTES
    }
}

fn read_num(path: &Path) -> Result<u64> {
    let s = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    s.trim()
        .parse()
        .with_context(|| format!("{}: not a number: {s:?}", path.display()))
}

/// Why root is left at its size: the step skips with this as its reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotGrowable {
    #[error("root is {fstype} on {device}: only ext2/3/4 on a partition is grown")]
    Filesystem { fstype: String, device: String },
    #[error("root device {0} has no /sys/dev/block entry")]
    NoSysfsEntry(String),
    #[error("root ({0}) is a whole device, not a partition")]
    WholeDevice(String),
    #[error("{part} is not the last partition on {disk}")]
    NotLastPartition { part: String, disk: String },
}

/// Works out where the filesystem mounted at `at` (`/`, or the state
/// partition's mount) lives, or returns `Err(why)` to skip (netboot root
/// on tmpfs/overlay, not ext4, not the last partition …). `table` reads
/// the entry of (disk device, partition number) from the table.
pub fn plan_grow(
    root: &Path,
    at: &str,
    table: impl Fn(&str, u32) -> Result<TableView>,
) -> Result<Result<GrowPlan, NotGrowable>> {
    let mi_path = under(root, "/proc/self/mountinfo");
    let mountinfo =
        fs::read_to_string(&mi_path).with_context(|| format!("reading {}", mi_path.display()))?;
    // The last entry is the one on top (initramfs may have stacked).
    let Some((majmin, fstype, source)) = mountinfo.lines().rev().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        let dash = f.iter().position(|x| *x == "-")?;
        if f.get(4) != Some(&at) {
            return None;
        }
        Some((
            f[2].to_string(),
            f.get(dash + 1)?.to_string(),
            f.get(dash + 2)?.to_string(),
        ))
    }) else {
        bail!("nothing is mounted at {at} (in {})", mi_path.display());
    };
    if !matches!(fstype.as_str(), "ext4" | "ext3" | "ext2") {
        return Ok(Err(NotGrowable::Filesystem {
            fstype,
            device: source,
        }));
    }
    let link = under(root, &format!("/sys/dev/block/{majmin}"));
    let part_dir = match fs::canonicalize(&link) {
        Ok(p) => p,
        Err(_) => return Ok(Err(NotGrowable::NoSysfsEntry(majmin))),
    };
    if !part_dir.join("partition").exists() {
        return Ok(Err(NotGrowable::WholeDevice(source)));
    }
    let disk_dir: PathBuf = part_dir
        .parent()
        .with_context(|| format!("{} has no parent disk", part_dir.display()))?
        .to_path_buf();
    let name = |p: &Path| {
        p.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    let (disk, part) = (name(&disk_dir), name(&part_dir));
    let part_number = read_num(&part_dir.join("partition"))? as u32;
    let start = read_num(&part_dir.join("start"))?;
    let size = read_num(&part_dir.join("size"))?;
    let disk_size = read_num(&disk_dir.join("size"))?;
    for entry in
        fs::read_dir(&disk_dir).with_context(|| format!("listing {}", disk_dir.display()))?
    {
        let p = entry
            .with_context(|| format!("listing {}", disk_dir.display()))?
            .path();
        if p.join("partition").exists() && p != part_dir && read_num(&p.join("start"))? > start {
            return Ok(Err(NotGrowable::NotLastPartition { part, disk }));
        }
    }
    let view = table(&format!("/dev/{disk}"), part_number)?;
    let gpt = view.gpt;
    let reserved = if gpt { 33 } else { 0 };
    Ok(Ok(GrowPlan {
        disk,
        part,
        part_number,
        fstype,
        gpt,
        part_bytes: size.saturating_mul(SECTOR),
        table_bytes: view.part_sectors.unwrap_or(size).saturating_mul(SECTOR),
        max_bytes: disk_size
            .saturating_sub(reserved)
            .saturating_sub(start)
            .saturating_mul(SECTOR),
    }))
}

/// Partition `number`'s entry in the table on `disk` (a `/dev` path).
fn read_table(ctx: &Ctx<'_>, disk: &str, number: u32) -> Result<TableView> {
    let entry = super::ondisk::table_entry(&under(ctx.root, disk), number)?;
    Ok(TableView {
        gpt: entry.gpt,
        part_sectors: entry.sectors,
    })
}

fn gib(b: u64) -> String {
    format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64)
}

pub fn grow_root(ctx: &mut Ctx<'_>) -> Result<Outcome> {
    match grow(ctx) {
        Err(e) => match e.chain().find_map(|c| c.downcast_ref::<SpawnError>()) {
            // A missing tool is an image defect; growing is not worth
            // keeping the node from joining, so say so and go on.
            Some(SpawnError::NotFound(prog)) => Ok(Outcome::Skipped(format!(
                "cannot grow the root filesystem: `{prog}` is not installed in the image"
            ))),
            Some(SpawnError::Io { .. }) | None => Err(e),
        },
        ok => ok,
    }
}

/// The filesystem first boot grows: the state partition's with A/B
/// slots, else the root.
fn grown_mount(ctx: &Ctx<'_>) -> &'static str {
    match ctx.cfg.slots {
        Some(_) => crate::slots::STATE_MOUNT,
        None => "/",
    }
}

fn grow(ctx: &mut Ctx<'_>) -> Result<Outcome> {
    let at = grown_mount(ctx);
    let plan = match plan_grow(ctx.root, at, |d, p| read_table(ctx, d, p))? {
        Ok(p) => p,
        Err(why) => return Ok(Outcome::Skipped(why.to_string())),
    };
    let (disk, part) = (plan.disk_dev(), plan.part_dev());
    let mut did = Vec::new();
    if plan.can_grow() {
        // An image written to a bigger disk has its GPT backup header in
        // the middle; move it to the end first or sfdisk cannot use the
        // space. Idempotent, like the resize below.
        if plan.gpt {
            ctx.runner
                .run(&Cmd::new("sfdisk").args(["--relocate", "gpt-bak-std", &disk]))?;
        }
        ctx.runner.run(
            &Cmd::new("sfdisk")
                .args(["--no-reread", "--no-tell-kernel", "-N"])
                .arg(plan.part_number.to_string())
                .arg(&disk)
                .stdin(", +\n"),
        )?;
        did.push(format!(
            "grew {part} from {} to {}",
            gib(plan.table_bytes),
            gib(plan.max_bytes)
        ));
    }
    if plan.can_grow() || plan.kernel_behind() {
        // Tell the kernel about the new size of the mounted partition.
        ctx.runner.run(
            &Cmd::new("partx")
                .args(["-u", "--nr"])
                .arg(plan.part_number.to_string())
                .arg(&disk),
        )?;
        did.push(format!("told the kernel about the new size of {part}"));
    }
    // Re-read: the partition may have been grown by this or an earlier run.
    let unchanged = |_: &str, _: u32| {
        Ok(TableView {
            gpt: plan.gpt,
            part_sectors: None,
        })
    };
    let part_bytes = match plan_grow(ctx.root, at, unchanged)? {
        Ok(p) => p.part_bytes,
        Err(why) => bail!("the partition of {at} vanished after growing it: {why}"),
    };
    let fs_bytes = super::ondisk::ext_fs_bytes(&under(ctx.root, &part))?;
    if part_bytes.saturating_sub(fs_bytes) >= MIN_GROW_BYTES {
        ctx.runner.run(&Cmd::new("resize2fs").arg(&part))?;
        did.push(format!(
            "resized {} from {} to {}",
            plan.fstype,
            gib(fs_bytes),
            gib(part_bytes)
        ));
    }
    Ok(if did.is_empty() {
        Outcome::Skipped(format!(
            "{part} and its {} already fill {disk} ({})",
            plan.fstype,
            gib(part_bytes)
        ))
    } else {
        Outcome::Done(did.join("; "))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake /proc + /sys for root on vda2 (start 2048, `size` sectors)
    /// on a disk of `disk` sectors.
    pub(crate) fn fake_layout(root: &Path, size: u64, disk: u64) {
        let w = |p: &str, s: &str| {
            let p = under(root, p);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, s).unwrap();
        };
        w("/proc/self/mountinfo", "22 1 254:2 / / rw,relatime shared:1 - ext4 /dev/vda2 rw\n30 22 0:5 / /run rw - tmpfs tmpfs rw\n");
        w("/sys/devices/virtual/vda/size", &format!("{disk}\n"));
        w("/sys/devices/virtual/vda/vda1/partition", "1\n");
        w("/sys/devices/virtual/vda/vda1/start", "34\n");
        w("/sys/devices/virtual/vda/vda2/partition", "2\n");
        w("/sys/devices/virtual/vda/vda2/start", "2048\n");
        w("/sys/devices/virtual/vda/vda2/size", &format!("{size}\n"));
        fs::create_dir_all(under(root, "/sys/dev/block")).unwrap();
        let _ = std::os::unix::fs::symlink(
            "../../devices/virtual/vda/vda2",
            under(root, "/sys/dev/block/254:2"),
        );
    }

    fn gpt(_: &str, _: u32) -> Result<TableView> {
        Ok(TableView {
            gpt: true,
            part_sectors: None,
        })
    }

    #[test]
    fn plans_growth_for_the_last_partition() {
        let dir = tempfile::tempdir().unwrap();
        fake_layout(dir.path(), 2048 * 1024, 8 << 21);
        let p = plan_grow(dir.path(), "/", gpt).unwrap().unwrap();
        assert_eq!(
            (p.disk.as_str(), p.part.as_str(), p.part_number),
            ("vda", "vda2", 2)
        );
        assert_eq!(p.max_bytes, ((8u64 << 21) - 33 - 2048) * 512);
        assert!(p.can_grow());
    }

    #[test]
    fn skips_with_reasons() {
        let dir = tempfile::tempdir().unwrap();
        fake_layout(dir.path(), 2048 * 1024, 8 << 21);
        let p = dir.path();
        // Not the last partition.
        fs::create_dir_all(p.join("sys/devices/virtual/vda/vda3")).unwrap();
        fs::write(p.join("sys/devices/virtual/vda/vda3/partition"), "3").unwrap();
        fs::write(p.join("sys/devices/virtual/vda/vda3/start"), "9999999").unwrap();
        let r = plan_grow(p, "/", gpt).unwrap().unwrap_err();
        assert_eq!(
            r,
            NotGrowable::NotLastPartition {
                part: "vda2".into(),
                disk: "vda".into()
            }
        );
        assert!(r.to_string().contains("not the last partition"), "{r}");
        // Netboot: root on overlay.
        fs::write(
            p.join("proc/self/mountinfo"),
            "1 0 0:30 / / rw - overlay overlay rw\n",
        )
        .unwrap();
        let r = plan_grow(p, "/", gpt).unwrap().unwrap_err();
        assert!(r.to_string().contains("root is overlay"), "{r}");
    }

    #[test]
    fn with_slots_the_state_partition_is_grown_not_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        fake_layout(p, 2048 * 1024, 8 << 21);
        // Slots B (vda3) and state (vda4) after root (vda2).
        let w = |rel: &str, s: &str| {
            let f = p.join(rel);
            fs::create_dir_all(f.parent().unwrap()).unwrap();
            fs::write(f, s).unwrap();
        };
        for (n, start) in [(3, 2048 + 2048 * 1024), (4, 2048 + 2 * 2048 * 1024)] {
            w(
                &format!("sys/devices/virtual/vda/vda{n}/partition"),
                &format!("{n}\n"),
            );
            w(
                &format!("sys/devices/virtual/vda/vda{n}/start"),
                &format!("{start}\n"),
            );
            w(&format!("sys/devices/virtual/vda/vda{n}/size"), "524288\n");
        }
        std::os::unix::fs::symlink(
            "../../devices/virtual/vda/vda4",
            p.join("sys/dev/block/254:4"),
        )
        .unwrap();
        w(
            "proc/self/mountinfo",
            "22 1 254:2 / / rw - ext4 /dev/vda2 rw\n\
             40 22 254:4 / /var/lib/nodeforge-state rw - ext4 /dev/vda4 rw\n\
             41 22 254:4 /nodeforge /var/lib/nodeforge rw - ext4 /dev/vda4 rw\n",
        );
        let r = plan_grow(p, "/", gpt).unwrap().unwrap_err();
        assert!(matches!(r, NotGrowable::NotLastPartition { .. }), "{r}");
        let g = plan_grow(p, crate::slots::STATE_MOUNT, gpt)
            .unwrap()
            .unwrap();
        assert_eq!((g.part.as_str(), g.part_number), ("vda4", 4));
        assert!(g.can_grow());
    }
}

//! Data disks from the profile's storage rules: each rule takes one disk
//! (never one holding root or another mounted filesystem). A blank disk
//! gets one GPT partition and the rule's filesystem and label, once; a
//! disk already carrying the label is only mounted; a disk holding
//! anything else is refused and left untouched. Mounts go to /etc/fstab by
//! label with `nofail`, so later boots mount them without the agent.

use std::collections::BTreeSet;
use std::fs;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::{Ctx, Outcome};
use crate::config::{glob_match, DiskMatch, StorageRule};
use crate::disks::{self, DiskInfo};
use crate::fsutil::{atomic_write, read_optional, under};
use crate::runner::Cmd;

/// Disks this agent started formatting, recorded before the partition
/// table is written: a run interrupted between partitioning and mkfs
/// finishes the job instead of taking its own partition for data.
pub const CLAIMS_PATH: &str = "/var/lib/nodeforge/storage-claims.json";
/// GPT type "Linux filesystem data".
const LINUX_DATA: &str = "0FC63DAF-8483-4772-8E79-3D69D8477DE4";

/// A rule the agent must not act on without a person: the disk holds
/// data, or no (or more than one) disk fits. Later steps that do not
/// need the storage go on; first boot ends failed, naming the disk.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Refusal {
    /// Machine-readable class for status.json.
    pub reason: &'static str,
    pub message: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Claims {
    claims: Vec<Claim>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Claim {
    label: String,
    disk: String,
    bytes: u64,
}

/// What the disk a rule chose holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskState {
    /// No partition table and no signature at either end.
    Blank,
    /// The rule's filesystem with the rule's label, on this device.
    Labelled(String),
    /// Our own partition from an interrupted run, still without a
    /// filesystem.
    Unfinished(String),
    /// Anything else, described.
    Foreign(String),
}

pub fn storage(ctx: &mut Ctx<'_>) -> Result<Outcome> {
    let rules = &ctx.cfg.storage;
    if rules.is_empty() {
        return Ok(Outcome::Skipped("the profile has no storage rules".into()));
    }
    let all = disks::list_disks(ctx.root)?;
    let mounts = disks::mounts(ctx.root)?;
    let root_disks: BTreeSet<String> = mounts
        .iter()
        .filter(|m| m.mount_point == "/")
        .flat_map(|m| m.disks.iter().cloned())
        .collect();
    let mut taken: BTreeSet<String> = BTreeSet::new();
    let (mut did, mut refused) = (Vec::new(), Vec::new());
    for rule in rules {
        // Never the root disk, never a disk with a mount other than this
        // rule's own, never one an earlier rule took.
        let candidates: Vec<&DiskInfo> = all
            .iter()
            .filter(|d| !root_disks.contains(&d.name) && !taken.contains(&d.name))
            .filter(|d| {
                !mounts
                    .iter()
                    .any(|m| m.disks.contains(&d.name) && m.mount_point != rule.mount)
            })
            .filter(|d| matches(&rule.matcher, d))
            .collect();
        match choose(ctx, rule, &candidates, &all) {
            Ok(disk) => {
                taken.insert(disk.name.clone());
                match apply(ctx, rule, disk) {
                    Ok(d) => did.push(d),
                    Err(e) => match e.downcast::<Refusal>() {
                        Ok(r) => refused.push(r),
                        Err(e) => return Err(e),
                    },
                }
            }
            Err(r) => refused.push(r),
        }
    }
    if refused.is_empty() {
        return Ok(Outcome::Done(did.join("; ")));
    }
    let reason = refused[0].reason;
    let mut message: Vec<String> = refused.into_iter().map(|r| r.message).collect();
    if !did.is_empty() {
        message.push(format!("done: {}", did.join("; ")));
    }
    Err(Refusal {
        reason,
        message: message.join("; "),
    }
    .into())
}

/// Does the disk satisfy every condition of the matcher?
pub fn matches(m: &DiskMatch, d: &DiskInfo) -> bool {
    let glob = |pat: &Option<String>, vals: &[&str]| match pat {
        None => true,
        Some(p) => vals.iter().any(|v| glob_match(p, v)),
    };
    fn opt(o: &Option<String>) -> Vec<&str> {
        o.as_deref().into_iter().collect()
    }
    let ids: Vec<&str> = d.by_id.iter().map(String::as_str).collect();
    let paths: Vec<&str> = d.by_path.iter().map(String::as_str).collect();
    m.min_bytes.is_none_or(|b| d.bytes >= b)
        && m.max_bytes.is_none_or(|b| d.bytes <= b)
        && glob(&m.model, &opt(&d.model))
        && glob(&m.serial, &opt(&d.serial))
        && glob(&m.by_id, &ids)
        && glob(&m.by_path, &paths)
}

fn describe_disk(d: &DiskInfo) -> String {
    let mut s = format!("{} ({}", d.dev(), human(d.bytes));
    if let Some(m) = &d.model {
        s.push_str(&format!(", model {m}"));
    }
    if let Some(x) = &d.serial {
        s.push_str(&format!(", serial {x}"));
    }
    s.push(')');
    s
}

fn human(b: u64) -> String {
    if b >= 1 << 30 {
        format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64)
    } else {
        format!("{} MiB", b >> 20)
    }
}

/// The devices on the disk carrying the rule's label and filesystem.
fn labelled_devices(ctx: &Ctx<'_>, rule: &StorageRule, d: &DiskInfo) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for dev in d.partitions.iter().chain(std::iter::once(&d.name)) {
        if let Some(fs) = disks::filesystem_on(ctx.root, dev)? {
            if fs.label.as_deref() == Some(rule.label.as_str())
                && fs.fstype == rule.filesystem.name()
            {
                out.push(dev.clone());
            }
        }
    }
    Ok(out)
}

/// The one disk the rule takes: the one already carrying its label, else
/// the largest (with `largest`), else the only candidate.
fn choose<'d>(
    ctx: &Ctx<'_>,
    rule: &StorageRule,
    candidates: &[&'d DiskInfo],
    all: &[DiskInfo],
) -> Result<&'d DiskInfo, Refusal> {
    let label = &rule.label;
    let mut labelled = Vec::new();
    for d in candidates {
        // An unreadable disk is not a candidate for formatting either.
        match labelled_devices(ctx, rule, d) {
            Ok(v) if !v.is_empty() => labelled.push(*d),
            Ok(_) => {}
            Err(e) => {
                return Err(Refusal {
                    reason: "disk-unreadable",
                    message: format!("storage `{label}`: cannot read {}: {e:#}", d.dev()),
                })
            }
        }
    }
    match labelled.as_slice() {
        [one] => return Ok(one),
        [] => {}
        many => {
            return Err(Refusal {
                reason: "storage-ambiguous",
                message: format!(
                    "storage `{label}`: several disks carry the label: {}",
                    many.iter().map(|d| d.dev()).collect::<Vec<_>>().join(", ")
                ),
            })
        }
    }
    if rule.matcher.largest {
        if let Some(d) = candidates
            .iter()
            .max_by_key(|d| (d.bytes, std::cmp::Reverse(&d.name)))
        {
            return Ok(d);
        }
    }
    match candidates {
        [one] => Ok(one),
        [] => Err(Refusal {
            reason: "no-matching-disk",
            message: format!(
                "storage `{label}`: no disk matches the rule (root and mounted disks are never taken); disks seen: {}",
                if all.is_empty() {
                    "none".to_string()
                } else {
                    all.iter().map(describe_disk).collect::<Vec<_>>().join(", ")
                }
            ),
        }),
        many => Err(Refusal {
            reason: "storage-ambiguous",
            message: format!(
                "storage `{label}`: {} disks match ({}): narrow the rule (serial, by_id …) or set largest = true",
                many.len(),
                many.iter().map(|d| d.dev()).collect::<Vec<_>>().join(", ")
            ),
        }),
    }
}

fn load_claims(ctx: &Ctx<'_>) -> Result<Claims> {
    let p = under(ctx.root, CLAIMS_PATH);
    match read_optional(&p)? {
        None => Ok(Claims::default()),
        Some(t) => serde_json::from_str(&t).with_context(|| format!("parsing {}", p.display())),
    }
}

/// Reads what the chosen disk holds.
pub fn classify(ctx: &Ctx<'_>, rule: &StorageRule, d: &DiskInfo) -> Result<DiskState> {
    if let Some(dev) = labelled_devices(ctx, rule, d)?.into_iter().next() {
        return Ok(DiskState::Labelled(dev));
    }
    let sigs = disks::disk_signatures(ctx.root, d)?;
    if sigs.is_empty() && d.partitions.is_empty() {
        return Ok(DiskState::Blank);
    }
    let mut parts = Vec::new();
    for p in &d.partitions {
        parts.push(match disks::filesystem_on(ctx.root, p)? {
            Some(fs) => format!("{p}: {}", disks::describe_fs(&fs)),
            None => format!("{p}: no filesystem recognised"),
        });
    }
    let claimed = load_claims(ctx)?
        .claims
        .iter()
        .any(|c| c.label == rule.label && c.disk == d.name && c.bytes == d.bytes);
    let first = disks::partition_name(&d.name, 1);
    if claimed
        && d.partitions == [first.clone()]
        && disks::filesystem_on(ctx.root, &first)?.is_none()
    {
        return Ok(DiskState::Unfinished(first));
    }
    let mut what = sigs;
    if !d.partitions.is_empty() {
        what.push(format!("partitions {}", parts.join(", ")));
    }
    Ok(DiskState::Foreign(what.join("; ")))
}

/// Formats (if blank), records the mount and mounts.
fn apply(ctx: &mut Ctx<'_>, rule: &StorageRule, d: &DiskInfo) -> Result<String> {
    let label = &rule.label;
    let fs_name = rule.filesystem.name();
    let (dev, mut did) = match classify(ctx, rule, d)? {
        DiskState::Labelled(dev) => (
            dev,
            format!("{} already {fs_name} labelled {label}", d.dev()),
        ),
        DiskState::Unfinished(part) => {
            mkfs(ctx, rule, &part)?;
            (
                part,
                format!(
                    "finished formatting {} as {fs_name} labelled {label}",
                    d.dev()
                ),
            )
        }
        DiskState::Blank => {
            let mut claims = load_claims(ctx)?;
            claims.claims.retain(|c| c.label != *label);
            claims.claims.push(Claim {
                label: label.clone(),
                disk: d.name.clone(),
                bytes: d.bytes,
            });
            let json = serde_json::to_string_pretty(&claims).expect("claims serialise");
            atomic_write(&under(ctx.root, CLAIMS_PATH), json.as_bytes(), 0o644)?;
            ctx.runner.run(
                &Cmd::new("sfdisk")
                    .args(["--quiet", &d.dev()])
                    .stdin(format!("label: gpt\ntype={LINUX_DATA}, name=\"{label}\"\n")),
            )?;
            settle(ctx)?;
            let part = disks::partition_name(&d.name, 1);
            mkfs(ctx, rule, &part)?;
            (
                part,
                format!(
                    "formatted blank {} as {fs_name} labelled {label}",
                    describe_disk(d)
                ),
            )
        }
        DiskState::Foreign(what) => {
            return Err(Refusal {
                reason: "disk-holds-data",
                message: format!(
                    "storage `{label}`: {} holds data ({what}): it is never formatted; \
                     if it may be erased, clear it (`wipefs --all` on each of its partitions, \
                     then on {}) and reboot, else change the rule",
                    describe_disk(d),
                    d.dev()
                ),
            }
            .into())
        }
    };
    did.push_str(&mount(ctx, rule, &dev)?);
    Ok(did)
}

fn settle(ctx: &Ctx<'_>) -> Result<()> {
    ctx.runner
        .run(&Cmd::new("udevadm").args(["settle", "--timeout=30"]))
        .map(drop)
}

fn mkfs(ctx: &Ctx<'_>, rule: &StorageRule, part: &str) -> Result<()> {
    let argv = rule.filesystem.mkfs(&format!("/dev/{part}"), &rule.label);
    ctx.runner.run(&Cmd::new(&argv[0]).args(&argv[1..]))?;
    // The by-label link the mount uses comes from udev.
    settle(ctx)
}

/// The fstab line for the rule: by label, `nofail` so a missing disk does
/// not stop the boot.
pub fn fstab_line(rule: &StorageRule) -> String {
    let mut opts = vec!["nofail".to_string()];
    opts.extend(rule.options.iter().filter(|o| *o != "nofail").cloned());
    format!(
        "LABEL={} {} {} {} 0 2",
        rule.label,
        rule.mount.replace(' ', "\\040"),
        rule.filesystem.name(),
        opts.join(",")
    )
}

fn mount(ctx: &mut Ctx<'_>, rule: &StorageRule, dev: &str) -> Result<String> {
    let mut did = String::new();
    let mp = under(ctx.root, &rule.mount);
    fs::create_dir_all(&mp).with_context(|| format!("creating mount point {}", mp.display()))?;
    let fstab_path = under(ctx.root, "/etc/fstab");
    let fstab = read_optional(&fstab_path)?.unwrap_or_default();
    let line = fstab_line(rule);
    let existing = fstab.lines().find(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        !l.trim_start().starts_with('#') && f.get(1) == Some(&line.split(' ').nth(1).unwrap_or(""))
    });
    match existing {
        Some(l) if l.split_whitespace().next() == Some(&format!("LABEL={}", rule.label)) => {}
        Some(l) => anyhow::bail!(
            "storage `{}`: /etc/fstab already mounts something else at {}: `{l}`",
            rule.label,
            rule.mount
        ),
        None => {
            let mut text = fstab.clone();
            if !text.is_empty() && !text.ends_with('\n') {
                text.push('\n');
            }
            text.push_str(&line);
            text.push('\n');
            atomic_write(&fstab_path, text.as_bytes(), 0o644)?;
            did.push_str(", added to /etc/fstab");
        }
    }
    let mounted = disks::mounts(ctx.root)?
        .iter()
        .any(|m| m.mount_point == rule.mount);
    if mounted {
        did.push_str(&format!(", already mounted at {}", rule.mount));
    } else if let Err(e) = ctx.runner.run(&Cmd::new("mount").arg(&rule.mount)) {
        // systemd may have mounted it from fstab meanwhile (`nofail`
        // mounts do not hold up the boot, so they race the agent).
        let now = disks::mounts(ctx.root)?;
        if !now.iter().any(|m| m.mount_point == rule.mount) {
            return Err(e);
        }
        did.push_str(&format!(", mounted at {} by systemd", rule.mount));
    } else {
        did.push_str(&format!(", mounted /dev/{dev} at {}", rule.mount));
    }
    Ok(did)
}

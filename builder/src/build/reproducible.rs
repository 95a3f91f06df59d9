//! Reproducible builds: one timestamp (SOURCE_DATE_EPOCH) for everything
//! the build writes, so the same inputs give the same image bytes.

use std::fs;
use std::path::Path;

use anyhow::{bail, Context, Result};
use nix::sys::stat::{utimensat, UtimensatFlags};
use nix::sys::time::TimeSpec;

use super::archive_epoch::EpochSource;
use crate::exec::Cmd;
use crate::profile::{OutputFormat, Profile};

/// The host programs that write a build's bytes run with a fixed locale
/// and time zone, whatever the calling shell has: a tool that formats a
/// date or sorts by locale then writes the same bytes everywhere.
pub fn hermetic(cmd: Cmd) -> Cmd {
    cmd.env("LC_ALL", "C.UTF-8")
        .env("LANGUAGE", "")
        .env("TZ", "UTC")
}

/// The Debian packages of the host tools whose version shapes the bytes
/// of the base rootfs (mmdebstrap; for a foreign architecture the host's
/// dpkg unpacks, see cross.rs), with their installed versions.
pub fn rootfs_tools(foreign: bool) -> serde_json::Value {
    let mut tools = vec!["mmdebstrap"];
    if foreign {
        tools.push("dpkg");
    }
    versions(&tools)
}

/// The same for the steps after the tree: mkfs.ext4 writes the root
/// filesystem, mksquashfs the netboot root, qemu-img the qcow2.
pub fn image_tools(profile: &Profile) -> serde_json::Value {
    let mut tools = vec!["e2fsprogs"];
    for f in &profile.outputs {
        match f {
            OutputFormat::Raw => {}
            OutputFormat::Qcow2 => tools.push("qemu-utils"),
            OutputFormat::Netboot => tools.push("squashfs-tools"),
        }
    }
    versions(&tools)
}

fn versions(packages: &[&str]) -> serde_json::Value {
    packages
        .iter()
        .map(|p| (p.to_string(), crate::doctor::installed_version(p).into()))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

/// The build's timestamp and where it came from: $SOURCE_DATE_EPOCH if
/// set, else the pinned Debian snapshot's time, else none yet (the
/// archive's date is looked up later, see [`crate::plan::Plan::resolve_epoch`]).
pub fn source_date_epoch(profile: &Profile) -> Result<(Option<i64>, EpochSource)> {
    if let Some(v) = std::env::var_os("SOURCE_DATE_EPOCH") {
        let s = v.to_string_lossy();
        let epoch: i64 = s
            .trim()
            .parse()
            .with_context(|| format!("SOURCE_DATE_EPOCH={s} is not a number of seconds"))?;
        return Ok((Some(epoch), EpochSource::Environment));
    }
    Ok(match profile.debian.snapshot.as_deref() {
        Some(snapshot) => (
            Some(snapshot_epoch(snapshot)?),
            EpochSource::Snapshot {
                snapshot: snapshot.to_owned(),
            },
        ),
        None => (None, EpochSource::Unresolved),
    })
}

/// Seconds since 1970 of a snapshot.debian.org timestamp `YYYYMMDDTHHMMSSZ`.
pub fn snapshot_epoch(ts: &str) -> Result<i64> {
    let b = ts.as_bytes();
    let valid = b.len() == 16
        && b[8] == b'T'
        && b[15] == b'Z'
        && b[..8].iter().chain(&b[9..15]).all(u8::is_ascii_digit);
    if !valid {
        bail!("snapshot `{ts}` is not of the form YYYYMMDDTHHMMSSZ");
    }
    let n = |r: std::ops::Range<usize>| ts[r].parse::<i64>().expect("digits checked");
    let (y, mo, d) = (n(0..4), n(4..6), n(6..8));
    let (h, mi, s) = (n(9..11), n(11..13), n(13..15));
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || s > 60 {
        bail!("snapshot `{ts}` is not a valid date and time");
    }
    Ok(days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + s)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's
/// algorithm).
pub fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

/// (year, month, day, hour, minute, second) of a Unix time, UTC.
pub fn civil_from_epoch(epoch: i64) -> (i64, i64, i64, i64, i64, i64) {
    let days = epoch.div_euclid(86400);
    let secs = epoch.rem_euclid(86400);
    let z = days + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + if m <= 2 { 1 } else { 0 };
    (y, m, d, secs / 3600, secs % 3600 / 60, secs % 60)
}

/// Sets every file time below `root` that is newer than `epoch` to
/// `epoch` (as `tar --clamp-mtime` does), without following links.
pub fn clamp_mtimes(root: &Path, epoch: i64) -> Result<usize> {
    let mut changed = 0;
    let mut stack = vec![root.to_path_buf()];
    let ts = TimeSpec::new(epoch, 0);
    while let Some(dir) = stack.pop() {
        let entries = fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))?;
        for e in entries {
            let e = e?;
            let meta = e.metadata()?;
            if meta.is_dir() {
                stack.push(e.path());
            }
            changed += clamp_one(&e.path(), &meta, epoch, &ts)?;
        }
    }
    let meta = fs::symlink_metadata(root).with_context(|| format!("reading {}", root.display()))?;
    changed += clamp_one(root, &meta, epoch, &ts)?;
    Ok(changed)
}

fn clamp_one(path: &Path, meta: &fs::Metadata, epoch: i64, ts: &TimeSpec) -> Result<usize> {
    use std::os::unix::fs::MetadataExt;
    if meta.mtime() <= epoch && meta.atime() <= epoch {
        return Ok(0);
    }
    utimensat(None, path, ts, ts, UtimensatFlags::NoFollowSymlink)
        .with_context(|| format!("setting the time of {}", path.display()))?;
    Ok(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_timestamps_convert() {
        assert_eq!(snapshot_epoch("19700101T000000Z").unwrap(), 0);
        assert_eq!(snapshot_epoch("20251120T123456Z").unwrap(), 1_763_642_096);
        assert!(snapshot_epoch("2025-11-20").is_err());
        assert!(snapshot_epoch("20251320T000000Z").is_err());
    }

    #[test]
    fn civil_round_trips() {
        for epoch in [0, 951_782_400, 1_763_642_096, 4_102_444_799] {
            let (y, m, d, h, mi, s) = civil_from_epoch(epoch);
            assert_eq!(
                days_from_civil(y, m, d) * 86400 + h * 3600 + mi * 60 + s,
                epoch
            );
        }
        assert_eq!(civil_from_epoch(951_782_400), (2000, 2, 29, 0, 0, 0));
    }

    #[test]
    fn newer_times_are_clamped_older_kept() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("sub")).unwrap();
        fs::write(dir.path().join("sub/new"), "x").unwrap();
        fs::write(dir.path().join("old"), "x").unwrap();
        let old = TimeSpec::new(1000, 0);
        utimensat(
            None,
            &dir.path().join("old"),
            &old,
            &old,
            UtimensatFlags::NoFollowSymlink,
        )
        .unwrap();
        std::os::unix::fs::symlink("/nonexistent", dir.path().join("link")).unwrap();
        clamp_mtimes(dir.path(), 5000).unwrap();
        assert_eq!(
            fs::metadata(dir.path().join("sub/new")).unwrap().mtime(),
            5000
        );
        assert_eq!(fs::metadata(dir.path().join("old")).unwrap().mtime(), 1000);
        assert_eq!(
            fs::symlink_metadata(dir.path().join("link"))
                .unwrap()
                .mtime(),
            5000
        );
        assert_eq!(fs::metadata(dir.path().join("sub")).unwrap().mtime(), 5000);
    }
}

//! The build cache: content-addressed layers (base rootfs tarballs, each
//! tree step's changes under layers/, and container blobs under
//! blobs/sha256/), with locking so two builds and a
//! prune can run at once safely.
//!
//! Builds hold a shared lock on the cache for their whole run; `prune`
//! takes it exclusively, so it never removes what a running build uses.
//! Producing an entry holds that entry's own lock, so a second build
//! asking for the same layer waits and then reuses it. Entries are
//! written under a temporary name and renamed, so a killed build never
//! leaves a half-written entry under a real name.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use crate::fsutil;
use crate::profile::ByteSize;

const ROOTFS: &str = "rootfs";
const LAYERS: &str = "layers";
const BLOBS: &str = "blobs/sha256";
const WORK: &str = "work";
/// Rootfs and layer entries are zstd-compressed tarballs: half the size of
/// a plain tar (744 MB became 337 MB for a role), for ~1 s more per build.
pub const TARBALL_EXT: &str = ".tar.zst";

pub struct Cache {
    pub dir: PathBuf,
}

/// Held while a build runs; prune waits for it.
pub struct BuildLock(#[allow(dead_code)] Flock<File>);

/// Held while one entry is produced.
pub struct EntryLock(#[allow(dead_code)] Flock<File>);

/// What the cache knows of a rootfs entry, beside its tarball.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EntryMeta {
    pub summary: String,
    pub created: u64,
    pub last_used: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    pub kind: &'static str,
    pub key: String,
    pub path: PathBuf,
    pub size: u64,
    pub last_used: u64,
    pub summary: String,
}

impl Cache {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Cache { dir: dir.into() }
    }

    /// Shared lock for a build's whole run.
    pub fn lock_for_build(&self) -> Result<BuildLock> {
        let f = fsutil::lock_file(&self.dir.join(".lock"))?;
        let lock = Flock::lock(f, FlockArg::LockShared)
            .map_err(|(_, e)| e)
            .with_context(|| format!("locking the cache {}", self.dir.display()))?;
        Ok(BuildLock(lock))
    }

    /// Exclusive lock of one rootfs entry while it is produced.
    pub fn lock_rootfs(&self, key: &str) -> Result<EntryLock> {
        let f = fsutil::lock_file(&self.rootfs_dir().join(format!(".{key}.lock")))?;
        let lock = Flock::lock(f, FlockArg::LockExclusive)
            .map_err(|(_, e)| e)
            .with_context(|| format!("locking cache entry {key}"))?;
        Ok(EntryLock(lock))
    }

    pub fn rootfs_dir(&self) -> PathBuf {
        self.dir.join(ROOTFS)
    }

    pub fn rootfs_tar(&self, key: &str) -> PathBuf {
        self.rootfs_dir().join(format!("{key}{TARBALL_EXT}"))
    }

    pub fn layers_dir(&self) -> PathBuf {
        self.dir.join(LAYERS)
    }

    /// A tree step's layer (see build/layers.rs): its tarball…
    pub fn layer_tar(&self, key: &str) -> PathBuf {
        self.layers_dir().join(format!("{key}{TARBALL_EXT}"))
    }

    /// …and what it deletes, its facts and when it was used.
    pub fn layer_meta_path(&self, key: &str) -> PathBuf {
        self.layers_dir().join(format!("{key}.json"))
    }

    pub fn work_dir(&self) -> PathBuf {
        self.dir.join(WORK)
    }

    /// Records that a rootfs entry was made or used now.
    pub fn touch_rootfs(&self, key: &str, summary: &str) -> Result<()> {
        touch(&self.rootfs_dir().join(format!("{key}.json")), summary)
    }

    /// Records that a layer was used now.
    pub fn touch_layer(&self, key: &str) -> Result<()> {
        touch(&self.layer_meta_path(key), "")
    }

    /// Every finished entry, most recently used first.
    pub fn entries(&self) -> Result<Vec<Entry>> {
        let mut out = Vec::new();
        for (kind, sub, suffix) in [
            ("rootfs", ROOTFS, TARBALL_EXT),
            ("layer", LAYERS, TARBALL_EXT),
            ("blob", BLOBS, ""),
        ] {
            let dir = self.dir.join(sub);
            let Ok(rd) = fs::read_dir(&dir) else { continue };
            for e in rd {
                let e = e.with_context(|| format!("listing {}", dir.display()))?;
                let name = e.file_name().to_string_lossy().into_owned();
                let is_file = |e: &fs::DirEntry| {
                    e.file_type()
                        .map(|t| t.is_file())
                        .with_context(|| format!("reading {}", e.path().display()))
                };
                // Hidden names are locks and unfinished writes.
                if name.starts_with('.') || !name.ends_with(suffix) || !is_file(&e)? {
                    continue;
                }
                let key = name.trim_end_matches(suffix).to_owned();
                let meta = e
                    .metadata()
                    .with_context(|| format!("reading {}", e.path().display()))?;
                let side = read_meta(&dir.join(format!("{key}.json")));
                out.push(Entry {
                    kind,
                    key,
                    path: e.path(),
                    size: meta.len(),
                    last_used: side
                        .as_ref()
                        .map(|m| m.last_used)
                        .unwrap_or_else(|| mtime_secs(&meta)),
                    summary: side.map(|m| m.summary).unwrap_or_default(),
                });
            }
        }
        out.sort_by(|a, b| b.last_used.cmp(&a.last_used).then(a.key.cmp(&b.key)));
        Ok(out)
    }

    /// Removes entries unused for longer than `older_than`, then the least
    /// recently used until the cache is at most `max_size`, and leftovers
    /// of killed builds. Waits for running builds to finish.
    pub fn prune(
        &self,
        older_than: Option<Duration>,
        max_size: Option<ByteSize>,
    ) -> Result<PruneReport> {
        if !self.dir.is_dir() {
            bail!("no cache at {}", self.dir.display());
        }
        let f = fsutil::lock_file(&self.dir.join(".lock"))?;
        let _exclusive = Flock::lock(f, FlockArg::LockExclusive)
            .map_err(|(_, e)| e)
            .context("waiting for running builds to release the cache")?;
        let mut report = PruneReport::default();
        let now = now_secs();
        let mut entries = self.entries()?;
        // Oldest last: pop from the end while over budget.
        let mut kept_size: u64 = entries.iter().map(|e| e.size).sum();
        let mut keep = Vec::new();
        for e in entries.drain(..) {
            let too_old = older_than.is_some_and(|d| now.saturating_sub(e.last_used) > d.as_secs());
            if too_old {
                kept_size -= e.size;
                self.remove(&e, &mut report)?;
            } else {
                keep.push(e);
            }
        }
        if let Some(max) = max_size {
            while kept_size > max.0 {
                let Some(e) = keep.pop() else { break };
                kept_size -= e.size;
                self.remove(&e, &mut report)?;
            }
        }
        // Unfinished writes and work trees: no build is running now.
        for sub in [ROOTFS, LAYERS, BLOBS] {
            if let Ok(rd) = fs::read_dir(self.dir.join(sub)) {
                for e in rd.flatten() {
                    let name = e.file_name().to_string_lossy().into_owned();
                    // and plain-tar rootfs entries of older nodeforge versions
                    let legacy = sub == ROOTFS && name.ends_with(".tar");
                    // A blob's writer lock (oci::cache): no writer now.
                    let blob_lock = sub == BLOBS && name.ends_with(".lock");
                    if name.contains(".partial") || legacy || blob_lock {
                        report.bytes += e.metadata().map(|m| m.len()).unwrap_or(0);
                        fs::remove_file(e.path())
                            .with_context(|| format!("removing {}", e.path().display()))?;
                        report.leftovers += 1;
                    }
                }
            }
        }
        if let Ok(rd) = fs::read_dir(self.work_dir()) {
            for e in rd.flatten() {
                fs::remove_dir_all(e.path())
                    .with_context(|| format!("removing {}", e.path().display()))?;
                report.leftovers += 1;
            }
        }
        report.kept = keep.len();
        report.kept_bytes = kept_size;
        Ok(report)
    }

    fn remove(&self, e: &Entry, report: &mut PruneReport) -> Result<()> {
        fs::remove_file(&e.path).with_context(|| format!("removing {}", e.path.display()))?;
        let _ = fs::remove_file(e.path.with_file_name(format!("{}.json", e.key)));
        report.removed += 1;
        report.bytes += e.size;
        Ok(())
    }
}

#[derive(Debug, Default, Serialize)]
pub struct PruneReport {
    pub removed: usize,
    pub bytes: u64,
    pub leftovers: usize,
    pub kept: usize,
    pub kept_bytes: u64,
}

/// Sets `last_used` in the metadata file at `path` to now, keeping
/// whatever else it holds (a layer's deletions and facts); a missing or
/// unreadable one is made anew with `summary`.
fn touch(path: &Path, summary: &str) -> Result<()> {
    let now = now_secs();
    let mut meta = fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .filter(|v| v.is_object())
        .unwrap_or_else(|| serde_json::json!({ "summary": summary, "created": now }));
    meta["last_used"] = now.into();
    fsutil::atomic_write(path, &serde_json::to_vec_pretty(&meta)?)
}

fn read_meta(path: &Path) -> Option<EntryMeta> {
    serde_json::from_slice(&fs::read(path).ok()?).ok()
}

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn mtime_secs(m: &fs::Metadata) -> u64 {
    m.modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// "7d", "12h", "30m", "45s" (or a bare number of seconds).
pub fn parse_duration(s: &str) -> Result<Duration> {
    let t = s.trim();
    let (num, unit) = t.split_at(t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len()));
    let n: u64 = num
        .parse()
        .with_context(|| format!("`{s}` is not a duration: write e.g. 7d, 12h, 30m"))?;
    let mult = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        "w" => 7 * 86400,
        _ => bail!("`{s}` has an unknown unit `{unit}`: use s, m, h, d or w"),
    };
    Ok(Duration::from_secs(n * mult))
}

/// Human form of an age in seconds.
pub fn age(secs: u64) -> String {
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

pub fn seconds_since(t: u64) -> u64 {
    now_secs().saturating_sub(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(c: &Cache, key: &str, size: usize, last_used: u64) {
        fs::create_dir_all(c.rootfs_dir()).unwrap();
        fs::write(c.rootfs_tar(key), vec![0u8; size]).unwrap();
        let meta = EntryMeta {
            summary: key.into(),
            created: last_used,
            last_used,
        };
        fs::write(
            c.rootfs_dir().join(format!("{key}.json")),
            serde_json::to_vec(&meta).unwrap(),
        )
        .unwrap();
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("7d").unwrap().as_secs(), 7 * 86400);
        assert_eq!(parse_duration("90").unwrap().as_secs(), 90);
        let why = |s: &str| parse_duration(s).unwrap_err().to_string();
        assert_eq!(
            why("7 years"),
            "`7 years` has an unknown unit ` years`: use s, m, h, d or w"
        );
        assert!(
            why("d").starts_with("`d` is not a duration"),
            "{}",
            why("d")
        );
    }

    #[test]
    fn prune_by_age_then_size_keeps_the_recent() {
        let dir = tempfile::tempdir().unwrap();
        let c = Cache::new(dir.path());
        let now = now_secs();
        entry(&c, "old", 100, now - 30 * 86400);
        entry(&c, "mid", 100, now - 3600);
        entry(&c, "new", 100, now);
        fs::write(c.rootfs_dir().join(".x.partial.tar.zst"), "half").unwrap();
        fs::write(c.rootfs_dir().join("old-format.tar"), "plain").unwrap();
        fs::create_dir_all(c.work_dir().join("base-abc/rootfs")).unwrap();
        // A tree step's layer, and one a killed build was writing.
        fs::create_dir_all(c.layers_dir()).unwrap();
        fs::write(c.layer_tar("lay"), vec![0u8; 10]).unwrap();
        let meta = EntryMeta {
            summary: "overlays of x".into(),
            created: now - 60 * 86400,
            last_used: now - 60 * 86400,
        };
        fs::write(c.layer_meta_path("lay"), serde_json::to_vec(&meta).unwrap()).unwrap();
        fs::write(c.layers_dir().join(".lay2.partial.x1.tar.zst"), "half").unwrap();
        // A blob's writer lock (oci::cache): a leftover too.
        let blobs = dir.path().join(BLOBS);
        fs::create_dir_all(&blobs).unwrap();
        fs::write(blobs.join(format!(".{}.lock", "a".repeat(64))), "").unwrap();
        let ls: Vec<(String, &str)> = c
            .entries()
            .unwrap()
            .into_iter()
            .map(|e| (e.key, e.kind))
            .collect();
        assert_eq!(
            ls,
            [
                ("new".to_owned(), "rootfs"),
                ("mid".to_owned(), "rootfs"),
                ("old".to_owned(), "rootfs"),
                ("lay".to_owned(), "layer")
            ]
        );

        let r = c.prune(Some(Duration::from_secs(7 * 86400)), None).unwrap();
        assert_eq!((r.removed, r.leftovers, r.kept), (2, 5, 2));
        assert_eq!(fs::read_dir(&blobs).unwrap().count(), 0);
        assert!(!c.layer_tar("lay").exists());
        assert!(!c.layer_meta_path("lay").exists());
        assert!(!c.layers_dir().join(".lay2.partial.x1.tar.zst").exists());
        assert!(!c.rootfs_dir().join("old-format.tar").exists());
        assert!(!c.rootfs_tar("old").exists());
        assert!(!c.rootfs_dir().join("old.json").exists());
        assert!(!c.work_dir().join("base-abc").exists());

        let r = c.prune(None, Some(ByteSize(150))).unwrap();
        assert_eq!((r.removed, r.kept, r.kept_bytes), (1, 1, 100));
        assert!(c.rootfs_tar("new").exists());
        assert!(!c.rootfs_tar("mid").exists());
    }

    #[test]
    fn entry_lock_serialises_producers() {
        let dir = tempfile::tempdir().unwrap();
        let c = Cache::new(dir.path());
        let first = c.lock_rootfs("k").unwrap();
        let path = dir.path().to_path_buf();
        let (tx, rx) = std::sync::mpsc::channel();
        let t = std::thread::spawn(move || {
            let _second = Cache::new(path).lock_rootfs("k").unwrap();
            tx.send(()).unwrap();
        });
        assert_eq!(
            rx.recv_timeout(Duration::from_millis(300)),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout),
            "second lock taken while the first is held"
        );
        drop(first);
        rx.recv_timeout(Duration::from_secs(5))
            .expect("second lock after the first is released");
        t.join().unwrap();
    }
}

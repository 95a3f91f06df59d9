//! The transfer: index the running slot, fetch and check the missing
//! chunks into a staging file, then write the inactive slot from the
//! running slot, the staged chunks and zeros, and read it back, checking
//! every chunk (a copied one that changed since the index is fetched).

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

use anyhow::{Context, Result};
use nodeforge_delta::assemble::{self, Plan, Source};
use nodeforge_delta::ChunkIndex;
use sha2::{Digest, Sha256};

use super::{HttpOrigin, UpdateRefused};

/// Remote chunks next to each other are fetched in one range of at most
/// this many bytes: a whole-slot fetch is thousands of chunks.
const MAX_RANGE: u64 = 8 << 20;
/// Left free on the state partition beyond the staged chunks: the stacks'
/// volumes live there and keep writing while the update runs.
const RESERVE: u64 = 64 << 20;

/// What the transfer moved, and how long each part took.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Transferred {
    pub fetched_bytes: u64,
    pub copied_bytes: u64,
    pub secs: PartSecs,
}

/// Seconds spent fetching into staging, writing the slot and reading it
/// back.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PartSecs {
    pub fetch: f64,
    pub write: f64,
    pub read_back: f64,
}

/// The size of a file or block device.
pub fn size_of(path: &Path) -> Result<u64> {
    let mut f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    f.seek(SeekFrom::End(0))
        .with_context(|| format!("reading the size of {}", path.display()))
}

/// The running slot's chunks, cut as the new index was cut.
pub fn index_slot(path: &Path, want: &ChunkIndex) -> Result<ChunkIndex> {
    let what = || format!("indexing the running slot {}", path.display());
    let mut f = File::open(path).with_context(what)?;
    nodeforge_delta::index(&mut f, want.cutting).with_context(what)
}

/// How long a kept index of the running slot is used.
const INDEX_KEPT_SECS: u64 = 3600;

/// The running slot's index as kept in `cache`.
#[derive(serde::Serialize, serde::Deserialize)]
struct KeptIndex {
    slot: String,
    made_at: u64,
    index: ChunkIndex,
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The running slot's index as an earlier try of this boot kept it in
/// `cache` (under /run), if it is there, for this slot and cutting, and
/// under an hour old. Indexing reads and hashes the whole slot, the
/// dearest part of an update on a small node; a kept index may be stale
/// where the running slot was written since, which costs only those
/// chunks: the read-back finds the copies that no longer match and fetches
/// them.
pub fn kept_index(path: &Path, want: &ChunkIndex, cache: &Path) -> Option<ChunkIndex> {
    let kept: KeptIndex = serde_json::from_slice(&fs::read(cache).ok()?).ok()?;
    (kept.slot == path.display().to_string()
        && kept.index.cutting == want.cutting
        && unix_now().saturating_sub(kept.made_at) < INDEX_KEPT_SECS
        && kept.index.problem().is_none())
    .then_some(kept.index)
}

/// Keeps `index` of the running slot `path` in `cache` for the next try.
/// Only a saving: an index that cannot be kept is made again next time.
pub fn keep_index(path: &Path, index: ChunkIndex, cache: &Path) -> ChunkIndex {
    let kept = KeptIndex {
        slot: path.display().to_string(),
        made_at: unix_now(),
        index,
    };
    if let (Some(dir), Ok(bytes)) = (cache.parent(), serde_json::to_vec(&kept)) {
        if fs::create_dir_all(dir).is_ok() {
            let _ = crate::fsutil::atomic_write(cache, &bytes, 0o600);
        }
    }
    kept.index
}

/// Free bytes for an unprivileged writer in the filesystem of `dir`.
fn free_bytes(dir: &Path) -> Result<u64> {
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())
        .with_context(|| format!("{} has a NUL byte", dir.display()))?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid C string and a zeroed statvfs the call fills.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error())
            .with_context(|| format!("reading the free space of {}", dir.display()));
    }
    Ok(st.f_bavail as u64 * st.f_frsize as u64)
}

/// One slot's transfer: from where, what, into which slot.
pub struct Transfer<'a> {
    pub origin: &'a HttpOrigin,
    /// The released file holding the slot, and the slot's offset in it.
    pub file: &'a str,
    pub base: u64,
    pub plan: &'a Plan,
    pub running: &'a Path,
    pub target: &'a Path,
    pub before_writing: Option<&'a dyn Fn() -> Result<()>>,
}

impl Transfer<'_> {
    /// Fetches what the plan lacks into a staging file under `state_dir`,
    /// checking each chunk, then writes the target slot and reads it back.
    pub fn run(&self, state_dir: &Path) -> Result<Transferred> {
        fs::create_dir_all(state_dir)
            .with_context(|| format!("creating the update state {}", state_dir.display()))?;
        let free = free_bytes(state_dir)?;
        let need = self.plan.fetch_bytes + RESERVE;
        if need > free {
            return Err(UpdateRefused::NoSpace {
                dir: state_dir.display().to_string(),
                free,
                need,
            }
            .into());
        }
        let staging_path = state_dir.join("staging");
        let result = self.stage_and_write(&staging_path);
        let _ = fs::remove_file(&staging_path);
        result
    }

    fn stage_and_write(&self, staging_path: &Path) -> Result<Transferred> {
        let (origin, file, base, plan) = (self.origin, self.file, self.base, self.plan);
        let (running, target) = (self.running, self.target);
        let staging = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(staging_path)
            .with_context(|| format!("creating {}", staging_path.display()))?;
        let clock = std::time::Instant::now();
        let staged = stage(origin, file, base, plan, &staging, staging_path)?;
        let fetch_secs = clock.elapsed().as_secs_f64();
        if let Some(retire) = self.before_writing {
            retire()?;
        }

        let old = File::open(running).with_context(|| format!("opening {}", running.display()))?;
        let new = OpenOptions::new()
            .write(true)
            .read(true)
            .open(target)
            .with_context(|| format!("opening the inactive slot {}", target.display()))?;
        let room = size_of(target)?;
        // A chunk the read-back finds changed in the running slot (it is
        // written to) is fetched now, checked by assemble.
        let fetch = |offset: u64, buf: &mut [u8]| match staged.get(&offset) {
            Some(&at) => staging.read_exact_at(buf, at),
            None => {
                let bytes = origin
                    .get_range(file, base + offset, buf.len() as u64)
                    .map_err(|e| io::Error::other(format!("{e:#}")))?;
                buf.copy_from_slice(&bytes);
                Ok(())
            }
        };
        let clock = std::time::Instant::now();
        let done = assemble::assemble(
            plan,
            room,
            |at, buf| old.read_exact_at(buf, at),
            fetch,
            |at, buf| write_or_zero(&new, at, buf),
        )
        .with_context(|| format!("writing the inactive slot {}", target.display()))?;
        new.sync_all()
            .with_context(|| format!("flushing {}", target.display()))?;
        let write_secs = clock.elapsed().as_secs_f64();
        // Read back from the disk, not from the pages just written.
        let clock = std::time::Instant::now();
        drop_cache(&new, 0, 0);
        let mended = assemble::verify(
            plan,
            |at, buf| new.read_exact_at(buf, at),
            fetch,
            |at, buf| {
                write_or_zero(&new, at, buf)?;
                new.sync_data()?;
                drop_cache(&new, at, buf.len() as u64);
                Ok(())
            },
        )
        .with_context(|| format!("reading back the inactive slot {}", target.display()))?;
        Ok(Transferred {
            fetched_bytes: done.fetched_bytes + mended.refetched_bytes,
            copied_bytes: done.copied_bytes - mended.refetched_bytes,
            secs: PartSecs {
                fetch: fetch_secs,
                write: write_secs,
                read_back: clock.elapsed().as_secs_f64(),
            },
        })
    }
}

/// Drops the page cache of `f` over `len` bytes at `at` (0: to the end),
/// so that what is read next comes from the disk. Failure only means it
/// may come from the cache.
fn drop_cache(f: &File, at: u64, len: u64) {
    use std::os::fd::AsRawFd;
    // SAFETY: advice on a valid descriptor.
    unsafe {
        libc::posix_fadvise(
            f.as_raw_fd(),
            at as libc::off_t,
            len as libc::off_t,
            libc::POSIX_FADV_DONTNEED,
        )
    };
}

/// Writes `buf` at `at`, or, when it is all zeros, asks the kernel to zero
/// the range (fallocate's ZERO_RANGE: a block device passes it on as one
/// write-zeroes request), which costs far less than sending the zeros;
/// most of a slot is free space. Falls back to writing them.
fn write_or_zero(f: &File, at: u64, buf: &[u8]) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    if !buf.is_empty() && buf.iter().all(|&b| b == 0) {
        // SAFETY: a valid descriptor; offsets and length checked by the
        // kernel.
        let r = unsafe {
            libc::fallocate(
                f.as_raw_fd(),
                libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE,
                at as libc::off_t,
                buf.len() as libc::off_t,
            )
        };
        if r == 0 {
            return Ok(());
        }
    }
    f.write_all_at(buf, at)
}

/// Fetches every remote chunk of `plan` (neighbours in one range), checks
/// each against its sha256 and appends it to `staging`. Returns where each
/// chunk (by its offset in the slot) is in the staging file.
fn stage(
    origin: &HttpOrigin,
    file: &str,
    base: u64,
    plan: &Plan,
    mut staging: &File,
    staging_path: &Path,
) -> Result<HashMap<u64, u64>> {
    let remote: Vec<_> = plan
        .steps
        .iter()
        .filter(|(_, s)| *s == Source::Remote)
        .map(|(c, _)| c)
        .collect();
    let mut at = HashMap::new();
    let mut written = 0u64;
    let mut i = 0;
    while i < remote.len() {
        // The run of chunks that follow each other, up to MAX_RANGE.
        let start = remote[i].offset;
        let mut end = i;
        let mut len = u64::from(remote[i].len);
        while end + 1 < remote.len()
            && remote[end + 1].offset == start + len
            && len + u64::from(remote[end + 1].len) <= MAX_RANGE
        {
            end += 1;
            len += u64::from(remote[end].len);
        }
        let bytes = origin.get_range(file, base + start, len)?;
        let mut pos = 0usize;
        for c in &remote[i..=end] {
            let part = &bytes[pos..pos + c.len as usize];
            let got = hex::encode(Sha256::digest(part));
            if got != c.sha256 {
                return Err(UpdateRefused::BadPayload {
                    file: origin.locate(file),
                    offset: c.offset,
                    len: c.len,
                    got,
                    want: c.sha256.clone(),
                }
                .into());
            }
            staging
                .write_all(part)
                .with_context(|| format!("writing {}", staging_path.display()))?;
            at.insert(c.offset, written);
            written += u64::from(c.len);
            pos += c.len as usize;
        }
        i = end + 1;
    }
    staging
        .sync_data()
        .with_context(|| format!("flushing {}", staging_path.display()))?;
    Ok(at)
}

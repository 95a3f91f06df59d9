//! The transfer: index the running slot, fetch and check the missing
//! chunks into a staging file, then write the inactive slot from the
//! running slot, the staged chunks and zeros, and read it back.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

use anyhow::{bail, Context, Result};
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

/// What the transfer moved.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Transferred {
    pub fetched_bytes: u64,
    pub copied_bytes: u64,
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
        let staged = stage(origin, file, base, plan, &staging, staging_path)?;
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
        let done = assemble::assemble(
            plan,
            room,
            |at, buf| old.read_exact_at(buf, at),
            |offset, buf| match staged.get(&offset) {
                Some(&at) => staging.read_exact_at(buf, at),
                // A local chunk that changed since it was indexed (the
                // running slot is written to): fetched now, checked by
                // assemble.
                None => {
                    let bytes = origin
                        .get_range(file, base + offset, buf.len() as u64)
                        .map_err(|e| io::Error::other(format!("{e:#}")))?;
                    buf.copy_from_slice(&bytes);
                    Ok(())
                }
            },
            |at, buf| write_or_zero(&new, at, buf),
        )
        .with_context(|| format!("writing the inactive slot {}", target.display()))?;
        new.sync_all()
            .with_context(|| format!("flushing {}", target.display()))?;
        // Read back from the disk, not from the pages just written.
        use std::os::fd::AsRawFd;
        // SAFETY: advice on a valid descriptor; failure only means the
        // read-back may come from the cache.
        unsafe { libc::posix_fadvise(new.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        read_back(&new, plan, target)?;
        Ok(Transferred {
            fetched_bytes: done.fetched_bytes,
            copied_bytes: done.copied_bytes,
        })
    }
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

/// Reads the written slot back and checks every chunk: what the disk holds
/// is what the signed index describes, whatever the write path did.
fn read_back(new: &File, plan: &Plan, target: &Path) -> Result<()> {
    let mut buf = Vec::new();
    for (c, _) in &plan.steps {
        buf.resize(c.len as usize, 0);
        new.read_exact_at(&mut buf, c.offset)
            .with_context(|| format!("reading back {}", target.display()))?;
        let got = hex::encode(Sha256::digest(&buf));
        if got != c.sha256 {
            bail!(
                "{} does not read back what was written: the chunk at offset {} has sha256 {got}, \
                 {} was written; the disk may be failing",
                target.display(),
                c.offset,
                c.sha256
            );
        }
    }
    Ok(())
}

//! Reading a flashed target back, past the page cache, against the bmap:
//! after writing (`verify`) or while writing (`write_and_verify`).

use super::buf::{AlignedBuf, ALIGN};
use super::source::ImageSource;
use super::write::{self, plan_chunks, Chunk, Hooks, Target, WriteReport, CHUNK};
use crate::bmap::Bmap;
use anyhow::{anyhow, bail, Context, Result};
use indicatif::ProgressBar;
use sha2::{Digest, Sha256};
use std::cell::RefCell;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::Path;
use std::sync::mpsc::{channel, sync_channel};
use std::time::{Duration, Instant};

/// One bmap range whose bytes on the target differ from the image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadRange {
    pub first_block: u64,
    pub last_block: u64,
    pub bytes: Range<u64>,
    pub expected: String,
    pub actual: String,
}

/// The target does not hold what the bmap says was written.
#[derive(Debug, thiserror::Error)]
pub struct VerifyMismatch {
    pub target: String,
    pub ranges: Vec<BadRange>,
}

impl fmt::Display for VerifyMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} differs from the image in {} range(s):",
            self.target,
            self.ranges.len()
        )?;
        for r in self.ranges.iter().take(10) {
            write!(
                f,
                "\n  bytes {}..{} (blocks {}-{}): read sha256 {}, expected {}",
                r.bytes.start, r.bytes.end, r.first_block, r.last_block, r.actual, r.expected
            )?;
        }
        if self.ranges.len() > 10 {
            write!(f, "\n  ... and {} more", self.ranges.len() - 10)?;
        }
        write!(f, "\nthe card or stick may be failing or fake (smaller than it claims); flash again or use another one")
    }
}

#[derive(Clone, Copy, Debug)]
pub struct VerifyReport {
    /// Bytes read back and checked.
    pub bytes: u64,
    /// Ranges without a checksum in the bmap, so not checked.
    pub unchecked_ranges: usize,
    /// From the start of verifying (for `write_and_verify`, of writing).
    pub elapsed: Duration,
}

/// Opens `path` for reads that come from the device, not the page cache:
/// O_DIRECT, or else flush and drop the cached pages first.
pub fn open_uncached(path: &Path) -> Result<(File, bool)> {
    match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
    {
        Ok(f) => Ok((f, true)),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            let f = File::open(path)
                .with_context(|| format!("opening {} to verify", path.display()))?;
            drop_cache(&f)
                .with_context(|| format!("dropping cached pages of {}", path.display()))?;
            Ok((f, false))
        }
        Err(e) => Err(e).with_context(|| format!("opening {} to verify", path.display())),
    }
}

/// Writes back dirty pages and evicts the file's (or device's) page cache.
pub fn drop_cache(f: &File) -> std::io::Result<()> {
    f.sync_data()?;
    let fd = f.as_raw_fd();
    // SAFETY: advisory call on a valid fd.
    let r = unsafe { libc::posix_fadvise(fd, 0, 0, libc::POSIX_FADV_DONTNEED) };
    if r != 0 {
        return Err(std::io::Error::from_raw_os_error(r));
    }
    if f.metadata()?.file_type().is_block_device() {
        // Block devices keep a buffer cache too; BLKFLSBUF empties it.
        // SAFETY: BLKFLSBUF takes no argument.
        unsafe { libc::ioctl(fd, BLKFLSBUF as _) };
    }
    Ok(())
}

const BLKFLSBUF: libc::c_ulong = 0x1261;

/// Checks every mapped range of `bmap` on the target at `path`, except those
/// overlapping `skip` (areas a seed stamp was allowed to change). All
/// mismatching ranges are collected into a `VerifyMismatch` error.
pub fn verify(
    path: &Path,
    bmap: &Bmap,
    skip: &[Range<u64>],
    progress: &ProgressBar,
) -> Result<VerifyReport> {
    let started = Instant::now();
    let (file, direct) = open_uncached(path)?;
    let wanted = |i: usize| {
        let b = bmap.byte_range(&bmap.ranges[i]);
        bmap.ranges[i].sha256.is_some() && !skip.iter().any(|s| s.start < b.end && b.start < s.end)
    };
    let (bad, bytes) = check_ranges(path, &file, direct, bmap, &wanted, progress)?;
    finish(path, bmap, bad, bytes, started)
}

fn finish(
    path: &Path,
    bmap: &Bmap,
    bad: Vec<BadRange>,
    bytes: u64,
    started: Instant,
) -> Result<VerifyReport> {
    if !bad.is_empty() {
        return Err(VerifyMismatch {
            target: path.display().to_string(),
            ranges: bad,
        }
        .into());
    }
    let unchecked_ranges = bmap.ranges.iter().filter(|r| r.sha256.is_none()).count();
    Ok(VerifyReport {
        bytes,
        unchecked_ranges,
        elapsed: started.elapsed(),
    })
}

/// Reads back and hashes the ranges `wanted` selects.
fn check_ranges(
    path: &Path,
    file: &File,
    direct: bool,
    bmap: &Bmap,
    wanted: &dyn Fn(usize) -> bool,
    progress: &ProgressBar,
) -> Result<(Vec<BadRange>, u64)> {
    let plan: Vec<_> = plan_chunks(bmap, CHUNK as u64)
        .into_iter()
        .filter(|c| wanted(c.range))
        .collect();
    read_and_hash(path, file, direct, bmap, plan.iter(), progress)
}

/// Reads `chunks` (whole ranges, in order) back from the target on one
/// thread while hashing them on this one; returns the mismatching ranges
/// and the bytes read.
fn read_and_hash<'p>(
    path: &Path,
    file: &File,
    direct: bool,
    bmap: &Bmap,
    chunks: impl Iterator<Item = &'p Chunk> + Send,
    progress: &ProgressBar,
) -> Result<(Vec<BadRange>, u64)> {
    const BUFFERS: usize = 3;
    let (full_tx, full_rx) = sync_channel::<(&Chunk, AlignedBuf, usize)>(BUFFERS);
    let (empty_tx, empty_rx) = channel::<AlignedBuf>();
    for _ in 0..BUFFERS {
        // Room to widen a chunk to whole aligned blocks on both sides.
        empty_tx
            .send(AlignedBuf::new(CHUNK + 2 * ALIGN))
            .map_err(|_| anyhow!("buffer pool closed"))?;
    }
    let mut bad = Vec::new();
    let mut bytes = 0u64;
    std::thread::scope(|s| -> Result<()> {
        let reader = s.spawn(move || -> Result<()> {
            for c in chunks {
                let Ok(mut buf) = empty_rx.recv() else {
                    return Ok(());
                };
                let len = (c.end - c.start) as usize;
                // O_DIRECT reads whole aligned blocks: bmaps with small
                // blocks and images ending mid-block need the chunk widened,
                // keeping `len` bytes from `skip` on.
                let (from, skip) = if direct {
                    let from = c.start / ALIGN as u64 * ALIGN as u64;
                    (from, (c.start - from) as usize)
                } else {
                    (c.start, 0)
                };
                let want = if direct {
                    (skip + len).div_ceil(ALIGN) * ALIGN
                } else {
                    len
                };
                buf.set_len(want);
                let got = read_up_to(file, &mut buf, from).with_context(|| {
                    format!(
                        "reading back range {}..{} from {}",
                        c.start,
                        c.end,
                        path.display()
                    )
                })?;
                if got < skip + len {
                    bail!(
                        "{} ends at byte {} before the image's range {}..{}",
                        path.display(),
                        from + got as u64,
                        c.start,
                        c.end
                    );
                }
                buf.set_len(skip + len);
                if full_tx.send((c, buf, skip)).is_err() {
                    return Ok(());
                }
            }
            Ok(())
        });
        let mut hasher = Sha256::new();
        for (c, buf, skip) in full_rx.iter() {
            let data = &buf[skip..];
            hasher.update(data);
            bytes += data.len() as u64;
            progress.inc(data.len() as u64);
            let _ = empty_tx.send(buf);
            if !c.ends_range {
                continue;
            }
            let got: [u8; 32] = std::mem::take(&mut hasher).finalize().into();
            bad.extend(mismatch(bmap, c.range, got));
        }
        reader
            .join()
            .map_err(|_| anyhow!("read-back thread panicked"))?
    })?;
    Ok((bad, bytes))
}

/// The range's entry for a VerifyMismatch if `got` is not its checksum.
fn mismatch(bmap: &Bmap, range: usize, got: [u8; 32]) -> Option<BadRange> {
    let r = &bmap.ranges[range];
    let want = r.sha256.filter(|w| *w != got)?;
    Some(BadRange {
        first_block: r.first,
        last_block: r.last,
        bytes: bmap.byte_range(r),
        expected: hex::encode(want),
        actual: hex::encode(got),
    })
}

/// Writes the image and verifies it at once: a second thread reads back
/// (O_DIRECT) each chunk as soon as its direct write has completed, while
/// later chunks are being written, so verifying costs little extra time.
/// The partition tables are written only after that read-back passed.
/// Ranges touching the table zones, or ending mid-block, are read back after
/// the final sync. Targets without O_DIRECT are written, then `verify`d.
pub fn write_and_verify(
    src: &mut ImageSource,
    bmap: &Bmap,
    target: &mut Target,
    write_bar: &ProgressBar,
    verify_bar: &ProgressBar,
) -> Result<(WriteReport, VerifyReport)> {
    let started = Instant::now();
    let path = target.path().to_path_buf();
    let (file, direct) = open_uncached(&path)?;
    if !direct {
        drop(file);
        let w = write::write_image(src, bmap, target, write_bar)?;
        return Ok((w, verify(&path, bmap, &[], verify_bar)?));
    }
    let plan = plan_chunks(bmap, CHUNK as u64);
    let mut follow: Vec<bool> = bmap.ranges.iter().map(|r| r.sha256.is_some()).collect();
    for c in &plan {
        if c.deferred || c.start % ALIGN as u64 != 0 || (c.end - c.start) % ALIGN as u64 != 0 {
            follow[c.range] = false;
        }
    }
    // The read-back proves each followed range, so hashing the source too
    // would only say whom to blame; a raw image can be re-read for that
    // after a failure, a compressed stream cannot, so it is hashed as read.
    let random_access = src.known_size()?.is_some();
    let check_source = |i: usize| !random_access || !follow[i];

    let (tx, rx) = channel::<usize>();
    let tx = RefCell::new(Some(tx));
    let outcome: RefCell<(Vec<BadRange>, u64)> = RefCell::new((Vec::new(), 0));
    let written = std::thread::scope(|s| -> Result<WriteReport> {
        let (file, plan_ref, path_ref) = (&file, &plan, &path);
        // Reads back, in order, the chunks the writer reports as written.
        let written = rx.into_iter().map(move |i| &plan_ref[i]);
        let handle =
            s.spawn(move || read_and_hash(path_ref, file, true, bmap, written, verify_bar));
        let handle = RefCell::new(Some(handle));
        let join = || -> Result<()> {
            tx.borrow_mut().take();
            if let Some(h) = handle.borrow_mut().take() {
                *outcome.borrow_mut() = h
                    .join()
                    .map_err(|_| anyhow!("read-back thread panicked"))??;
            }
            Ok(())
        };
        let hooks = Hooks {
            check_source: &check_source,
            written: &mut |i| {
                if let (true, Some(tx)) = (follow[plan[i].range], tx.borrow().as_ref()) {
                    let _ = tx.send(i);
                }
            },
            before_tables: &mut || {
                join()?;
                let bad = &outcome.borrow().0;
                if bad.is_empty() {
                    return Ok(());
                }
                Err(anyhow::Error::new(VerifyMismatch { target: path.display().to_string(), ranges: bad.clone() })
                    .context("read-back failed, so no partition table was written (the target will not boot half-written)"))
            },
        };
        let w = write::write_planned(src, bmap, &plan, target, write_bar, hooks);
        let joined = join();
        let w = w?;
        joined?;
        Ok(w)
    });
    let (mut bad, mut bytes) = outcome.into_inner();
    if !bad.is_empty() {
        blame_image(src, bmap, &bad)?;
    }
    let write = written?;
    let rest = |i: usize| !follow[i] && bmap.ranges[i].sha256.is_some();
    let (more_bad, more_bytes) = check_ranges(&path, &file, direct, bmap, &rest, verify_bar)?;
    blame_image(src, bmap, &more_bad)?;
    bad.extend(more_bad);
    bytes += more_bytes;
    finish(&path, bmap, bad, bytes, started).map(|v| (write, v))
}

/// After a read-back mismatch: if the image itself does not match its bmap
/// there, say so (the card is not to blame).
fn blame_image(src: &mut ImageSource, bmap: &Bmap, bad: &[BadRange]) -> Result<()> {
    if src.known_size()?.is_none() {
        return Ok(());
    }
    let mut buf = AlignedBuf::new(CHUNK);
    for b in bad {
        let Some(i) = bmap.ranges.iter().position(|r| r.first == b.first_block) else {
            continue;
        };
        let mut hasher = Sha256::new();
        let mut pos = b.bytes.start;
        while pos < b.bytes.end {
            let n = ((b.bytes.end - pos) as usize).min(CHUNK);
            buf.set_len(n);
            src.read_at(pos, &mut buf)?;
            hasher.update(&buf[..]);
            pos += n as u64;
        }
        if let Some(e) = write::image_mismatch(src.path(), bmap, i, hasher.finalize().into()) {
            return Err(e);
        }
    }
    Ok(())
}

/// Reads until `buf` is full or the end is reached; returns bytes read.
fn read_up_to(f: &File, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match f.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => {
                done += n;
                // A short read means the end (and O_DIRECT could not go on
                // from an unaligned offset anyway).
                if n % ALIGN != 0 {
                    break;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

//! Writing an image's mapped ranges to a target, partition tables last.

use super::buf::{AlignedBuf, ALIGN};
use super::device::TargetKind;
use super::source::ImageSource;
use crate::bmap::Bmap;
use anyhow::{anyhow, bail, Context, Result};
use indicatif::ProgressBar;
use sha2::{Digest, Sha256};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, sync_channel};
use std::time::{Duration, Instant};

/// Size of one read/write; large enough that per-call overhead vanishes.
pub const CHUNK: usize = 8 << 20;
/// The first and last MiB of a disk hold its partition tables (MBR, primary
/// GPT; backup GPT) and boot code; they are wiped first and written last.
pub const TABLE_ZONE: u64 = 1 << 20;
/// Flush to the device this often so progress reflects the device, not RAM.
const SYNC_EVERY: u64 = 256 << 20;
const BUFFERS: usize = 3;

/// An open flash target: a block device held exclusively, or a file.
pub struct Target {
    file: File,
    path: PathBuf,
    kind: TargetKind,
    /// O_DIRECT is set on `file` right now.
    direct: bool,
    /// O_DIRECT works on this target at all.
    direct_ok: bool,
}

impl Target {
    /// Opens `path` for writing: block devices with O_EXCL (fails while
    /// mounted or claimed), files created and extended to `image_size`.
    pub fn open(path: &Path, kind: TargetKind, image_size: u64) -> Result<Target> {
        let excl = if kind == TargetKind::BlockDevice {
            libc::O_EXCL
        } else {
            0
        };
        let open = |flags: i32| {
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(kind == TargetKind::RegularFile)
                .truncate(false)
                .custom_flags(flags)
                .open(path)
        };
        let (file, direct) = match open(excl | libc::O_DIRECT) {
            Ok(f) => (f, true),
            // tmpfs and some FUSE filesystems refuse O_DIRECT.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                (open(excl).map_err(|e| open_error(path, e))?, false)
            }
            Err(e) => return Err(open_error(path, e)),
        };
        if kind == TargetKind::RegularFile {
            let len = file
                .metadata()
                .with_context(|| format!("reading size of {}", path.display()))?
                .len();
            if len < image_size {
                file.set_len(image_size).with_context(|| {
                    format!("extending {} to {image_size} bytes", path.display())
                })?;
            }
        }
        Ok(Target {
            file,
            path: path.to_path_buf(),
            kind,
            direct,
            direct_ok: direct,
        })
    }

    /// The target as an ordinary (page-cached) file, for seed stamping.
    pub fn file(&mut self) -> Result<&mut File> {
        self.set_direct(false)
            .with_context(|| format!("clearing O_DIRECT on {}", self.path.display()))?;
        Ok(&mut self.file)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn kind(&self) -> TargetKind {
        self.kind
    }

    /// Size in bytes (a block device's capacity or a file's length).
    pub fn size(&self) -> Result<u64> {
        let mut size = 0u64;
        if self.kind == TargetKind::BlockDevice {
            // SAFETY: BLKGETSIZE64 writes one u64 to the pointer.
            let r =
                unsafe { libc::ioctl(self.file.as_raw_fd(), BLKGETSIZE64, &mut size as *mut u64) };
            if r < 0 {
                return Err(io::Error::last_os_error())
                    .with_context(|| format!("reading size of {}", self.path.display()));
            }
            return Ok(size);
        }
        Ok(self
            .file
            .metadata()
            .with_context(|| format!("reading size of {}", self.path.display()))?
            .len())
    }

    fn set_direct(&mut self, on: bool) -> io::Result<()> {
        if self.direct == on {
            return Ok(());
        }
        let fd = self.file.as_raw_fd();
        // SAFETY: fcntl on a valid fd.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        let flags = if on {
            flags | libc::O_DIRECT
        } else {
            flags & !libc::O_DIRECT
        };
        // SAFETY: as above.
        if unsafe { libc::fcntl(fd, libc::F_SETFL, flags) } < 0 {
            return Err(io::Error::last_os_error());
        }
        self.direct = on;
        Ok(())
    }

    /// Writes all of `data` at `offset`, directly when it is aligned.
    pub fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        let path = self.path.clone();
        let ctx = || {
            format!(
                "writing range {}..{} to {}",
                offset,
                offset + data.len() as u64,
                path.display()
            )
        };
        let aligned = offset % ALIGN as u64 == 0
            && data.len() % ALIGN == 0
            && data.as_ptr() as usize % ALIGN == 0;
        self.set_direct(aligned && self.direct_ok)
            .with_context(ctx)?;
        match self.file.write_all_at(data, offset) {
            // Some filesystems accept O_DIRECT at open but not for writes.
            Err(e) if self.direct && e.raw_os_error() == Some(libc::EINVAL) => {
                self.direct_ok = false;
                self.set_direct(false).with_context(ctx)?;
                self.file.write_all_at(data, offset).with_context(ctx)
            }
            r => r.with_context(ctx),
        }
    }

    pub fn sync(&self) -> Result<()> {
        self.file
            .sync_data()
            .with_context(|| format!("flushing writes to {}", self.path.display()))
    }

    /// Zeroes the first and last TABLE_ZONE of the target so that an
    /// interrupted flash leaves no old partition table that looks valid.
    pub fn wipe_tables(&mut self) -> Result<()> {
        let size = self.size()?;
        // The tail zone starts on a block boundary, so it can be up to one
        // block longer than TABLE_ZONE when the size is not block-aligned.
        let zeros = AlignedBuf::new(TABLE_ZONE as usize + ALIGN);
        let head = TABLE_ZONE.min(size);
        self.write_at(0, &zeros[..head as usize])?;
        let tail_start = size.saturating_sub(TABLE_ZONE) / ALIGN as u64 * ALIGN as u64;
        if tail_start >= head {
            self.write_at(tail_start, &zeros[..(size - tail_start) as usize])?;
        }
        self.sync()
    }

    /// Asks the kernel to re-read the new partition table (block devices);
    /// loop devices without partscan refuse, which is fine.
    pub fn reread_partitions(&self) {
        if self.kind == TargetKind::BlockDevice {
            // SAFETY: BLKRRPART takes no argument.
            unsafe { libc::ioctl(self.file.as_raw_fd(), BLKRRPART as _) };
        }
    }
}

const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;
const BLKRRPART: libc::c_ulong = 0x125F;

fn open_error(path: &Path, e: io::Error) -> anyhow::Error {
    if e.raw_os_error() == Some(libc::EBUSY) {
        anyhow!("{} is busy: mounted, or held by another program (an automounter, a file manager); unmount/close it and retry", path.display())
    } else {
        anyhow!(e).context(format!("opening {} for writing", path.display()))
    }
}

/// One piece of work for the writer: bytes `start..end` of the image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chunk {
    pub range: usize,
    pub start: u64,
    pub end: u64,
    /// Inside a partition-table zone: held back and written last.
    pub deferred: bool,
    /// The last chunk of its bmap range (its checksum can be checked).
    pub ends_range: bool,
}

/// Splits the bmap's ranges into chunks of at most `max` bytes, cut at the
/// partition-table zone boundaries so each chunk is deferred or not.
pub fn plan_chunks(bmap: &Bmap, max: u64) -> Vec<Chunk> {
    let size = bmap.image_size;
    let tail = size.saturating_sub(TABLE_ZONE) / ALIGN as u64 * ALIGN as u64;
    let zone = |off: u64| off < TABLE_ZONE || off >= tail;
    let mut cuts = [TABLE_ZONE, tail];
    cuts.sort_unstable();
    let mut out = Vec::new();
    for (i, r) in bmap.ranges.iter().enumerate() {
        let span = bmap.byte_range(r);
        let mut pos = span.start;
        while pos < span.end {
            // Cut at multiples of `max` so that inner chunks stay aligned
            // even when a bmap's small blocks start a range mid-page.
            let mut end = ((pos / max + 1) * max).min(span.end);
            if let Some(c) = cuts.iter().find(|&&c| c > pos && c < end) {
                end = *c;
            }
            out.push(Chunk {
                range: i,
                start: pos,
                end,
                deferred: zone(pos),
                ends_range: end == span.end,
            });
            pos = end;
        }
    }
    out
}

#[derive(Clone, Copy, Debug)]
pub struct WriteReport {
    pub bytes: u64,
    pub elapsed: Duration,
}

/// Copies the mapped ranges of `src` to `target`: wipes the old partition
/// tables, streams everything else while checking each range against the
/// bmap, then writes the table zones (tail, then head) and syncs.
pub fn write_image(
    src: &mut ImageSource,
    bmap: &Bmap,
    target: &mut Target,
    progress: &ProgressBar,
) -> Result<WriteReport> {
    let plan = plan_chunks(bmap, CHUNK as u64);
    let hooks = Hooks {
        check_source: &|_| true,
        written: &mut |_| {},
        before_tables: &mut || Ok(()),
    };
    write_planned(src, bmap, &plan, target, progress, hooks)
}

/// How a verifier rides along with `write_planned`.
pub struct Hooks<'a> {
    /// Whether to check range `i` of the source against the bmap while
    /// reading it. Ranges in the table zones are always checked, so that
    /// what is written last is known good before it is written.
    pub check_source: &'a (dyn Fn(usize) -> bool + Sync),
    /// Called after chunk `plan[i]` (outside the table zones) is written.
    pub written: &'a mut dyn FnMut(usize),
    /// Called after everything but the table zones is written and synced;
    /// an error here stops the flash before any partition table is written.
    pub before_tables: &'a mut dyn FnMut() -> Result<()>,
}

/// The error for an image range whose bytes do not hash to the bmap's value.
pub fn image_mismatch(
    image: &Path,
    bmap: &Bmap,
    range: usize,
    got: [u8; 32],
) -> Option<anyhow::Error> {
    let r = &bmap.ranges[range];
    let want = r.sha256.filter(|w| *w != got)?;
    let span = bmap.byte_range(r);
    Some(anyhow!(
        "{} does not match its bmap: blocks {}-{} (bytes {}..{}) hash to {}, the bmap says {}; the image or the bmap is damaged, or they are from different builds",
        image.display(), r.first, r.last, span.start, span.end, hex::encode(got), hex::encode(want)
    ))
}

/// `write_image` over a given plan, with hooks for a verifier.
pub fn write_planned(
    src: &mut ImageSource,
    bmap: &Bmap,
    plan: &[Chunk],
    target: &mut Target,
    progress: &ProgressBar,
    hooks: Hooks<'_>,
) -> Result<WriteReport> {
    let started = Instant::now();
    if let Some(size) = src.known_size()? {
        if size != bmap.image_size {
            bail!("{} is {size} bytes but its bmap describes {} bytes; they belong to different builds", src.path().display(), bmap.image_size);
        }
    }
    target.wipe_tables()?;
    let mut in_zone = vec![false; bmap.ranges.len()];
    for c in plan.iter().filter(|c| c.deferred) {
        in_zone[c.range] = true;
    }
    let check = |i: usize| in_zone[i] || (hooks.check_source)(i);
    let (full_tx, full_rx) = sync_channel::<(usize, AlignedBuf)>(BUFFERS);
    let (empty_tx, empty_rx) = channel::<AlignedBuf>();
    for _ in 0..BUFFERS {
        empty_tx
            .send(AlignedBuf::new(CHUNK))
            .map_err(|_| anyhow!("buffer pool closed"))?;
    }
    let mut deferred: Vec<(u64, AlignedBuf)> = Vec::new();
    let mut written = 0u64;
    let mut since_sync = 0u64;
    std::thread::scope(|s| -> Result<()> {
        let empty_tx = empty_tx;
        let check = &check;
        let reader = s.spawn(move || -> Result<()> {
            let mut hasher = Sha256::new();
            for (i, c) in plan.iter().enumerate() {
                // The writer dropped its end: it failed and reports why.
                let Ok(mut buf) = empty_rx.recv() else {
                    return Ok(());
                };
                buf.set_len((c.end - c.start) as usize);
                src.read_at(c.start, &mut buf)?;
                if check(c.range) {
                    hasher.update(&buf[..]);
                    if c.ends_range {
                        let got = std::mem::take(&mut hasher).finalize().into();
                        if let Some(e) = image_mismatch(src.path(), bmap, c.range, got) {
                            return Err(e);
                        }
                    }
                }
                if full_tx.send((i, buf)).is_err() {
                    return Ok(());
                }
            }
            Ok(())
        });
        let result = (|| -> Result<()> {
            for (i, buf) in full_rx.iter() {
                let c = &plan[i];
                if c.deferred {
                    let mut copy = AlignedBuf::new(buf.len());
                    copy.set_len(buf.len());
                    copy.copy_from_slice(&buf);
                    deferred.push((c.start, copy));
                } else {
                    target.write_at(c.start, &buf)?;
                    (hooks.written)(i);
                    since_sync += buf.len() as u64;
                    if since_sync >= SYNC_EVERY {
                        target.sync()?;
                        since_sync = 0;
                    }
                }
                written += buf.len() as u64;
                progress.inc(buf.len() as u64);
                let _ = empty_tx.send(buf);
            }
            Ok(())
        })();
        // Unblock the reader whichever channel it waits on.
        drop(full_rx);
        drop(empty_tx);
        let read = reader
            .join()
            .map_err(|_| anyhow!("image reader thread panicked"))?;
        read.and(result)
    })?;
    target.sync()?;
    (hooks.before_tables)()?;
    // Backup GPT first, then the primary table / MBR, sector 0 very last.
    deferred.sort_by_key(|(off, _)| std::cmp::Reverse(*off));
    for (off, buf) in &deferred {
        target.write_at(*off, buf)?;
    }
    target.sync()?;
    Ok(WriteReport {
        bytes: written,
        elapsed: started.elapsed(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bmap::BmapRange;

    #[test]
    fn chunks_split_at_table_zones_and_size() {
        let bmap = Bmap {
            image_size: 64 << 20,
            block_size: 4096,
            ranges: vec![
                BmapRange {
                    first: 0,
                    last: 511,
                    sha256: None,
                }, // 0..2 MiB
                BmapRange {
                    first: 4096,
                    last: 4096 + 2559,
                    sha256: None,
                }, // 16..26 MiB
                BmapRange {
                    first: 16128,
                    last: 16383,
                    sha256: None,
                }, // last MiB
            ],
        };
        let got: Vec<(u64, u64, bool, bool)> = plan_chunks(&bmap, 8 << 20)
            .iter()
            .map(|c| (c.start >> 10, c.end >> 10, c.deferred, c.ends_range))
            .collect();
        assert_eq!(
            got,
            vec![
                (0, 1024, true, false),
                (1024, 2048, false, true),
                (16384, 24576, false, false),
                (24576, 26624, false, true),
                (64512, 65536, true, true),
            ]
        );
    }
}

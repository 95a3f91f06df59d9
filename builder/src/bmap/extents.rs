//! Finding the data (non-hole) extents of a file: lseek SEEK_DATA/SEEK_HOLE,
//! then FIEMAP, then "everything is data".

use super::BmapRange;
use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::fd::AsRawFd;

/// Byte extents holding data, sorted, non-overlapping, within `0..size`.
pub fn data_extents(file: &File, size: u64) -> io::Result<Vec<Range<u64>>> {
    match seek_extents(file, size) {
        Ok(v) => return Ok(v),
        // EINVAL/ENXIO at offset 0 of a non-empty file means no SEEK_DATA
        // support (very old kernels or odd filesystems); try FIEMAP.
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::EINVAL) | Some(libc::EOPNOTSUPP)
            ) => {}
        Err(e) => return Err(e),
    }
    match fiemap_extents(file, size) {
        Ok(v) => Ok(v),
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::EOPNOTSUPP) | Some(libc::ENOTTY) | Some(libc::EINVAL)
            ) =>
        {
            Ok(std::iter::once(0..size).collect())
        }
        Err(e) => Err(e),
    }
}

fn lseek(file: &File, off: u64, whence: libc::c_int) -> io::Result<Option<u64>> {
    // SAFETY: plain syscall on a valid fd.
    let r = unsafe { libc::lseek(file.as_raw_fd(), off as libc::off_t, whence) };
    if r >= 0 {
        return Ok(Some(r as u64));
    }
    let e = io::Error::last_os_error();
    // ENXIO: no more data after `off`.
    if e.raw_os_error() == Some(libc::ENXIO) {
        Ok(None)
    } else {
        Err(e)
    }
}

fn seek_extents(file: &File, size: u64) -> io::Result<Vec<Range<u64>>> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < size {
        let Some(data) = lseek(file, pos, libc::SEEK_DATA)? else {
            break;
        };
        if data >= size {
            break;
        }
        let hole = lseek(file, data, libc::SEEK_HOLE)?
            .unwrap_or(size)
            .min(size);
        out.push(data..hole);
        pos = hole;
    }
    Ok(out)
}

// struct fiemap / fiemap_extent from <linux/fiemap.h>.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct FiemapExtent {
    fe_logical: u64,
    fe_physical: u64,
    fe_length: u64,
    fe_reserved64: [u64; 2],
    fe_flags: u32,
    fe_reserved: [u32; 3],
}

const EXTENTS_PER_CALL: usize = 256;

#[repr(C)]
struct Fiemap {
    fm_start: u64,
    fm_length: u64,
    fm_flags: u32,
    fm_mapped_extents: u32,
    fm_extent_count: u32,
    fm_reserved: u32,
    fm_extents: [FiemapExtent; EXTENTS_PER_CALL],
}

const FS_IOC_FIEMAP: libc::c_ulong = 0xC020_660B;
const FIEMAP_FLAG_SYNC: u32 = 0x1;
const FIEMAP_EXTENT_LAST: u32 = 0x1;
// Preallocated-but-unwritten extents read as zeros; like bmaptool's
// SEEK_DATA path we still count them as mapped, so nothing is special-cased.

fn fiemap_extents(file: &File, size: u64) -> io::Result<Vec<Range<u64>>> {
    let mut out: Vec<Range<u64>> = Vec::new();
    let mut start = 0u64;
    loop {
        let mut fm = Box::new(Fiemap {
            fm_start: start,
            fm_length: size - start,
            fm_flags: FIEMAP_FLAG_SYNC,
            fm_mapped_extents: 0,
            fm_extent_count: EXTENTS_PER_CALL as u32,
            fm_reserved: 0,
            fm_extents: [FiemapExtent::default(); EXTENTS_PER_CALL],
        });
        // SAFETY: fm is a correctly laid out, writable struct fiemap with
        // room for fm_extent_count extents.
        let r = unsafe {
            libc::ioctl(
                file.as_raw_fd(),
                FS_IOC_FIEMAP as _,
                &mut *fm as *mut Fiemap,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = fm.fm_mapped_extents as usize;
        if n == 0 {
            break;
        }
        let mut last = false;
        for e in &fm.fm_extents[..n] {
            let s = e.fe_logical.min(size);
            let end = (e.fe_logical + e.fe_length).min(size);
            match out.last_mut() {
                Some(prev) if prev.end >= s => prev.end = prev.end.max(end),
                _ if s < end => out.push(s..end),
                _ => {}
            }
            start = e.fe_logical + e.fe_length;
            last |= e.fe_flags & FIEMAP_EXTENT_LAST != 0;
        }
        if last || start >= size {
            break;
        }
    }
    Ok(out)
}

/// Byte extents to merged, block-granular ranges (without checksums).
pub fn to_block_ranges(extents: &[Range<u64>], block: u64) -> Vec<BmapRange> {
    let mut out: Vec<BmapRange> = Vec::new();
    for e in extents.iter().filter(|e| e.start < e.end) {
        let (first, last) = (e.start / block, (e.end - 1) / block);
        match out.last_mut() {
            Some(prev) if prev.last + 1 >= first => prev.last = prev.last.max(last),
            _ => out.push(BmapRange {
                first,
                last,
                sha256: None,
            }),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    #[test]
    fn seek_and_fiemap_agree_on_a_sparse_file() {
        let (_dir, path) = crate::testutil::scratch_path("sparse");
        let f = crate::disk::test_image::blank_file(&path);
        f.set_len(64 << 20).unwrap();
        f.write_all_at(&[1u8; 8192], 1 << 20).unwrap();
        f.write_all_at(&[2u8; 100], 40 << 20).unwrap();
        f.sync_all().unwrap();
        let seek = seek_extents(&f, 64 << 20).unwrap();
        let blocks = to_block_ranges(&seek, 4096);
        // Filesystems allocate in their own block size, so compare at
        // 1 MiB granularity: data around 1 MiB and 40 MiB, nothing else.
        let mib: Vec<(u64, u64)> = blocks
            .iter()
            .map(|r| ((r.first * 4096) >> 20, (r.last * 4096) >> 20))
            .collect();
        assert_eq!(mib, vec![(1, 1), (40, 40)], "{seek:?}");
        match fiemap_extents(&f, 64 << 20) {
            Ok(fm) => assert_eq!(to_block_ranges(&fm, 4096), blocks),
            Err(e) => eprintln!("FIEMAP unsupported here ({e}); only SEEK_DATA checked"),
        }
    }

    #[test]
    fn block_ranges_merge_adjacent_extents() {
        let r = to_block_ranges(&[0..100, 4096..5000, 3 * 4096..3 * 4096 + 1], 4096);
        assert_eq!(
            r,
            vec![
                BmapRange {
                    first: 0,
                    last: 1,
                    sha256: None
                },
                BmapRange {
                    first: 3,
                    last: 3,
                    sha256: None
                }
            ]
        );
    }
}

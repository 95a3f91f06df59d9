//! The EFI System Partition: FAT32 formatted and filled in-process.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::PathBuf;

use anyhow::{Context, Result};
use fatfs::{FatType, FileSystem, FormatVolumeOptions, FsOptions};

use super::region::Region;

/// What goes into one file of the FAT filesystem.
#[derive(Debug, Clone)]
pub enum Content {
    /// Copied from a file on the host (the rootfs).
    File(PathBuf),
    Bytes(Vec<u8>),
}

/// How the FAT volume is labelled and dated.
pub struct Volume<'a> {
    pub id: u32,
    pub label: &'a str,
    /// Every file's time (SOURCE_DATE_EPOCH); the current time when unset.
    pub epoch: Option<i64>,
}

/// Formats `image[offset..offset+size]` as FAT32 and writes `files`
/// (paths like `EFI/BOOT/BOOTX64.EFI`) into it.
pub fn write(
    image: &File,
    offset: u64,
    size: u64,
    volume: &Volume,
    files: &[(String, Content)],
) -> Result<()> {
    let (volume_id, label) = (volume.id, volume.label);
    let mut label_bytes = [b' '; 11];
    for (slot, b) in label_bytes
        .iter_mut()
        .zip(label.to_ascii_uppercase().bytes())
    {
        *slot = b;
    }
    fatfs::format_volume(
        Region::new(image, offset, size),
        FormatVolumeOptions::new()
            .fat_type(FatType::Fat32)
            .volume_id(volume_id)
            .volume_label(label_bytes),
    )
    .context("formatting the ESP as FAT32")?;
    let mut options = FsOptions::new().update_accessed_date(false);
    if let Some(epoch) = volume.epoch {
        options = options.time_provider(fixed_time(epoch));
    }
    let fs = FileSystem::new(Region::new(image, offset, size), options)
        .context("opening the new ESP")?;
    for (dest, content) in files {
        write_file(&fs, dest, content).with_context(|| format!("writing {dest} to the ESP"))?;
    }
    fs.unmount().context("closing the ESP")?;
    super::fat_fixup::fix_dot_entries(&mut Region::new(image, offset, size))
        .context("repairing directory entries of the ESP")?;
    Ok(())
}

/// A clock stopped at `epoch`, for FAT timestamps. fatfs wants a
/// `&'static`, so one small value per distinct epoch is leaked.
fn fixed_time(epoch: i64) -> &'static dyn fatfs::TimeProvider {
    use std::collections::HashMap;
    use std::sync::Mutex;
    static CLOCKS: Mutex<Option<HashMap<i64, &'static FixedTime>>> = Mutex::new(None);
    let mut clocks = CLOCKS.lock().unwrap_or_else(|e| e.into_inner());
    *clocks
        .get_or_insert_with(HashMap::new)
        .entry(epoch)
        .or_insert_with(|| Box::leak(Box::new(FixedTime::new(epoch))))
}

#[derive(Debug)]
struct FixedTime(fatfs::DateTime);

impl FixedTime {
    fn new(epoch: i64) -> Self {
        let (y, mo, d, h, mi, s) = crate::build::reproducible::civil_from_epoch(epoch);
        // FAT dates run from 1980 to 2107.
        let y = y.clamp(1980, 2107);
        FixedTime(fatfs::DateTime {
            date: fatfs::Date {
                year: y as u16,
                month: mo as u16,
                day: d as u16,
            },
            time: fatfs::Time {
                hour: h as u16,
                min: mi as u16,
                sec: s as u16,
                millis: 0,
            },
        })
    }
}

impl fatfs::TimeProvider for FixedTime {
    fn get_current_date(&self) -> fatfs::Date {
        self.0.date
    }
    fn get_current_date_time(&self) -> fatfs::DateTime {
        self.0
    }
}

fn write_file<T: fatfs::ReadWriteSeek>(
    fs: &FileSystem<T>,
    dest: &str,
    content: &Content,
) -> Result<()> {
    let root = fs.root_dir();
    let (dirs, name) = match dest.rsplit_once('/') {
        Some((d, n)) => (d, n),
        None => ("", dest),
    };
    let mut dir = root;
    for part in dirs.split('/').filter(|p| !p.is_empty()) {
        dir = match dir.open_dir(part) {
            Ok(d) => d,
            Err(_) => dir.create_dir(part)?,
        };
    }
    let mut out = dir.create_file(name)?;
    out.truncate()?;
    match content {
        Content::Bytes(b) => out.write_all(b)?,
        Content::File(p) => {
            let mut src = File::open(p).with_context(|| format!("opening {}", p.display()))?;
            copy(&mut src, &mut out).with_context(|| format!("copying {}", p.display()))?;
        }
    }
    out.flush()?;
    Ok(())
}

fn copy(src: &mut impl Read, dst: &mut impl Write) -> io::Result<()> {
    // Large buffers: fatfs writes cluster by cluster, and every call costs.
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = src.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        dst.write_all(&buf[..n])?;
    }
}

/// Reads one file back from a FAT partition of an image.
pub fn read_file(image: &File, offset: u64, size: u64, path: &str) -> Result<Vec<u8>> {
    let fs = FileSystem::new(
        Region::new(image, offset, size),
        FsOptions::new().update_accessed_date(false),
    )
    .context("opening the FAT filesystem")?;
    let mut f = fs
        .root_dir()
        .open_file(path)
        .with_context(|| format!("opening {path}"))?;
    let mut out = Vec::new();
    f.read_to_end(&mut out)
        .with_context(|| format!("reading {path}"))?;
    Ok(out)
}

/// A FAT volume serial derived from a (deterministic) UUID.
pub fn volume_id_from(seed: &uuid::Uuid) -> u32 {
    let b = seed.as_bytes();
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_round_trip_through_fat32() {
        let f = tempfile::tempfile().unwrap();
        f.set_len(80 << 20).unwrap();
        let files = vec![
            (
                "EFI/BOOT/BOOTX64.EFI".to_string(),
                Content::Bytes(vec![7u8; 300_000]),
            ),
            (
                "loader/loader.conf".to_string(),
                Content::Bytes(b"timeout 0\n".to_vec()),
            ),
        ];
        let volume = Volume {
            id: 0x1234_5678,
            label: "ESP",
            epoch: Some(1_700_000_000),
        };
        write(&f, 1 << 20, 64 << 20, &volume, &files).unwrap();
        assert_eq!(
            read_file(&f, 1 << 20, 64 << 20, "loader/loader.conf").unwrap(),
            b"timeout 0\n"
        );
        assert_eq!(
            read_file(&f, 1 << 20, 64 << 20, "EFI/BOOT/BOOTX64.EFI")
                .unwrap()
                .len(),
            300_000
        );
    }
}

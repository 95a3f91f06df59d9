//! The seed on the image: nodeforge-seed.toml in the boot partition (the
//! GPT ESP, or the Pi's FAT boot partition), written and read in-process
//! through the FAT filesystem, never by mounting.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

use anyhow::{bail, Context, Result};
use fatfs::{FileSystem, FsOptions};
use nodeforge_firstboot::seed::{Seed, SEED_FILE_NAME};

use crate::disk::layout::{ESP_TYPE, SECTOR};
use crate::disk::region::Region;

/// MBR partition types of FAT filesystems (the Pi's boot partition).
const MBR_FAT_TYPES: [u8; 4] = [0x0B, 0x0C, 0x0E, 0x06];
const MBR_GPT_PROTECTIVE: u8 = 0xEE;

/// Where the seed goes: the boot partition's byte range in the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootPartition {
    pub offset: u64,
    pub size: u64,
}

/// Finds the FAT partition that carries the seed: the GPT ESP, else the
/// first FAT partition of an MBR disk.
pub fn boot_partition(image: &Path) -> Result<BootPartition> {
    let f = File::open(image).with_context(|| format!("opening {}", image.display()))?;
    boot_partition_in(&f)
        .with_context(|| format!("finding the boot partition of {}", image.display()))
}

/// [`boot_partition`] of an open disk or image.
pub fn boot_partition_in(f: &File) -> Result<BootPartition> {
    let mut sector = [0u8; 512];
    f.read_exact_at(&mut sector, 0)
        .context("reading the partition table")?;
    if sector[510..] != [0x55, 0xAA] {
        bail!("no partition table (is it a nodeforge disk image?)");
    }
    let entries: Vec<&[u8]> = (0..4)
        .map(|i| &sector[446 + 16 * i..446 + 16 * (i + 1)])
        .collect();
    if entries.iter().any(|e| e[4] == MBR_GPT_PROTECTIVE) {
        let disk = gpt::GptConfig::new()
            .writable(false)
            .logical_block_size(gpt::disk::LogicalBlockSize::Lb512)
            .open_from_device(f)
            .context("reading the GPT")?;
        let esp = disk
            .partitions()
            .values()
            .find(|p| p.part_type_guid.guid == ESP_TYPE)
            .context("the GPT has no EFI system partition (ESP) to hold a seed")?;
        return Ok(BootPartition {
            offset: esp.first_lba * SECTOR,
            size: (esp.last_lba + 1 - esp.first_lba) * SECTOR,
        });
    }
    for e in entries {
        if MBR_FAT_TYPES.contains(&e[4]) {
            let lba = u32::from_le_bytes([e[8], e[9], e[10], e[11]]) as u64;
            let count = u32::from_le_bytes([e[12], e[13], e[14], e[15]]) as u64;
            return Ok(BootPartition {
                offset: lba * SECTOR,
                size: count * SECTOR,
            });
        }
    }
    bail!("no FAT boot partition to hold a seed")
}

/// Writes `seed` as nodeforge-seed.toml into the image's boot partition.
pub fn stamp(image: &Path, seed: &Seed) -> Result<()> {
    seed.validate().context("the seed is not valid")?;
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(image)
        .with_context(|| format!("opening {} for writing", image.display()))?;
    let part = boot_partition_in(&file)
        .with_context(|| format!("finding the boot partition of {}", image.display()))?;
    write_seed(&file, part, seed)
        .with_context(|| format!("writing the seed into {}", image.display()))?;
    file.sync_all()
        .with_context(|| format!("syncing {}", image.display()))
}

/// An earlier seed's bytes are overwritten in place first: a deleted or
/// truncated FAT file's data stays on the medium, and it may hold a key.
pub(super) fn write_seed(file: &File, part: BootPartition, seed: &Seed) -> Result<()> {
    let fs = FileSystem::new(
        Region::new(file, part.offset, part.size),
        FsOptions::new().update_accessed_date(false),
    )
    .context("opening the boot partition's FAT filesystem")?;
    {
        let root = fs.root_dir();
        if let Ok(mut old) = root.open_file(SEED_FILE_NAME) {
            let len = old.seek(SeekFrom::End(0))?;
            old.seek(SeekFrom::Start(0))?;
            old.write_all(&vec![0u8; len as usize])?;
            old.flush()?;
        }
        let mut f = root.create_file(SEED_FILE_NAME)?;
        f.truncate()?;
        f.write_all(seed.to_toml().as_bytes())?;
        f.flush()?;
    }
    fs.unmount().context("closing the boot partition")?;
    Ok(())
}

/// Reads the seed back from an image (None when it has none).
pub fn read_seed(image: &Path) -> Result<Option<Seed>> {
    let file = File::open(image).with_context(|| format!("opening {}", image.display()))?;
    read_seed_in(&file).with_context(|| format!("reading the seed of {}", image.display()))
}

/// [`read_seed`] of an open disk or image.
pub fn read_seed_in(file: &File) -> Result<Option<Seed>> {
    let part = boot_partition_in(file)?;
    let fs = FileSystem::new(
        Region::new(file, part.offset, part.size),
        FsOptions::new().update_accessed_date(false),
    )
    .context("opening the boot partition's FAT filesystem")?;
    let mut f = match fs.root_dir().open_file(SEED_FILE_NAME) {
        Ok(f) => f,
        Err(_) => return Ok(None),
    };
    let mut text = String::new();
    f.read_to_string(&mut text)?;
    Seed::from_toml(&text)
        .map(Some)
        .map_err(|e| anyhow::anyhow!("{SEED_FILE_NAME}: {e}"))
}

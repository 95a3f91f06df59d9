//! `nodeforge customize`: stamps a per-node seed into an image's boot
//! partition (the ESP, or the Pi's FAT boot partition) in-process, so one
//! role image serves many machines.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use fatfs::{FileSystem, FsOptions};
use nodeforge_firstboot::seed::{AuthKey, Seed, SEED_FILE_NAME};

use crate::disk::gpt_table;
use crate::disk::layout::ESP_TYPE;
use crate::disk::region::Region;

/// MBR partition types of FAT filesystems (the Pi's boot partition).
const MBR_FAT_TYPES: [u8; 4] = [0x0B, 0x0C, 0x0E, 0x06];

/// Where the seed goes: the boot partition's byte range in the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootPartition {
    pub offset: u64,
    pub size: u64,
}

/// Finds the FAT partition that carries the seed: the GPT ESP, else the
/// first FAT partition of an MBR disk.
pub fn boot_partition(image: &Path) -> Result<BootPartition> {
    let mut f = File::open(image).with_context(|| format!("opening {}", image.display()))?;
    let mut sector = [0u8; 512];
    f.read_exact(&mut sector)
        .with_context(|| format!("reading the partition table of {}", image.display()))?;
    if sector[510..] != [0x55, 0xAA] {
        bail!(
            "{} has no partition table (is it a nodeforge disk image?)",
            image.display()
        );
    }
    let entries: Vec<&[u8]> = (0..4)
        .map(|i| &sector[446 + 16 * i..446 + 16 * (i + 1)])
        .collect();
    if entries.iter().any(|e| e[4] == 0xEE) {
        let esp = gpt_table::find(image, ESP_TYPE, "EFI system (ESP)")?;
        return Ok(BootPartition {
            offset: esp.offset,
            size: esp.size,
        });
    }
    for e in entries {
        if MBR_FAT_TYPES.contains(&e[4]) {
            let lba = u32::from_le_bytes([e[8], e[9], e[10], e[11]]) as u64;
            let count = u32::from_le_bytes([e[12], e[13], e[14], e[15]]) as u64;
            return Ok(BootPartition {
                offset: lba * 512,
                size: count * 512,
            });
        }
    }
    bail!(
        "{} has no FAT boot partition to hold a seed",
        image.display()
    )
}

/// Writes `seed` as nodeforge-seed.toml into the image's boot partition.
/// An earlier seed's bytes are overwritten in place first: a deleted or
/// truncated FAT file's data stays on the medium, and it may hold a key.
pub fn stamp(image: &Path, seed: &Seed) -> Result<()> {
    seed.validate()
        .map_err(anyhow::Error::msg)
        .context("the seed is not valid")?;
    let part = boot_partition(image)?;
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(image)
        .with_context(|| format!("opening {} for writing", image.display()))?;
    write_seed(&file, part, seed)
        .with_context(|| format!("writing the seed into {}", image.display()))?;
    file.sync_all()
        .with_context(|| format!("syncing {}", image.display()))
}

fn write_seed(file: &File, part: BootPartition, seed: &Seed) -> Result<()> {
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
    let part = boot_partition(image)?;
    let file = File::open(image).with_context(|| format!("opening {}", image.display()))?;
    let fs = FileSystem::new(
        Region::new(&file, part.offset, part.size),
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
        .map_err(|e| anyhow::anyhow!("{SEED_FILE_NAME} in {}: {e}", image.display()))
}

/// Reads an auth key from a file, or from standard input for `-`; never
/// from the command line, where other users and shell history see it.
pub fn read_auth_key(source: &Path) -> Result<AuthKey> {
    if source == Path::new("-") {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("reading the auth key from standard input")?;
        let key = text.trim();
        if key.is_empty() || key.contains(char::is_whitespace) {
            bail!("standard input must hold one auth key on one line");
        }
        return Ok(AuthKey::new(key));
    }
    AuthKey::from_file(source).map_err(anyhow::Error::msg)
}

/// Copies `image` to `out` keeping it sparse, for `customize -o`.
pub fn sparse_copy(image: &Path, out: &Path) -> Result<()> {
    let src = File::open(image).with_context(|| format!("opening {}", image.display()))?;
    let len = src.metadata()?.len();
    let partial = crate::fsutil::partial_path(out);
    let dst = File::create(&partial).with_context(|| format!("creating {}", partial.display()))?;
    dst.set_len(len)?;
    let mut buf = vec![0u8; 4 << 20];
    let mut pos = 0u64;
    while pos < len {
        let n = (len - pos).min(buf.len() as u64) as usize;
        src.read_exact_at(&mut buf[..n], pos)?;
        // Zero blocks stay holes in the copy.
        if buf[..n].iter().any(|b| *b != 0) {
            dst.write_all_at(&buf[..n], pos)?;
        }
        pos += n as u64;
    }
    dst.sync_all()?;
    crate::fsutil::commit_partial(&partial, out)
}

/// The seed described by command-line options.
#[derive(Debug, Default, Clone)]
pub struct SeedOptions {
    pub hostname: Option<String>,
    pub authkey_file: Option<PathBuf>,
    pub ssh_keys: Vec<String>,
    pub tags: Vec<String>,
}

impl SeedOptions {
    pub fn to_seed(&self) -> Result<Seed> {
        let mut keys = Vec::new();
        for k in &self.ssh_keys {
            // A path to a .pub file, or the key line itself.
            let line = if Path::new(k).is_file() {
                std::fs::read_to_string(k)
                    .with_context(|| format!("reading SSH key {k}"))?
                    .trim()
                    .to_owned()
            } else {
                k.trim().to_owned()
            };
            keys.push(line);
        }
        let seed = Seed {
            hostname: self.hostname.clone(),
            tailscale_auth_key: self
                .authkey_file
                .as_deref()
                .map(read_auth_key)
                .transpose()?,
            tailscale_tags: self.tags.clone(),
            ssh_authorized_keys: keys,
        };
        seed.validate().map_err(anyhow::Error::msg)?;
        Ok(seed)
    }
}

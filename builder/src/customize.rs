//! `nodeforge customize`: stamps a per-node seed into an image's boot
//! partition (the ESP, or the Pi's FAT boot partition) in-process, so one
//! role image serves many machines. The same writer stamps seeds during
//! `nodeforge flash`.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use fatfs::{FileSystem, FsOptions};
use nodeforge_firstboot::seed::{AuthKey, Seed, SEED_FILE_NAME};

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
    seed.validate()
        .map_err(anyhow::Error::msg)
        .context("the seed is not valid")?;
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

/// Reads a stack secret's value from a file: one line, trailing newline
/// trimmed. Errors name the secret and the file, never the value.
fn read_stack_secret(name: &str, file: &Path) -> Result<AuthKey> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("reading stack secret {name} from {}", file.display()))?;
    let value = text.strip_suffix('\n').unwrap_or(&text);
    nodeforge_firstboot::seed::validate_secret(name, value)
        .map_err(|e| anyhow::anyhow!("{e} (in {})", file.display()))?;
    Ok(AuthKey::new(value))
}

/// `NAME=FILE` of `--stack-secret`.
fn parse_stack_secret(s: &str) -> Result<(String, PathBuf), String> {
    match s.split_once('=') {
        Some((n, f)) if !n.is_empty() && !f.is_empty() => Ok((n.to_owned(), PathBuf::from(f))),
        _ => Err(format!(
            "`{s}` must be NAME=FILE, e.g. POSTGRES_PASSWORD=secrets/pg (the file holds the value)"
        )),
    }
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

/// The seed described by command-line or fleet-file values.
#[derive(Debug, Default, Clone)]
pub struct SeedOptions {
    pub hostname: Option<String>,
    pub authkey_file: Option<PathBuf>,
    pub ssh_keys: Vec<String>,
    pub tags: Vec<String>,
    /// Stack secrets by name, each read from a file (never given inline).
    pub stack_secret_files: Vec<(String, PathBuf)>,
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
            stack_secrets: self
                .stack_secret_files
                .iter()
                .map(|(name, file)| Ok((name.clone(), read_stack_secret(name, file)?)))
                .collect::<Result<_>>()?,
        };
        seed.validate().map_err(anyhow::Error::msg)?;
        Ok(seed)
    }
}

/// Per-node seed values on the command line, shared by `customize` and
/// `flash`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct SeedArgs {
    /// Take the node's values from the fleet file (see --fleet).
    #[arg(long)]
    pub node: Option<String>,
    /// The fleet file that --node looks in.
    #[arg(long, default_value = "fleet.toml")]
    pub fleet: PathBuf,
    #[arg(long)]
    pub hostname: Option<String>,
    /// File holding the Tailscale auth key, or - for standard input (never the key itself).
    #[arg(long)]
    pub authkey_file: Option<PathBuf>,
    /// An OpenSSH public key line, or a .pub file; repeatable.
    #[arg(long = "ssh-key")]
    pub ssh_keys: Vec<String>,
    /// An extra tailnet tag (tag:name); repeatable.
    #[arg(long = "tag")]
    pub tags: Vec<String>,
    /// A value for a secret the image's stacks declare, read from a file:
    /// NAME=FILE; repeatable. Undeclared secrets are ignored by the node;
    /// secrets not given are generated at first boot.
    #[arg(long = "stack-secret", value_name = "NAME=FILE", value_parser = parse_stack_secret)]
    pub stack_secrets: Vec<(String, PathBuf)>,
}

impl SeedArgs {
    /// The seed these flags describe (flags over fleet values), or None
    /// when no seed value was given.
    pub fn seed(&self) -> Result<Option<Seed>> {
        let mut opts = match &self.node {
            Some(name) => crate::fleet::Fleet::load(&self.fleet)?.seed_options(name)?,
            None => SeedOptions::default(),
        };
        if self.hostname.is_some() {
            opts.hostname = self.hostname.clone();
        }
        if self.authkey_file.is_some() {
            opts.authkey_file = self.authkey_file.clone();
        }
        opts.ssh_keys.extend(self.ssh_keys.iter().cloned());
        opts.tags.extend(self.tags.iter().cloned());
        opts.stack_secret_files
            .extend(self.stack_secrets.iter().cloned());
        let empty = opts.hostname.is_none()
            && opts.authkey_file.is_none()
            && opts.ssh_keys.is_empty()
            && opts.tags.is_empty()
            && opts.stack_secret_files.is_empty();
        if empty {
            return Ok(None);
        }
        opts.to_seed().map(Some)
    }
}

/// The seed as a flash stamp: written into the target's boot partition
/// after the image is verified, then read back from the device.
pub struct SeedStamp(pub Seed);

impl crate::flash::Stamp for SeedStamp {
    fn describe(&self) -> String {
        format!(
            "seed for {}",
            self.0.hostname.as_deref().unwrap_or("this node")
        )
    }

    fn apply(&self, target: &mut File) -> Result<Vec<Range<u64>>> {
        let part = boot_partition_in(target)?;
        write_seed(target, part, &self.0)?;
        target.sync_all().context("syncing the seed")?;
        Ok(std::iter::once(part.offset..part.offset + part.size).collect())
    }

    fn check(&self, target: &mut File) -> Result<()> {
        match read_seed_in(target)? {
            Some(found) if found == self.0 => Ok(()),
            Some(_) => bail!("the seed read back from the target differs from the one written"),
            None => bail!("no seed found on the target after writing it"),
        }
    }
}

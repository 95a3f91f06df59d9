//! What grow-root reads from the disk itself: the partition table entry of
//! the root partition (GPT or MBR) and the ext2/3/4 superblock's size.
//! Read in-process: under emulation each `sfdisk --json` or `dumpe2fs -h`
//! cost a program start for a few hundred bytes.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use anyhow::{bail, Context, Result};

const SECTOR: u64 = 512;
const GPT_SIGNATURE: &[u8; 8] = b"EFI PART";
const EXT_MAGIC: u16 = 0xEF53;
const EXT_INCOMPAT_64BIT: u32 = 0x80;

/// The table kind and the size (in 512-byte sectors) of partition
/// `number` in it; `None` when the table has no such entry (an MBR
/// logical partition, an empty slot).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableEntry {
    pub gpt: bool,
    pub sectors: Option<u64>,
}

fn read_at(f: &mut File, offset: u64, len: usize, what: &str) -> Result<Vec<u8>> {
    let mut buf = vec![0; len];
    f.seek(SeekFrom::Start(offset))
        .and_then(|_| f.read_exact(&mut buf))
        .with_context(|| format!("reading {len} bytes at {offset} of {what}"))?;
    Ok(buf)
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Partition `number` (1-based) of the table on `disk`.
pub fn table_entry(disk: &Path, number: u32) -> Result<TableEntry> {
    let what = disk.display().to_string();
    let mut f = File::open(disk).with_context(|| format!("opening {what}"))?;
    let head = read_at(&mut f, 0, 2 * SECTOR as usize, &what)?;
    let (mbr, gpt_header) = head.split_at(SECTOR as usize);
    if gpt_header.starts_with(GPT_SIGNATURE) {
        let entries_lba = u64_at(gpt_header, 72);
        let count = u32_at(gpt_header, 80);
        let entry_size = u32_at(gpt_header, 84) as u64;
        if number == 0 || number > count {
            return Ok(TableEntry {
                gpt: true,
                sectors: None,
            });
        }
        if entry_size < 128 {
            bail!("{what}: GPT header gives entries of {entry_size} bytes (fewer than 128)");
        }
        let at = entries_lba
            .checked_mul(SECTOR)
            .and_then(|o| o.checked_add((number as u64 - 1) * entry_size))
            .with_context(|| format!("{what}: GPT entry offset out of range"))?;
        let entry = read_at(&mut f, at, 128, &what)?;
        let (first, last) = (u64_at(&entry, 32), u64_at(&entry, 40));
        let used = entry[..16].iter().any(|b| *b != 0);
        return Ok(TableEntry {
            gpt: true,
            sectors: (used && last >= first).then(|| last - first + 1),
        });
    }
    if mbr[510..512] != [0x55, 0xAA] {
        bail!("{what} has neither a GPT nor an MBR partition table");
    }
    let sectors = (1..=4).contains(&number).then(|| {
        let e = &mbr[446 + 16 * (number as usize - 1)..][..16];
        u32_at(e, 12) as u64
    });
    Ok(TableEntry {
        gpt: false,
        sectors: sectors.filter(|s| *s > 0),
    })
}

/// The size in bytes of the ext2/3/4 filesystem on `device`, from its
/// superblock (what `dumpe2fs -h` gives as block count × block size).
pub fn ext_fs_bytes(device: &Path) -> Result<u64> {
    let what = device.display().to_string();
    let mut f = File::open(device).with_context(|| format!("opening {what}"))?;
    let sb = read_at(&mut f, 1024, 1024, &what)?;
    parse_ext_superblock(&sb).with_context(|| format!("reading the superblock of {what}"))
}

fn parse_ext_superblock(sb: &[u8]) -> Result<u64> {
    let magic = u16::from_le_bytes([sb[0x38], sb[0x39]]);
    if magic != EXT_MAGIC {
        bail!("no ext2/3/4 superblock (magic {magic:#06x})");
    }
    let log = u32_at(sb, 0x18);
    if log > 6 {
        bail!("implausible block size 1024 << {log}");
    }
    let mut blocks = u32_at(sb, 0x04) as u64;
    if u32_at(sb, 0x60) & EXT_INCOMPAT_64BIT != 0 {
        blocks |= (u32_at(sb, 0x150) as u64) << 32;
    }
    Ok(blocks * (1024u64 << log))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runner::{Cmd, CommandRunner, SystemRunner};

    /// Runs a host program (a prerequisite, see `nodeforge doctor`) through
    /// the agent's own runner; fails the test with its stderr.
    fn run(program: &str, args: &[&str], stdin: &str) {
        let cmd = Cmd::new(program).args(args.iter().copied());
        let cmd = if stdin.is_empty() {
            cmd
        } else {
            cmd.stdin(stdin)
        };
        SystemRunner.run(&cmd).unwrap_or_else(|e| panic!("{e:#}"));
    }

    fn disk(len: u64) -> (tempfile::TempDir, std::path::PathBuf) {
        let (dir, p) = crate::testutil::scratch_path("disk.img");
        File::create(&p).unwrap().set_len(len).unwrap();
        (dir, p)
    }

    /// The entries sfdisk writes read back with the sizes sfdisk was given.
    #[test]
    fn reads_the_tables_sfdisk_writes() {
        let (_d, p) = disk(64 << 20);
        let path = p.to_str().unwrap();
        run("sfdisk", &["-q", path], "label: gpt\n,8M\n,16M\n");
        assert_eq!(
            table_entry(&p, 2).unwrap(),
            TableEntry {
                gpt: true,
                sectors: Some(16 << 11)
            }
        );
        assert_eq!(table_entry(&p, 3).unwrap().sectors, None);
        assert_eq!(table_entry(&p, 0).unwrap().sectors, None);
        // Grown the way grow-root grows it.
        run(
            "sfdisk",
            &["-q", "--no-reread", "--no-tell-kernel", "-N", "2", path],
            ", +\n",
        );
        let grown = table_entry(&p, 2).unwrap().sectors.unwrap();
        assert!(grown > 50 << 11, "{grown}");

        let (_d, p) = disk(32 << 20);
        run(
            "sfdisk",
            &["-q", p.to_str().unwrap()],
            "label: dos\n,4M,c\n,12M\n",
        );
        assert_eq!(
            table_entry(&p, 2).unwrap(),
            TableEntry {
                gpt: false,
                sectors: Some(12 << 11)
            }
        );
        assert_eq!(table_entry(&p, 4).unwrap().sectors, None);
        assert_eq!(table_entry(&p, 5).unwrap().sectors, None);
    }

    #[test]
    fn a_disk_without_a_table_is_named() {
        let (_d, p) = disk(1 << 20);
        let e = table_entry(&p, 1).unwrap_err();
        assert!(
            format!("{e:#}").contains("neither a GPT nor an MBR"),
            "{e:#}"
        );
        let e = table_entry(&p.with_extension("missing"), 1).unwrap_err();
        assert!(format!("{e:#}").contains("opening"), "{e:#}");
    }

    /// The size matches what mkfs.ext4 made, with and without 64bit.
    #[test]
    fn reads_the_size_mkfs_made() {
        for (features, blocks, block_size) in
            [("64bit", "5000", "4096"), ("^64bit", "3000", "1024")]
        {
            let (_d, p) = disk(32 << 20);
            run(
                "mkfs.ext4",
                &[
                    "-q",
                    "-F",
                    "-O",
                    features,
                    "-b",
                    block_size,
                    p.to_str().unwrap(),
                    blocks,
                ],
                "",
            );
            let want: u64 = blocks.parse::<u64>().unwrap() * block_size.parse::<u64>().unwrap();
            assert_eq!(ext_fs_bytes(&p).unwrap(), want, "{features}");
        }
        let (_d, p) = disk(1 << 20);
        let e = ext_fs_bytes(&p).unwrap_err();
        assert!(format!("{e:#}").contains("no ext2/3/4 superblock"), "{e:#}");
    }

    #[test]
    fn the_high_block_count_counts_only_with_64bit() {
        let mut sb = vec![0u8; 1024];
        sb[0x38..0x3a].copy_from_slice(&EXT_MAGIC.to_le_bytes());
        sb[0x04..0x08].copy_from_slice(&10u32.to_le_bytes());
        sb[0x18..0x1c].copy_from_slice(&2u32.to_le_bytes());
        sb[0x150..0x154].copy_from_slice(&1u32.to_le_bytes());
        assert_eq!(parse_ext_superblock(&sb).unwrap(), 10 * 4096);
        sb[0x60..0x64].copy_from_slice(&EXT_INCOMPAT_64BIT.to_le_bytes());
        assert_eq!(
            parse_ext_superblock(&sb).unwrap(),
            ((1u64 << 32) + 10) * 4096
        );
    }
}

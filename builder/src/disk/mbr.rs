//! A classic MBR partition table (what the Raspberry Pi boot ROM reads),
//! written and read in-process. It is one 512-byte sector: boot code
//! (left zero), the disk signature, four 16-byte entries, 0x55AA.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use anyhow::{bail, Context, Result};

use super::layout::{DiskLayout, SECTOR};

const SIGNATURE_AT: usize = 440;
const ENTRIES_AT: usize = 446;
const ENTRY: usize = 16;
const BOOT_MAGIC: [u8; 2] = [0x55, 0xAA];
const ACTIVE: u8 = 0x80;
/// Type of a GPT's protective MBR entry: such a disk is not an MBR disk.
const GPT_PROTECTIVE: u8 = 0xEE;

/// A partition as read back from an MBR.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MbrPartition {
    pub number: u32,
    pub mbr_type: u8,
    pub bootable: bool,
    pub offset: u64,
    pub size: u64,
    /// `SSSSSSSS-NN`, as Linux and blkid name it.
    pub partuuid: String,
}

/// The MBR sector for `layout`.
pub fn sector(layout: &DiskLayout) -> Result<[u8; 512]> {
    if layout.partitions.len() > 4 {
        bail!(
            "an MBR holds 4 primary partitions, the layout has {}",
            layout.partitions.len()
        );
    }
    let mut mbr = [0u8; 512];
    mbr[SIGNATURE_AT..SIGNATURE_AT + 4].copy_from_slice(&layout.mbr_signature.to_le_bytes());
    for p in &layout.partitions {
        let lba = u32::try_from(p.first_lba())
            .with_context(|| format!("partition {} starts beyond 2 TiB", p.number))?;
        let sectors = u32::try_from(p.size / SECTOR)
            .with_context(|| format!("partition {} is larger than 2 TiB", p.number))?;
        let slot = p
            .number
            .checked_sub(1)
            .filter(|n| *n < 4)
            .with_context(|| format!("MBR partition number {} is not 1-4", p.number))?
            as usize;
        let e = &mut mbr[ENTRIES_AT + slot * ENTRY..ENTRIES_AT + (slot + 1) * ENTRY];
        e[0] = if p.bootable { ACTIVE } else { 0 };
        e[1..4].copy_from_slice(&chs(p.first_lba()));
        e[4] = p.mbr_type;
        e[5..8].copy_from_slice(&chs(p.last_lba()));
        e[8..12].copy_from_slice(&lba.to_le_bytes());
        e[12..16].copy_from_slice(&sectors.to_le_bytes());
    }
    mbr[510..].copy_from_slice(&BOOT_MAGIC);
    Ok(mbr)
}

/// Writes the MBR for `layout` into sector 0 of the image.
pub fn write(image: &File, image_path: &Path, layout: &DiskLayout) -> Result<()> {
    let ctx = || format!("writing the MBR of {}", image_path.display());
    let mbr = sector(layout).with_context(ctx)?;
    image.write_all_at(&mbr, 0).with_context(ctx)?;
    image.sync_data().with_context(ctx)?;
    Ok(())
}

/// Cylinder/head/sector address of an LBA with the usual 255 heads × 63
/// sectors geometry; beyond cylinder 1023 the "use LBA" marker. Nothing
/// modern reads these, but fsck tools compare them.
fn chs(lba: u64) -> [u8; 3] {
    const HEADS: u64 = 255;
    const SECTORS: u64 = 63;
    let cylinder = lba / (HEADS * SECTORS);
    if cylinder > 1023 {
        return [0xFE, 0xFF, 0xFF];
    }
    let head = (lba / SECTORS) % HEADS;
    let sector = lba % SECTORS + 1;
    [
        head as u8,
        (sector as u8) | ((cylinder >> 2) as u8 & 0xC0),
        cylinder as u8,
    ]
}

/// Parses an MBR sector. Returns `None` for a sector that is no MBR or is
/// a GPT's protective MBR.
pub fn parse(mbr: &[u8; 512]) -> Option<Vec<MbrPartition>> {
    if mbr[510..] != BOOT_MAGIC {
        return None;
    }
    let signature = u32::from_le_bytes([
        mbr[SIGNATURE_AT],
        mbr[SIGNATURE_AT + 1],
        mbr[SIGNATURE_AT + 2],
        mbr[SIGNATURE_AT + 3],
    ]);
    let mut out = Vec::new();
    for slot in 0..4 {
        let e = &mbr[ENTRIES_AT + slot * ENTRY..ENTRIES_AT + (slot + 1) * ENTRY];
        let u32_at = |o: usize| u32::from_le_bytes([e[o], e[o + 1], e[o + 2], e[o + 3]]);
        let (mbr_type, lba, sectors) = (e[4], u32_at(8), u32_at(12));
        if mbr_type == GPT_PROTECTIVE {
            return None;
        }
        if mbr_type == 0 || sectors == 0 {
            continue;
        }
        let number = slot as u32 + 1;
        out.push(MbrPartition {
            number,
            mbr_type,
            bootable: e[0] == ACTIVE,
            offset: u64::from(lba) * SECTOR,
            size: u64::from(sectors) * SECTOR,
            partuuid: format!("{signature:08x}-{number:02x}"),
        });
    }
    Some(out)
}

/// Reads the MBR partitions of an image; `None` if it has no MBR table
/// (e.g. it is a GPT disk).
pub fn read(image_path: &Path) -> Result<Option<Vec<MbrPartition>>> {
    let f = File::open(image_path).with_context(|| format!("opening {}", image_path.display()))?;
    let mut mbr = [0u8; 512];
    f.read_exact_at(&mut mbr, 0)
        .with_context(|| format!("reading sector 0 of {}", image_path.display()))?;
    Ok(parse(&mbr))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::layout::TableKind;
    use crate::profile::Arch;

    fn layout() -> DiskLayout {
        DiskLayout::fat_and_root(TableKind::Mbr, 1 << 30, 256 << 20, Arch::Arm64, "t").unwrap()
    }

    #[test]
    fn sector_has_signature_entries_and_magic() {
        let l = layout();
        let s = sector(&l).unwrap();
        assert_eq!(&s[510..], &[0x55, 0xAA]);
        assert_eq!(&s[440..444], &l.mbr_signature.to_le_bytes());
        assert!(s[..440].iter().all(|b| *b == 0), "no boot code");
        // Entry 1: active FAT32 LBA at 1 MiB (sector 2048), 256 MiB long.
        let e = &s[446..462];
        assert_eq!(e[0], 0x80);
        assert_eq!(e[4], 0x0C);
        assert_eq!(u32::from_le_bytes(e[8..12].try_into().unwrap()), 2048);
        assert_eq!(
            u32::from_le_bytes(e[12..16].try_into().unwrap()),
            256 * 2048
        );
        // CHS of LBA 2048 with 255/63 geometry: cylinder 0, head 32, sector 33.
        assert_eq!(&e[1..4], &[32, 33, 0]);
        assert_eq!(s[462], 0, "partition 2 is not active");
        assert_eq!(s[462 + 4], 0x83);
        assert!(s[478..510].iter().all(|b| *b == 0), "entries 3 and 4 empty");
    }

    #[test]
    fn written_table_reads_back() {
        let l = layout();
        let (_dir, path) = crate::disk::test_image::scratch_disk(&l);
        let parts = read(&path).unwrap().expect("an MBR disk");
        // The layout's partitions as the table should hold them, compared
        // as a whole: a failure shows every partition that differs.
        let want: Vec<MbrPartition> = l
            .partitions
            .iter()
            .map(|p| MbrPartition {
                number: p.number,
                mbr_type: p.mbr_type,
                bootable: p.bootable,
                offset: p.offset,
                size: p.size,
                partuuid: p.partuuid.clone(),
            })
            .collect();
        assert_eq!(parts, want);
        assert_eq!(parts.len(), 2);
    }

    #[test]
    fn gpt_protective_and_blank_sectors_are_not_mbr_disks() {
        assert_eq!(parse(&[0u8; 512]), None);
        let mut protective = [0u8; 512];
        protective[510..].copy_from_slice(&BOOT_MAGIC);
        protective[446 + 4] = 0xEE;
        protective[446 + 12] = 1;
        assert_eq!(parse(&protective), None);
    }

    #[test]
    fn far_sectors_use_the_lba_marker() {
        assert_eq!(chs(0), [0, 1, 0]);
        assert_eq!(chs(100_000_000), [0xFE, 0xFF, 0xFF]);
    }

    #[test]
    fn sfdisk_agrees_when_installed() {
        let sfdisk = crate::testutil::require_program("sfdisk", "fdisk");
        let l = layout();
        let (_dir, path) = crate::disk::test_image::scratch_disk(&l);
        let dump = crate::exec::Cmd::new(sfdisk)
            .arg("--dump")
            .arg(&path)
            .stdout_text()
            .unwrap();
        assert!(dump.contains("label: dos"), "{dump}");
        assert!(
            dump.contains(&format!("label-id: 0x{:08x}", l.mbr_signature)),
            "{dump}"
        );
        assert!(
            dump.contains("start=        2048, size=      524288, type=c, bootable"),
            "{dump}"
        );
    }
}

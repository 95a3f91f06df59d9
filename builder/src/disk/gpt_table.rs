//! Writing and reading the GPT of an image file, in-process.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::Path;

use anyhow::{anyhow, Context, Result};
use gpt::disk::LogicalBlockSize;
use gpt::partition::Partition;
use gpt::partition_types::Type;
use uuid::Uuid;

use super::layout::{DiskLayout, SECTOR};

/// Writes a protective MBR, the primary and the backup GPT for `layout`.
pub fn write(image: &File, image_path: &Path, layout: &DiskLayout) -> Result<()> {
    let ctx = || format!("writing partition table to {}", image_path.display());
    let sectors = layout.size / SECTOR;
    let mbr = gpt::mbr::ProtectiveMBR::with_lb_size(u32::try_from(sectors - 1).unwrap_or(u32::MAX));
    let mut dev = image;
    mbr.overwrite_lba0(&mut dev).with_context(ctx)?;
    let mut disk = gpt::GptConfig::new()
        .writable(true)
        .logical_block_size(LogicalBlockSize::Lb512)
        .create_from_device(dev, Some(layout.disk_guid))
        .with_context(ctx)?;
    let parts: BTreeMap<u32, Partition> = layout
        .partitions
        .iter()
        .map(|p| {
            let part = Partition {
                part_type_guid: Type {
                    guid: p.type_guid,
                    os: gpt::partition_types::OperatingSystem::None,
                },
                part_guid: p.part_guid,
                first_lba: p.first_lba(),
                last_lba: p.last_lba(),
                flags: 0,
                name: p.label.clone(),
            };
            (p.number, part)
        })
        .collect();
    disk.update_partitions(parts).with_context(ctx)?;
    disk.write().with_context(ctx)?;
    image.sync_data().with_context(ctx)?;
    Ok(())
}

/// A partition as read back from an image's GPT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundPartition {
    pub number: u32,
    pub type_guid: Uuid,
    pub part_guid: Uuid,
    pub offset: u64,
    pub size: u64,
    pub label: String,
}

/// Reads the partitions of a GPT disk image.
pub fn read(image_path: &Path) -> Result<Vec<FoundPartition>> {
    let disk = gpt::GptConfig::new()
        .writable(false)
        .logical_block_size(LogicalBlockSize::Lb512)
        .open(image_path)
        .with_context(|| {
            format!(
                "reading the GPT of {} (is it a nodeforge disk image?)",
                image_path.display()
            )
        })?;
    Ok(disk
        .partitions()
        .iter()
        .filter(|(_, p)| p.is_used())
        .map(|(n, p)| FoundPartition {
            number: *n,
            type_guid: p.part_type_guid.guid,
            part_guid: p.part_guid,
            offset: p.first_lba * SECTOR,
            size: (p.last_lba + 1 - p.first_lba) * SECTOR,
            label: p.name.clone(),
        })
        .collect())
}

/// The partition of `type_guid` in an image, or an error naming the image.
pub fn find(image_path: &Path, type_guid: Uuid, what: &str) -> Result<FoundPartition> {
    read(image_path)?
        .into_iter()
        .find(|p| p.type_guid == type_guid)
        .ok_or_else(|| anyhow!("{} has no {what} partition", image_path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::layout::ESP_TYPE;
    use crate::profile::Arch;

    #[test]
    fn written_table_reads_back() {
        let layout = DiskLayout::esp_and_root(200 << 20, 64 << 20, Arch::Amd64, "t").unwrap();
        let (_dir, path) = crate::disk::test_image::scratch_disk(&layout);
        // The fields the table stores, compared as a whole: a failure shows
        // every partition that differs.
        let want: Vec<_> = layout
            .partitions
            .iter()
            .map(|p| (p.offset, p.size, p.part_guid, p.type_guid))
            .collect();
        let got: Vec<_> = read(&path)
            .unwrap()
            .iter()
            .map(|p| (p.offset, p.size, p.part_guid, p.type_guid))
            .collect();
        assert_eq!(got, want);
        assert_eq!(got.len(), 2);
        assert_eq!(find(&path, ESP_TYPE, "ESP").unwrap().number, 1);
    }
}

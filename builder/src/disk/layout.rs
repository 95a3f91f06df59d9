//! Where each partition goes on the disk. Pure arithmetic, no I/O.

use serde::Serialize;
use uuid::Uuid;

use crate::profile::Arch;

pub const SECTOR: u64 = 512;
/// Partitions start on 1 MiB boundaries, as every partitioning tool does,
/// so they are aligned for any erase block or RAID stripe below 1 MiB.
pub const ALIGN: u64 = 1 << 20;
/// The backup GPT at the end of the disk: 32 sectors of entries + header.
const GPT_BACKUP_SECTORS: u64 = 33;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PartitionKind {
    Esp,
    Root,
}

#[derive(Debug, Clone, Serialize)]
pub struct PartitionSpec {
    pub number: u32,
    pub kind: PartitionKind,
    pub label: String,
    /// Byte offset of the first byte.
    pub offset: u64,
    pub size: u64,
    pub type_guid: Uuid,
    pub part_guid: Uuid,
    /// Filesystem UUID (ext4) or volume serial (FAT, low 32 bits).
    pub fs_uuid: Uuid,
}

impl PartitionSpec {
    pub fn first_lba(&self) -> u64 {
        self.offset / SECTOR
    }
    pub fn last_lba(&self) -> u64 {
        (self.offset + self.size) / SECTOR - 1
    }
    pub fn end(&self) -> u64 {
        self.offset + self.size
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct DiskLayout {
    pub size: u64,
    pub disk_guid: Uuid,
    pub partitions: Vec<PartitionSpec>,
}

/// ESP type GUID (UEFI spec).
pub const ESP_TYPE: Uuid = Uuid::from_u128(0xC12A7328_F81F_11D2_BA4B_00A0C93EC93B);

/// Root partition type GUID per the Discoverable Partitions Specification.
pub fn root_type(arch: Arch) -> Uuid {
    match arch {
        Arch::Amd64 => Uuid::from_u128(0x4F68BCE3_E8CD_4DB1_96E7_FBCAF984B709),
        Arch::Arm64 => Uuid::from_u128(0xB921B045_1DF0_41C3_AF44_4C6F280D3FAE),
    }
}

/// Namespace for the image's GUIDs: they are derived from the build's
/// inputs, so the same inputs give the same disk.
const NAMESPACE: Uuid = Uuid::from_u128(0x6e6f_6465_666f_7267_6520_6775_6964_7321);

pub fn derived_uuid(seed: &str, what: &str) -> Uuid {
    Uuid::new_v5(&NAMESPACE, format!("{seed}/{what}").as_bytes())
}

impl DiskLayout {
    /// An ESP of `esp_size` at 1 MiB and a root partition filling the rest.
    /// `seed` (the profile hash) makes the GUIDs deterministic.
    pub fn esp_and_root(size: u64, esp_size: u64, arch: Arch, seed: &str) -> Result<Self, String> {
        let size = size / ALIGN * ALIGN;
        let esp_start = ALIGN;
        let esp_size = esp_size.div_ceil(ALIGN) * ALIGN;
        let root_start = esp_start + esp_size;
        // Last byte a partition may use is before the backup GPT; keep the
        // end aligned too.
        let usable_end = size.saturating_sub(GPT_BACKUP_SECTORS * SECTOR) / ALIGN * ALIGN;
        if usable_end <= root_start {
            return Err(format!(
                "disk of {size} bytes has no room for a root partition after a {esp_size}-byte ESP"
            ));
        }
        let part = |number, kind, label: &str, offset, size, type_guid| PartitionSpec {
            number,
            kind,
            label: label.to_owned(),
            offset,
            size,
            type_guid,
            part_guid: derived_uuid(seed, &format!("{label}/partition")),
            fs_uuid: derived_uuid(seed, &format!("{label}/filesystem")),
        };
        Ok(DiskLayout {
            size,
            disk_guid: derived_uuid(seed, "disk"),
            partitions: vec![
                part(1, PartitionKind::Esp, "esp", esp_start, esp_size, ESP_TYPE),
                part(
                    2,
                    PartitionKind::Root,
                    "root",
                    root_start,
                    usable_end - root_start,
                    root_type(arch),
                ),
            ],
        })
    }

    pub fn partition(&self, kind: PartitionKind) -> &PartitionSpec {
        self.partitions
            .iter()
            .find(|p| p.kind == kind)
            .expect("every layout has an ESP and a root partition")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_are_aligned_and_fit() {
        let l = DiskLayout::esp_and_root(2 << 30, 256 << 20, Arch::Amd64, "x").unwrap();
        let esp = l.partition(PartitionKind::Esp);
        let root = l.partition(PartitionKind::Root);
        assert_eq!(esp.offset, 1 << 20);
        assert_eq!(esp.size, 256 << 20);
        assert_eq!(root.offset, esp.end());
        assert_eq!(root.offset % ALIGN, 0);
        assert_eq!(root.size % ALIGN, 0);
        assert!(root.end() <= l.size - 33 * SECTOR);
        assert_eq!(
            root.type_guid.to_string(),
            "4f68bce3-e8cd-4db1-96e7-fbcaf984b709"
        );
    }

    #[test]
    fn guids_follow_the_seed() {
        let a = DiskLayout::esp_and_root(1 << 30, 64 << 20, Arch::Arm64, "a").unwrap();
        let a2 = DiskLayout::esp_and_root(1 << 30, 64 << 20, Arch::Arm64, "a").unwrap();
        let b = DiskLayout::esp_and_root(1 << 30, 64 << 20, Arch::Arm64, "b").unwrap();
        assert_eq!(a.disk_guid, a2.disk_guid);
        assert_ne!(a.disk_guid, b.disk_guid);
        assert_ne!(a.partitions[0].part_guid, a.partitions[1].part_guid);
    }

    #[test]
    fn too_small_disk_is_refused() {
        assert!(DiskLayout::esp_and_root(65 << 20, 64 << 20, Arch::Amd64, "x").is_err());
    }
}

//! Where each partition goes on the disk. Pure arithmetic, no I/O.

use anyhow::{bail, Result};
use serde::Serialize;
use uuid::Uuid;

use crate::profile::Arch;

pub const SECTOR: u64 = 512;
/// Partitions start on 1 MiB boundaries, as every partitioning tool does,
/// so they are aligned for any erase block or RAID stripe below 1 MiB.
pub const ALIGN: u64 = 1 << 20;
/// The backup GPT at the end of the disk: 32 sectors of entries + header.
const GPT_BACKUP_SECTORS: u64 = 33;
/// MBR partition types: FAT32 with LBA addressing (what the Raspberry Pi
/// boot ROM looks for) and Linux.
pub const MBR_FAT32_LBA: u8 = 0x0C;
pub const MBR_LINUX: u8 = 0x83;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TableKind {
    Gpt,
    Mbr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PartitionKind {
    /// The FAT partition the firmware reads: the ESP on UEFI, the boot
    /// partition on a Raspberry Pi.
    Esp,
    /// The root filesystem; with A/B slots, slot A (the one the image
    /// boots first).
    Root,
    /// Slot B: the same size as slot A, a hole in the image until an
    /// update writes it.
    RootB,
    /// What outlives an update (stack volumes, the agent's state, the
    /// tailnet state): the last partition, grown at first boot.
    State,
}

/// The state partition's size in the image; first boot grows it to the
/// end of the disk.
pub const STATE_SIZE: u64 = 256 << 20;

/// Linux filesystem data (not a discoverable type: systemd's gpt-auto
/// generator must not mount it anywhere on its own).
pub const LINUX_DATA_TYPE: Uuid = Uuid::from_u128(0x0FC63DAF_8483_4772_8E79_3D69D8477DE4);

#[derive(Debug, Clone, Serialize)]
pub struct PartitionSpec {
    pub number: u32,
    pub kind: PartitionKind,
    pub label: String,
    /// Byte offset of the first byte.
    pub offset: u64,
    pub size: u64,
    /// GPT partition type (used when the table is GPT).
    pub type_guid: Uuid,
    /// MBR partition type byte (used when the table is MBR).
    pub mbr_type: u8,
    /// MBR "active" flag: the Pi boot ROM does not need it, but some
    /// firmware and tools look for a bootable FAT partition.
    pub bootable: bool,
    /// GPT unique partition GUID (used when the table is GPT).
    pub part_guid: Uuid,
    /// What `root=PARTUUID=` and fstab name the partition by: the GPT
    /// GUID, or `SSSSSSSS-NN` (disk signature, partition number) on MBR.
    pub partuuid: String,
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
    pub table: TableKind,
    pub disk_guid: Uuid,
    /// MBR disk signature (bytes 440..444), derived like the GUIDs.
    pub mbr_signature: u32,
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
    /// A GPT disk: an ESP of `esp_size` at 1 MiB and a root partition
    /// filling the rest. `seed` (the profile hash) makes the GUIDs
    /// deterministic.
    pub fn esp_and_root(size: u64, esp_size: u64, arch: Arch, seed: &str) -> Result<Self> {
        Self::fat_and_root(TableKind::Gpt, size, esp_size, arch, seed)
    }

    /// A FAT partition of `fat_size` at 1 MiB and a root partition filling
    /// the rest, under a partition table of `table`'s kind.
    pub fn fat_and_root(
        table: TableKind,
        size: u64,
        fat_size: u64,
        arch: Arch,
        seed: &str,
    ) -> Result<Self> {
        Self::build(table, size, fat_size, false, arch, seed)
    }

    /// A GPT disk for A/B updates: the ESP, root slots A and B of one
    /// size, and a state partition of [`STATE_SIZE`] at the end.
    pub fn ab_slots(size: u64, esp_size: u64, arch: Arch, seed: &str) -> Result<Self> {
        Self::build(TableKind::Gpt, size, esp_size, true, arch, seed)
    }

    fn build(
        table: TableKind,
        size: u64,
        fat_size: u64,
        slots: bool,
        arch: Arch,
        seed: &str,
    ) -> Result<Self> {
        let size = size / ALIGN * ALIGN;
        let esp_start = ALIGN;
        let esp_size = fat_size.div_ceil(ALIGN) * ALIGN;
        let root_start = esp_start + esp_size;
        // Last byte a partition may use is before the backup GPT (an MBR
        // has none, but the same end keeps both layouts alike); keep the
        // end aligned too.
        let usable_end = size.saturating_sub(GPT_BACKUP_SECTORS * SECTOR) / ALIGN * ALIGN;
        if usable_end <= root_start {
            bail!(
                "disk of {size} bytes has no room for a root partition after a {esp_size}-byte boot partition"
            );
        }
        if table == TableKind::Mbr && size / SECTOR > u64::from(u32::MAX) {
            bail!("disk of {size} bytes is too large for an MBR partition table (2 TiB at most)");
        }
        let disk_guid = derived_uuid(seed, "disk");
        let b = disk_guid.as_bytes();
        // A zero signature means "none" to some tools; never derive one.
        let mbr_signature = u32::from_le_bytes([b[0], b[1], b[2], b[3]]).max(1);
        let part = |number: u32, kind, label: &str, offset, size, type_guid, mbr_type| {
            let part_guid = derived_uuid(seed, &format!("{label}/partition"));
            PartitionSpec {
                number,
                kind,
                label: label.to_owned(),
                offset,
                size,
                type_guid,
                mbr_type,
                bootable: kind == PartitionKind::Esp && table == TableKind::Mbr,
                part_guid,
                partuuid: match table {
                    TableKind::Gpt => part_guid.to_string(),
                    TableKind::Mbr => format!("{mbr_signature:08x}-{number:02x}"),
                },
                fs_uuid: derived_uuid(seed, &format!("{label}/filesystem")),
            }
        };
        let esp = part(
            1,
            PartitionKind::Esp,
            match table {
                TableKind::Gpt => "esp",
                TableKind::Mbr => "boot",
            },
            esp_start,
            esp_size,
            ESP_TYPE,
            MBR_FAT32_LBA,
        );
        let partitions = if slots {
            // Two slots of one size, aligned, then the state partition.
            let slot = (usable_end - root_start).saturating_sub(STATE_SIZE) / 2 / ALIGN * ALIGN;
            if slot < 64 * ALIGN {
                bail!(
                    "disk of {size} bytes has no room for two root slots and a {} MiB state \
                     partition after a {esp_size}-byte ESP: raise [disk] size",
                    STATE_SIZE >> 20
                );
            }
            let state_start = root_start + 2 * slot;
            vec![
                esp,
                part(
                    2,
                    PartitionKind::Root,
                    "root-a",
                    root_start,
                    slot,
                    root_type(arch),
                    MBR_LINUX,
                ),
                part(
                    3,
                    PartitionKind::RootB,
                    "root-b",
                    root_start + slot,
                    slot,
                    root_type(arch),
                    MBR_LINUX,
                ),
                part(
                    4,
                    PartitionKind::State,
                    "state",
                    state_start,
                    (state_start + STATE_SIZE).min(usable_end) - state_start,
                    LINUX_DATA_TYPE,
                    MBR_LINUX,
                ),
            ]
        } else {
            vec![
                esp,
                part(
                    2,
                    PartitionKind::Root,
                    "root",
                    root_start,
                    usable_end - root_start,
                    root_type(arch),
                    MBR_LINUX,
                ),
            ]
        };
        Ok(DiskLayout {
            size,
            table,
            disk_guid,
            mbr_signature,
            partitions,
        })
    }

    pub fn partition(&self, kind: PartitionKind) -> &PartitionSpec {
        self.partitions
            .iter()
            .find(|p| p.kind == kind)
            .expect("every layout has an ESP and a root partition")
    }

    /// The partition of `kind`, if this layout has one (slot B and the
    /// state partition exist only with A/B slots).
    pub fn find(&self, kind: PartitionKind) -> Option<&PartitionSpec> {
        self.partitions.iter().find(|p| p.kind == kind)
    }

    /// Whether the disk has two root slots and a state partition.
    pub fn has_slots(&self) -> bool {
        self.find(PartitionKind::RootB).is_some()
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
    fn mbr_layout_names_partitions_by_signature_and_number() {
        let l =
            DiskLayout::fat_and_root(TableKind::Mbr, 2 << 30, 256 << 20, Arch::Arm64, "p").unwrap();
        let boot = l.partition(PartitionKind::Esp);
        let root = l.partition(PartitionKind::Root);
        assert_eq!(l.table, TableKind::Mbr);
        assert_ne!(l.mbr_signature, 0);
        assert_eq!(boot.partuuid, format!("{:08x}-01", l.mbr_signature));
        assert_eq!(root.partuuid, format!("{:08x}-02", l.mbr_signature));
        assert!(boot.bootable && !root.bootable);
        assert_eq!((boot.mbr_type, root.mbr_type), (0x0C, 0x83));
        let gpt = DiskLayout::esp_and_root(2 << 30, 256 << 20, Arch::Arm64, "p").unwrap();
        assert_eq!(
            gpt.partition(PartitionKind::Root).partuuid,
            gpt.partition(PartitionKind::Root).part_guid.to_string()
        );
        assert!(!gpt.partition(PartitionKind::Esp).bootable);
        let e = DiskLayout::fat_and_root(TableKind::Mbr, 3 << 40, 1 << 28, Arch::Arm64, "p")
            .unwrap_err()
            .to_string();
        assert!(e.contains("too large for an MBR partition table"), "{e}");
    }

    #[test]
    fn ab_slots_are_two_equal_aligned_roots_then_the_state_partition() {
        let l = DiskLayout::ab_slots(4 << 30, 256 << 20, Arch::Amd64, "x").unwrap();
        let kinds: Vec<_> = l.partitions.iter().map(|p| (p.number, p.kind)).collect();
        use PartitionKind::*;
        assert_eq!(kinds, [(1, Esp), (2, Root), (3, RootB), (4, State)]);
        let (a, b, state) = (l.partition(Root), l.partition(RootB), l.partition(State));
        assert_eq!(a.size, b.size);
        assert_eq!(b.offset, a.end());
        assert_eq!(state.offset, b.end());
        assert_eq!(state.size, STATE_SIZE);
        assert!(state.end() <= l.size - 33 * SECTOR);
        for p in &l.partitions {
            assert_eq!((p.offset % ALIGN, p.size % ALIGN), (0, 0), "{p:?}");
        }
        assert_eq!((a.label.as_str(), b.label.as_str()), ("root-a", "root-b"));
        assert_eq!(a.type_guid, b.type_guid);
        assert_ne!(a.part_guid, b.part_guid);
        assert_eq!(state.type_guid, LINUX_DATA_TYPE);
        assert!(l.has_slots());
        assert!(
            !DiskLayout::esp_and_root(4 << 30, 256 << 20, Arch::Amd64, "x")
                .unwrap()
                .has_slots()
        );
        let e = DiskLayout::ab_slots(400 << 20, 64 << 20, Arch::Amd64, "x")
            .unwrap_err()
            .to_string();
        assert!(e.contains("no room for two root slots"), "{e}");
    }

    #[test]
    fn too_small_disk_is_refused() {
        let e = DiskLayout::esp_and_root(65 << 20, 64 << 20, Arch::Amd64, "x")
            .unwrap_err()
            .to_string();
        assert!(e.contains("has no room for a root partition"), "{e}");
    }
}

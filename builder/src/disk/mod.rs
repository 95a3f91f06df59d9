//! Disk images written in-process: partition layout, GPT, FAT ESP, and
//! byte regions of an image file that filesystems are written into.

pub mod esp;
mod fat_fixup;
pub mod gpt_table;
pub mod layout;
pub mod mbr;
pub mod region;
#[cfg(test)]
pub(crate) mod test_image;

pub use layout::{DiskLayout, PartitionKind, PartitionSpec, TableKind};

//! nodeforge: builds bootable per-role node images and provisions the
//! machines that boot them.

pub mod apt;
pub mod binfmt;
pub mod bmap;
pub mod boot;
pub mod build;
pub mod cache;
pub mod cli;
pub mod disk;
pub mod doctor;
pub mod exec;
pub mod firewall;
pub mod flash;
pub mod fsutil;
pub mod initramfs;
pub mod install;
pub mod oci;
pub mod plan;
pub mod profile;
pub mod release;
pub mod seed;
pub mod serve;
pub mod tailnet;
#[cfg(test)]
pub(crate) mod testutil;

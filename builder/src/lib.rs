//! nodeforge: builds bootable per-role node images and provisions the
//! machines that boot them.

pub mod bmap;
pub mod flash;

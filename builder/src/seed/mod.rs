//! Per-node seeds: what `customize`, `flash`, `serve` and `netinstall`
//! stamp into a role image so one image serves many machines. `options`
//! reads the values (flags or the fleet file) into a [`Seed`], `fleet` is
//! the fleet file, `boot` puts the seed into the image's boot partition
//! and reads it back, `stamp` does that as a step of `flash`.

pub mod boot;
pub mod fleet;
pub mod options;
pub mod stamp;

use std::path::PathBuf;

use anyhow::Result;
use nodeforge_firstboot::seed::Seed;

pub use boot::{boot_partition, boot_partition_in, read_seed, read_seed_in, stamp, BootPartition};
pub use fleet::Fleet;
pub use options::{read_auth_key, SeedOptions};
pub use stamp::SeedStamp;

/// A seed asked for by name in the fleet file, by explicit values, or
/// both (explicit values over the fleet's).
#[derive(Debug, Clone, Default)]
pub struct SeedRequest {
    /// The fleet file's node to start from.
    pub node: Option<String>,
    pub fleet: PathBuf,
    pub values: SeedOptions,
}

impl SeedRequest {
    /// The seed asked for, or None when no seed value was given.
    pub fn resolve(&self) -> Result<Option<Seed>> {
        let mut opts = match &self.node {
            Some(name) => Fleet::load(&self.fleet)?.seed_options(name)?,
            None => SeedOptions::default(),
        };
        let given = &self.values;
        if given.hostname.is_some() {
            opts.hostname = given.hostname.clone();
        }
        if given.authkey_file.is_some() {
            opts.authkey_file = given.authkey_file.clone();
        }
        opts.ssh_keys.extend(given.ssh_keys.iter().cloned());
        opts.tags.extend(given.tags.iter().cloned());
        opts.stack_secret_files
            .extend(given.stack_secret_files.iter().cloned());
        if given.backup_repository.is_some() {
            opts.backup_repository = given.backup_repository.clone();
        }
        let empty = opts.hostname.is_none()
            && opts.authkey_file.is_none()
            && opts.ssh_keys.is_empty()
            && opts.tags.is_empty()
            && opts.stack_secret_files.is_empty()
            && opts.backup_repository.is_none();
        if empty {
            return Ok(None);
        }
        opts.to_seed().map(Some)
    }
}

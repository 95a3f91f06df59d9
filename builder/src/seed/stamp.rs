//! The seed as a `flash` stamp: written into the target's boot partition
//! after the image is verified, then read back from the device.

use std::fs::File;
use std::ops::Range;

use anyhow::{bail, Context, Result};
use nodeforge_firstboot::seed::Seed;

use super::boot::{boot_partition_in, read_seed_in, write_seed};

/// The seed a flash or netinstall writes after the image.
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

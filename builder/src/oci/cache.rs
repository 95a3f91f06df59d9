//! The blob cache: `<cache dir>/blobs/sha256/<hex>`, content-addressed.
//! A blob enters it only after its digest checked out; a download that
//! stopped part-way stays as `.<hex>.partial` and continues with a Range
//! request next time. One blob is written by one writer at a time (an
//! exclusive `.<hex>.lock`): builds that share a cache would otherwise
//! write the same partial file at once.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use nix::fcntl::{Flock, FlockArg};

use super::client::{Client, RegistryError};
use super::{Digest, Reference};
use crate::fsutil;

pub struct BlobCache {
    dir: PathBuf,
}

impl BlobCache {
    /// The blob store under a build cache directory.
    pub fn new(cache_dir: &Path) -> BlobCache {
        BlobCache {
            dir: cache_dir.join("blobs/sha256"),
        }
    }

    pub fn path(&self, d: &Digest) -> PathBuf {
        self.dir.join(d.hex())
    }

    fn partial(&self, d: &Digest) -> PathBuf {
        self.dir.join(format!(".{}.partial", d.hex()))
    }

    /// Held while `d` is downloaded or stored.
    fn lock(&self, d: &Digest) -> Result<Flock<File>> {
        let path = self.dir.join(format!(".{}.lock", d.hex()));
        Flock::lock(fsutil::lock_file(&path)?, FlockArg::LockExclusive)
            .map_err(|(_, e)| e)
            .with_context(|| format!("locking {}", path.display()))
    }

    /// The cached blob's path, if it is in the cache. Its modification
    /// time is set to now: `nodeforge cache prune` ages blobs by it.
    pub fn get(&self, d: &Digest) -> Option<PathBuf> {
        let p = self.path(d);
        if !p.is_file() {
            return None;
        }
        if let Ok(f) = OpenOptions::new().write(true).open(&p) {
            let _ = f.set_modified(std::time::SystemTime::now());
        }
        Some(p)
    }

    pub fn read(&self, d: &Digest) -> Result<Vec<u8>> {
        let p = self.path(d);
        fs::read(&p).with_context(|| format!("reading cached blob {}", p.display()))
    }

    /// Stores `data` under `d` after checking it has that digest.
    pub fn put(&self, d: &Digest, data: &[u8]) -> Result<PathBuf> {
        let actual = Digest::of(data);
        if &actual != d {
            bail!("refusing to cache data with digest {actual} as {d}");
        }
        let _writing = self.lock(d)?;
        let p = self.path(d);
        fsutil::atomic_write(&p, data)?;
        Ok(p)
    }

    /// The blob from the cache, else downloaded from `image`'s registry,
    /// continuing a partial download where it stopped.
    pub fn fetch(
        &self,
        client: &Client,
        image: &Reference,
        d: &Digest,
        size: Option<u64>,
    ) -> Result<PathBuf> {
        if let Some(p) = self.get(d) {
            return Ok(p);
        }
        let _writing = self.lock(d)?;
        // Another writer may have finished it while we waited.
        if let Some(p) = self.get(d) {
            return Ok(p);
        }
        let partial = self.partial(d);
        let mut have = fs::metadata(&partial).map(|m| m.len()).unwrap_or(0);
        if size.is_some_and(|s| have > s) {
            // Longer than the blob can be: not a prefix of it.
            have = 0;
        }
        if size != Some(have) || have == 0 {
            let (mut resp, ranged) = client.blob(image, d, have)?;
            let mut file = if ranged && have > 0 {
                OpenOptions::new().append(true).open(&partial)
            } else {
                File::create(&partial)
            }
            .with_context(|| format!("opening {}", partial.display()))?;
            io::copy(&mut resp, &mut file)
                .and_then(|_| file.sync_all())
                .with_context(|| {
                    format!("downloading blob {d} of {image} to {}", partial.display())
                })?;
        }
        let actual = Digest::from_hex(&fsutil::sha256_file(&partial)?)?;
        if &actual != d {
            // A corrupt partial must not be resumed again.
            let _ = fs::remove_file(&partial);
            return Err(RegistryError::DigestMismatch {
                image: image.to_string(),
                what: format!("blob {d}"),
                expected: d.clone(),
                actual,
            }
            .into());
        }
        let p = self.path(d);
        fsutil::commit_partial(&partial, &p)?;
        Ok(p)
    }
}

//! The build cache shared through an OCI registry: `--cache-to` pushes
//! each base rootfs and step layer the build made or reused, `--cache-from`
//! fetches the ones the local cache lacks before a step would run.
//!
//! An entry is an OCI artifact (`application/vnd.nodeforge.cache.v1`,
//! empty config) tagged `<kind>-<key>`, where the key is the same chained
//! cache key the local cache files are named by; its layers are the
//! entry's files (the tarball, a layer's metadata), each fetched through a
//! reader that checks its digest before it is committed to the local
//! cache. A cache that is missing, unreachable or refuses access is a
//! warning, and the build goes on locally; a malformed reference is an
//! error (bad input).
//!
//! Container images' blobs (manifests, configs, layers) are content
//! addressed already: they go into the same repository as plain blobs,
//! fetched by digest (checked, resumable, as from any registry) before
//! the image's own registry is asked, and each is kept from the
//! registry's garbage collection by an artifact tagged `blob-<hex>`.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{bail, Context, Result};
use serde_json::json;

use crate::fsutil;
use crate::oci::artifact::{file_digest, parse_uri, put_artifact, Pulled};
use crate::oci::cache::BlobCache;
use crate::oci::client::{Client, RegistryError};
use crate::oci::manifest::Manifest;
use crate::oci::{Digest, Reference};

pub const CACHE_ARTIFACT: &str = "application/vnd.nodeforge.cache.v1";
pub const TARBALL: &str = "application/vnd.nodeforge.cache.tar+zstd";
pub const META: &str = "application/vnd.nodeforge.cache.meta+json";
/// A container image's blob, kept as it is.
pub const BLOB: &str = "application/vnd.nodeforge.cache.blob";

/// `--cache-from` / `--cache-to` and the credentials file, as given.
#[derive(Debug, Clone, Default)]
pub struct RemoteCacheOptions {
    pub from: Option<String>,
    pub to: Option<String>,
    pub auth_file: Option<PathBuf>,
}

pub struct RemoteCache {
    client: Client,
    from: Option<Reference>,
    to: Option<Reference>,
    /// The references as given, for messages.
    from_text: String,
    to_text: String,
    /// Set once a direction failed: one warning, then the build goes on
    /// without it.
    from_off: AtomicBool,
    to_off: AtomicBool,
}

/// One file of an entry: where it lives in the local cache, its type.
pub type EntryFile = (PathBuf, &'static str);

fn repository(s: &str, flag: &str) -> Result<Reference> {
    let r = parse_uri(s).with_context(|| format!("{flag} {s}"))?;
    // The path after the host: a tag or digest there is not a repository.
    let path = s
        .strip_prefix("oci://")
        .unwrap_or(s)
        .split_once('/')
        .map_or("", |(_, p)| p);
    if path.contains(':') || path.contains('@') {
        bail!(
            "{flag} {s}: name a repository (oci://HOST/REPOSITORY); its entries are tagged by \
             their cache keys"
        );
    }
    Ok(r)
}

impl RemoteCache {
    /// None when neither `--cache-from` nor `--cache-to` is given.
    pub fn new(opts: &RemoteCacheOptions) -> Result<Option<RemoteCache>> {
        if opts.from.is_none() && opts.to.is_none() {
            return Ok(None);
        }
        let from = opts
            .from
            .as_deref()
            .map(|s| repository(s, "--cache-from"))
            .transpose()?;
        let to = opts
            .to
            .as_deref()
            .map(|s| repository(s, "--cache-to"))
            .transpose()?;
        let credentials = crate::oci::auth::Credentials::load(opts.auth_file.as_deref())?;
        Ok(Some(RemoteCache {
            client: Client::new()?.with_credentials(credentials),
            from,
            to,
            from_text: opts.from.clone().unwrap_or_default(),
            to_text: opts.to.clone().unwrap_or_default(),
            from_off: AtomicBool::new(false),
            to_off: AtomicBool::new(false),
        }))
    }

    fn tag(kind: &str, key: &str) -> String {
        format!("{kind}-{key}")
    }

    /// Fetches entry `kind`/`key` into the local cache files `files`; true
    /// when every file came. The tarball is committed last, so a local
    /// entry counts only once whole.
    pub fn fetch(&self, kind: &str, key: &str, files: &[EntryFile]) -> bool {
        let Some(from) = &self.from else {
            return false;
        };
        if self.from_off.load(Ordering::Relaxed) {
            return false;
        }
        match self.try_fetch(from, kind, key, files) {
            Ok(found) => found,
            Err(e) => {
                warn(&format!(
                    "the remote cache {} gave no {kind} {}: {e:#}; building it here, and the \
                     rest of this build without it",
                    self.from_text,
                    &key[..12.min(key.len())]
                ));
                self.from_off.store(true, Ordering::Relaxed);
                false
            }
        }
    }

    fn try_fetch(
        &self,
        from: &Reference,
        kind: &str,
        key: &str,
        files: &[EntryFile],
    ) -> Result<bool> {
        let tag = Self::tag(kind, key);
        let image = Reference {
            tag: Some(tag.clone()),
            ..from.clone()
        };
        let m = match self.client.manifest(&image, &tag) {
            Ok((Manifest::Image(m), _, digest)) => (m, digest),
            Ok(_) => bail!("{tag} is not a cache entry"),
            Err(RegistryError::NotFound { .. }) => return Ok(false),
            Err(e) => return Err(e.into()),
        };
        let (manifest, digest) = m;
        let pulled = Pulled {
            reference: Reference {
                tag: None,
                digest: Some(digest),
                ..from.clone()
            },
            layers: manifest.layers,
            name: None,
        };
        // Metadata first, the tarball last (see above).
        let mut order: Vec<&EntryFile> = files.iter().collect();
        order.sort_by_key(|(_, media)| *media == TARBALL);
        for (path, media) in order {
            let layer = pulled.layer(media)?;
            if let Some(dir) = path.parent() {
                fsutil::create_dir_all(dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
            }
            let partial = fsutil::private_partial_path(path);
            let mut out = File::create(&partial)
                .with_context(|| format!("creating {}", partial.display()))?;
            let copied = std::io::copy(&mut pulled.stream(&self.client, layer)?, &mut out)
                .with_context(|| format!("fetching {} into {}", layer.digest, path.display()));
            if let Err(e) = copied.and_then(|_| out.sync_all().map_err(Into::into)) {
                let _ = std::fs::remove_file(&partial);
                return Err(e);
            }
            fsutil::commit_partial(&partial, path)?;
        }
        Ok(true)
    }

    /// Pushes entry `kind`/`key` from the local cache files `files` (all
    /// of them must be there). Nothing without `--cache-to`.
    pub fn store(&self, kind: &str, key: &str, files: &[EntryFile]) {
        let Some(to) = &self.to else {
            return;
        };
        if files.iter().any(|(p, _)| !p.is_file()) || self.to_off.load(Ordering::Relaxed) {
            return;
        }
        if let Err(e) = self.try_store(to, kind, key, files) {
            warn(&format!(
                "the remote cache {} did not take {kind} {}: {e:#}; the rest of this build \
                 pushes nothing",
                self.to_text,
                &key[..12.min(key.len())]
            ));
            self.to_off.store(true, Ordering::Relaxed);
        }
    }

    /// The entry `kind`/`key` in `to`, and whether the registry has it
    /// already (one request). An entry is immutable under its key: one
    /// there already is not hashed and offered again (a reused layer can
    /// be gigabytes).
    fn entry(&self, to: &Reference, kind: &str, key: &str) -> Result<(Reference, String, bool)> {
        let tag = Self::tag(kind, key);
        let target = Reference {
            tag: Some(tag.clone()),
            ..to.clone()
        };
        let present = match self.client.manifest(&target, &tag) {
            Ok(_) => true,
            Err(RegistryError::NotFound { .. }) => false,
            Err(e) => return Err(e.into()),
        };
        Ok((target, tag, present))
    }

    fn try_store(&self, to: &Reference, kind: &str, key: &str, files: &[EntryFile]) -> Result<()> {
        let (target, tag, present) = self.entry(to, kind, key)?;
        if present {
            return Ok(());
        }
        let mut layers = Vec::new();
        for (path, media) in files {
            let (digest, size) = file_digest(path)?;
            self.client.upload_blob(&target, &digest, path, size)?;
            layers.push(json!({"mediaType": media, "digest": digest.as_str(), "size": size}));
        }
        put_artifact(
            &self.client,
            &target,
            Some(&tag),
            CACHE_ARTIFACT,
            layers,
            json!({}),
        )?;
        Ok(())
    }

    /// Fetches blob `d` of a container image into `blobs` from
    /// `--cache-from`; false when it is not there (or the cache failed,
    /// which warns once). The digest is checked before the blob counts.
    pub fn fetch_blob(&self, blobs: &BlobCache, d: &Digest, size: Option<u64>) -> bool {
        let Some(from) = &self.from else {
            return false;
        };
        if self.from_off.load(Ordering::Relaxed) {
            return false;
        }
        match blobs.fetch(&self.client, from, d, size) {
            Ok(_) => true,
            Err(e) => {
                if matches!(
                    e.downcast_ref::<RegistryError>(),
                    Some(RegistryError::NotFound { .. })
                ) {
                    return false;
                }
                warn(&format!(
                    "the remote cache {} gave no blob {d}: {e:#}; fetching it from its image's \
                     registry, and the rest of this build without the cache",
                    self.from_text
                ));
                self.from_off.store(true, Ordering::Relaxed);
                false
            }
        }
    }

    /// Pushes blob `d` (the file `path`) to `--cache-to` unless its
    /// `blob-<hex>` entry is there already (one request). The entry, not
    /// the blob, is asked for: a blob left without one by an interrupted
    /// push would be garbage-collected.
    pub fn store_blob(&self, d: &Digest, path: &Path) {
        let Some(to) = &self.to else {
            return;
        };
        if self.to_off.load(Ordering::Relaxed) {
            return;
        }
        let stored = (|| -> Result<()> {
            let (target, tag, present) = self.entry(to, "blob", d.hex())?;
            if present {
                return Ok(());
            }
            let size = std::fs::metadata(path)
                .with_context(|| format!("reading {}", path.display()))?
                .len();
            // Skips the upload when the registry has the blob already.
            self.client.upload_blob(to, d, path, size)?;
            let layer = json!({"mediaType": BLOB, "digest": d.as_str(), "size": size});
            put_artifact(
                &self.client,
                &target,
                Some(&tag),
                CACHE_ARTIFACT,
                vec![layer],
                json!({}),
            )?;
            Ok(())
        })();
        if let Err(e) = stored {
            warn(&format!(
                "the remote cache {} did not take blob {d}: {e:#}; the rest of this build \
                 pushes nothing",
                self.to_text
            ));
            self.to_off.store(true, Ordering::Relaxed);
        }
    }

    /// Where entries come from, for step reports.
    pub fn from_uri(&self) -> &str {
        &self.from_text
    }
}

fn warn(msg: &str) {
    eprintln!("warning: {msg}");
}

//! What a build is asked to do, what it produced, and the state its steps
//! share while it runs.

use std::path::PathBuf;

use serde::Serialize;

use super::image::PartialImage;
use super::layers;
use super::progress::{Output, StepReport};
use crate::cache::{BuildLock, Cache};
use crate::plan::Plan;

#[derive(Debug, Clone)]
pub struct BuildOptions {
    pub output_dir: PathBuf,
    pub cache_dir: PathBuf,
    pub output: Output,
    /// Build from scratch: do not reuse cached layers.
    pub no_cache: bool,
    /// The agent binary to install; built from the source tree when unset.
    pub agent: Option<PathBuf>,
    /// Take container image blobs from the cache only; a missing one is an
    /// error naming it.
    pub offline: bool,
    /// The build cache shared through a registry (`--cache-from`,
    /// `--cache-to`).
    pub remote_cache: super::remote_cache::RemoteCacheOptions,
    /// The release key that signs the build's release (`--signing-key`).
    pub signing_key: Option<PathBuf>,
}

/// What a finished build produced.
#[derive(Debug, Clone, Serialize)]
pub struct BuildResult {
    pub image: PathBuf,
    pub sha256: String,
    pub manifest: PathBuf,
    pub image_size: u64,
    /// Bytes of the image that hold data (the rest are holes).
    pub allocated: u64,
    pub steps: Vec<StepReport>,
}

/// State the steps share.
pub struct BuildContext<'a> {
    pub plan: &'a Plan,
    pub opts: &'a BuildOptions,
    /// The target's root directory being assembled.
    pub rootfs: PathBuf,
    /// The disk image under its temporary name.
    pub image: Option<PartialImage>,
    /// SOURCE_DATE_EPOCH: the time every file of the image carries.
    pub epoch: Option<i64>,
    /// Facts steps learn for the manifest (kernel version …).
    pub facts: serde_json::Map<String, serde_json::Value>,
    /// The steps finished so far (the manifest lists them).
    pub reports: Vec<StepReport>,
    /// Files written beside the image whose digest a step already took
    /// (the release lists them without reading them again).
    pub digests: std::collections::BTreeMap<String, crate::release::FileDigest>,
    /// Loaded before the first step, so a bad key fails the build at once.
    pub signing_key: Option<ssh_key::PrivateKey>,
    /// Set by the `outputs` step.
    pub(super) result: Option<BuildResult>,
    pub cache: Cache,
    /// The registry cache, when the build was given one.
    pub remote: Option<super::remote_cache::RemoteCache>,
    /// The first-boot agent binary for the image's architecture.
    pub agent_binary: PathBuf,
    /// Key of everything the image is made from (see uptodate.rs).
    pub image_key: String,
    pub agent_sha256: String,
    /// Key of the tree as built so far: the rootfs, then each step's layer.
    pub(super) layer_key: String,
    /// The tree's entries after the last step that ran here, if known.
    pub(super) tree_snapshot: Option<layers::Snapshot>,
    /// Scratch space on the cache's disk, removed with the context.
    pub(super) work: tempfile::TempDir,
    pub(super) _lock: BuildLock,
}

impl BuildContext<'_> {
    /// A path inside the target root (`/etc/fstab` → `<rootfs>/etc/fstab`).
    pub fn target(&self, path: &str) -> PathBuf {
        self.rootfs.join(path.trim_start_matches('/'))
    }
}

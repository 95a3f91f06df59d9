//! Writes container images straight into the Docker engine's own store
//! (`/var/lib/docker`, overlay2 graph driver, the layout of moby v26.1,
//! the engine trixie ships), so a node starts its stacks without loading
//! anything and keeps one copy of each layer. docs/preload-docker-store.md
//! gives every file and where in moby's source it comes from.
//!
//! Names on disk are derived from content (the layer's chain ID), not
//! random as the engine makes them: the store is the same bytes for the
//! same images, which the build cache and reproducible builds need.

use std::collections::BTreeMap;
use std::fs;
use std::io::BufWriter;
use std::os::unix::fs::{symlink, DirBuilderExt};
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use super::cache::BlobCache;
use super::manifest::ImageManifest;
use super::unpack::unpack_layer;
use super::{Digest, Reference};
use crate::fsutil;

/// Where the engine keeps its state inside the image.
pub const DOCKER_ROOT: &str = "/var/lib/docker";

/// One image to preload.
pub struct StoreImage<'a> {
    pub reference: &'a Reference,
    /// The name:tag compose files use.
    pub tag: &'a str,
    /// The locked manifest digest (the image's repo digest).
    pub manifest_digest: &'a Digest,
    pub manifest: &'a ImageManifest,
}

/// What the store holds once written.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct StoreReport {
    pub images: usize,
    /// Distinct layers unpacked (shared ones count once).
    pub layers: usize,
    /// The layers' `size` sum: bytes the unpacked files take.
    pub unpacked_bytes: u64,
}

/// The parts of an image config the store needs.
#[derive(Deserialize)]
struct Config {
    #[serde(default)]
    os: String,
    rootfs: RootFs,
}

#[derive(Deserialize)]
struct RootFs {
    diff_ids: Vec<Digest>,
}

/// A layer's chain ID: the first diff ID, then
/// sha256("<parent chain> <diff id>") for each next layer.
pub fn chain_ids(diff_ids: &[Digest]) -> Vec<Digest> {
    let mut out: Vec<Digest> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(parent) => Digest::of(format!("{parent} {d}").as_bytes()),
        };
        out.push(next);
    }
    out
}

/// The overlay2 short link name of a layer: 26 characters of base32
/// (A-Z2-7), as the driver's own random ones, here from the chain ID.
fn short_link(chain: &Digest) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let hash = Sha256::digest(chain.as_str().as_bytes());
    let mut bits: u32 = 0;
    let mut n = 0;
    let mut out = String::new();
    for &b in &hash[..17] {
        bits = (bits << 8) | b as u32;
        n += 8;
        while n >= 5 {
            n -= 5;
            out.push(ALPHABET[((bits >> n) & 31) as usize] as char);
        }
    }
    out.truncate(26);
    out
}

/// `path` and any missing parents, each with `mode` (not the umask's).
fn mkdir(path: &Path, mode: u32) -> Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(path)
        .with_context(|| format!("creating {}", path.display()))?;
    fsutil::set_mode(path, mode)
}

fn write(path: &Path, data: &[u8], mode: u32) -> Result<()> {
    fs::write(path, data).with_context(|| format!("writing {}", path.display()))?;
    fsutil::set_mode(path, mode)
}

/// Writes `images` into the engine root `root` (the image's
/// `/var/lib/docker`), which must not hold a store yet. Every blob must
/// be in `cache`.
pub fn write_store(root: &Path, images: &[StoreImage], cache: &BlobCache) -> Result<StoreReport> {
    if root.join("image").exists() || root.join("overlay2").exists() {
        bail!(
            "{} already holds a Docker store: a preloaded image cannot be merged into it",
            root.display()
        );
    }
    mkdir(root, 0o710)?;
    let meta = root.join("image/overlay2");
    let overlay = root.join("overlay2");
    mkdir(&root.join("image"), 0o700)?;
    mkdir(&meta, 0o700)?;
    mkdir(&overlay, 0o710)?;
    mkdir(&overlay.join("l"), 0o700)?;
    let layerdb = meta.join("layerdb/sha256");
    mkdir(&layerdb, 0o700)?;
    mkdir(&meta.join("imagedb/content/sha256"), 0o700)?;
    mkdir(&meta.join("imagedb/metadata/sha256"), 0o700)?;
    let dist = meta.join("distribution");
    mkdir(&dist, 0o700)?;
    mkdir(&dist.join("v2metadata-by-diffid/sha256"), 0o755)?;
    mkdir(&dist.join("diffid-by-digest/sha256"), 0o755)?;

    let mut report = StoreReport::default();
    let mut repositories: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    // diff ID → (blob digest, source repository) pairs, for pushes/pulls.
    let mut sources: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    for im in images {
        let what = || format!("image {} ({})", im.reference, im.manifest_digest);
        let config_bytes = cache
            .read(&im.manifest.config.digest)
            .with_context(|| format!("reading the config of {}", what()))?;
        let config: Config = serde_json::from_slice(&config_bytes)
            .with_context(|| format!("parsing the config of {}", what()))?;
        if !(config.os.is_empty() || config.os == "linux") {
            bail!("{} is for {}, not linux", what(), config.os);
        }
        let diff_ids = &config.rootfs.diff_ids;
        if diff_ids.len() != im.manifest.layers.len() {
            bail!(
                "{}: its config lists {} layers, its manifest {}",
                what(),
                diff_ids.len(),
                im.manifest.layers.len()
            );
        }
        let chains = chain_ids(diff_ids);
        for (i, layer) in im.manifest.layers.iter().enumerate() {
            let chain = &chains[i];
            let parent = i.checked_sub(1).map(|p| &chains[p]);
            let repo = im.reference.name();
            sources
                .entry(diff_ids[i].hex().to_owned())
                .or_default()
                .push((layer.digest.to_string(), repo));
            if layerdb.join(chain.hex()).exists() {
                continue;
            }
            let size = write_layer(root, chain, parent, &diff_ids[i], layer, cache)
                .with_context(|| format!("unpacking layer {} of {}", layer.digest, what()))?;
            report.layers += 1;
            report.unpacked_bytes += size;
        }
        write(
            &meta
                .join("imagedb/content/sha256")
                .join(im.manifest.config.digest.hex()),
            &config_bytes,
            0o600,
        )?;
        let name = im.reference.familiar_name();
        let id = im.manifest.config.digest.to_string();
        let refs = repositories.entry(name.clone()).or_default();
        refs.insert(im.tag.to_owned(), id.clone());
        refs.insert(format!("{name}@{}", im.manifest_digest), id);
        report.images += 1;
    }
    for (diff, mut pairs) in sources {
        pairs.sort();
        pairs.dedup();
        for (blob, _) in &pairs {
            let blob = Digest::parse(blob)?;
            write(
                &dist.join("diffid-by-digest/sha256").join(blob.hex()),
                format!("sha256:{diff}").as_bytes(),
                0o644,
            )?;
        }
        let entries: Vec<serde_json::Value> = pairs
            .iter()
            .map(|(blob, repo)| {
                serde_json::json!({ "Digest": blob, "SourceRepository": repo, "HMAC": "" })
            })
            .collect();
        write(
            &dist.join("v2metadata-by-diffid/sha256").join(diff),
            serde_json::Value::from(entries).to_string().as_bytes(),
            0o644,
        )?;
    }
    let repos = serde_json::json!({ "Repositories": repositories });
    write(
        &meta.join("repositories.json"),
        repos.to_string().as_bytes(),
        0o600,
    )?;
    Ok(report)
}

/// One layer: its overlay2 directory (diff, link, lower, work, the short
/// link) and its layerdb entry. Returns the layer's size.
fn write_layer(
    root: &Path,
    chain: &Digest,
    parent: Option<&Digest>,
    diff_id: &Digest,
    layer: &super::manifest::Descriptor,
    cache: &BlobCache,
) -> Result<u64> {
    let overlay = root.join("overlay2");
    let cache_id = chain.hex();
    let dir = overlay.join(cache_id);
    mkdir(&dir, 0o710)?;
    let diff = dir.join("diff");
    mkdir(&diff, 0o755)?;
    let blob = cache
        .get(&layer.digest)
        .with_context(|| format!("blob {} is not in the cache", layer.digest))?;
    let file = fs::File::open(&blob).with_context(|| format!("opening {}", blob.display()))?;
    let stream = decompress(layer.media_type.as_deref(), file)?;
    let entry = root.join("image/overlay2/layerdb/sha256").join(chain.hex());
    let tmp = entry.with_extension("partial");
    mkdir(&tmp, 0o700)?;
    let split_path = tmp.join("tar-split.json.gz");
    let split = BufWriter::new(
        fs::File::create(&split_path)
            .with_context(|| format!("creating {}", split_path.display()))?,
    );
    let got = unpack_layer(stream, &diff, split)?;
    if got.diff_id_hex != diff_id.hex() {
        bail!(
            "the layer's content is sha256:{}, but the image config says {diff_id}",
            got.diff_id_hex
        );
    }
    fsutil::set_mode(&split_path, 0o644)?;
    let link = short_link(chain);
    write(&dir.join("link"), link.as_bytes(), 0o644)?;
    symlink(format!("../{cache_id}/diff"), overlay.join("l").join(&link))
        .with_context(|| format!("linking {}/l/{link}", overlay.display()))?;
    if let Some(p) = parent {
        let parent_dir = overlay.join(p.hex());
        let parent_link = fs::read_to_string(parent_dir.join("link"))?;
        let parent_lower = match fs::read_to_string(parent_dir.join("lower")) {
            Ok(l) => format!(":{l}"),
            Err(_) => String::new(),
        };
        write(
            &dir.join("lower"),
            format!("l/{parent_link}{parent_lower}").as_bytes(),
            0o644,
        )?;
        mkdir(&dir.join("work"), 0o700)?;
        write(&parent_dir.join("committed"), b"", 0o600)?;
        write(&tmp.join("parent"), p.as_str().as_bytes(), 0o644)?;
    }
    write(&tmp.join("diff"), diff_id.as_str().as_bytes(), 0o644)?;
    // No newline: the engine parses the number as it is.
    write(&tmp.join("size"), got.size.to_string().as_bytes(), 0o644)?;
    write(&tmp.join("cache-id"), cache_id.as_bytes(), 0o644)?;
    fs::rename(&tmp, &entry).with_context(|| format!("renaming {}", tmp.display()))?;
    Ok(got.size)
}

/// The layer's tar stream from its blob, by media type (gzip when the
/// type does not say, as registries serving Docker's old types do).
fn decompress(media_type: Option<&str>, file: fs::File) -> Result<Box<dyn std::io::Read>> {
    let file = std::io::BufReader::with_capacity(1 << 20, file);
    let t = media_type.unwrap_or("");
    Ok(if t.ends_with("+zstd") {
        Box::new(zstd::Decoder::with_buffer(file).context("reading a zstd layer")?)
    } else if t.ends_with(".tar") {
        Box::new(file)
    } else {
        Box::new(flate2::read::MultiGzDecoder::new(file))
    })
}

#[cfg(test)]
#[path = "docker_store_tests.rs"]
mod tests;

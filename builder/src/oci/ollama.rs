//! Ollama models baked into the image like container images: locked by
//! the digest of their manifest, fetched through the blob cache, and
//! written into Ollama's own model store so `ollama list` shows them at
//! first boot with no network.
//!
//! Ollama's registry speaks the OCI distribution API: a model is a
//! manifest (Docker's v2 schema) whose layers are the weights
//! (`application/vnd.ollama.image.model`), the template, the parameters,
//! the licence. The store under `OLLAMA_MODELS` holds
//! `manifests/<host>/<namespace>/<model>/<tag>` (the manifest's bytes; the
//! digest `ollama list` shows is theirs) and `blobs/sha256-<hex>`
//! (checked against Ollama's server/modelpath.go, GetManifestPath and
//! GetBlobsPath, 0.3.x; names default as its ParseModelPath does).

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};

use super::cache::BlobCache;
use super::manifest::ImageManifest;
use super::{Digest, Reference};
use crate::fsutil;

/// The model store inside the image. The ai stack binds it over Ollama's
/// `/root/.ollama/models`; models pulled later land beside the baked ones.
pub const MODELS_DIR: &str = "/var/lib/ollama/models";

/// The layer that makes a manifest a model: its weights (GGUF).
pub const WEIGHTS_MEDIA_TYPE: &str = "application/vnd.ollama.image.model";

pub const DEFAULT_HOST: &str = "registry.ollama.ai";
const DEFAULT_NAMESPACE: &str = "library";
const DEFAULT_TAG: &str = "latest";

/// A model name as `ollama pull` takes it, defaults filled in:
/// `[host/][namespace/]model[:tag]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelName {
    pub host: String,
    pub namespace: String,
    pub model: String,
    pub tag: String,
}

impl ModelName {
    pub fn parse(s: &str) -> Result<ModelName> {
        let bad = |why: &str| anyhow!("model name `{s}` is not valid: {why}");
        let parts: Vec<&str> = s.split('/').collect();
        let (host, namespace, rest) = match parts[..] {
            [m] => (DEFAULT_HOST, DEFAULT_NAMESPACE, m),
            [n, m] => (DEFAULT_HOST, n, m),
            [h, n, m] => (h, n, m),
            _ => {
                return Err(bad(
                    "it is `[host/][namespace/]model[:tag]`, e.g. `llama3.2`",
                ))
            }
        };
        let (model, tag) = rest.split_once(':').unwrap_or((rest, DEFAULT_TAG));
        // Lowercase only: some Ollama versions lowercase the store's paths
        // (model.Name.Filepath) and some do not, so only a lowercase name
        // is found by both; the registry wants lowercase repositories.
        let part_ok = |p: &str, extra: &str| {
            let edge = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
            p.starts_with(edge)
                && p.ends_with(edge)
                && p.chars()
                    .all(|c| edge(c) || "_.-".contains(c) || extra.contains(c))
        };
        if !part_ok(host, ":")
            || !part_ok(namespace, "")
            || !part_ok(model, "")
            || !part_ok(tag, "")
        {
            return Err(bad(
                "each part holds lowercase letters, digits, and `_`, `.` or `-` between them \
                 (a host may add `:port`)",
            ));
        }
        Ok(ModelName {
            host: host.to_owned(),
            namespace: namespace.to_owned(),
            model: model.to_owned(),
            tag: tag.to_owned(),
        })
    }

    /// `host/namespace/model:tag`, as Ollama writes it in full.
    pub fn full(&self) -> String {
        format!(
            "{}/{}/{}:{}",
            self.host, self.namespace, self.model, self.tag
        )
    }

    /// The registry reference its manifest and blobs are fetched by: the
    /// first of three parts is always the host, as Ollama reads it (an
    /// image reference would take `myhost/ns/model` for Docker Hub's).
    pub fn reference(&self) -> Reference {
        Reference {
            registry: self.host.clone(),
            repository: format!("{}/{}", self.namespace, self.model),
            tag: Some(self.tag.clone()),
            digest: None,
        }
    }

    /// Whether `manifest` is a model's: it has a weights layer.
    pub fn is_model(manifest: &ImageManifest) -> bool {
        manifest
            .layers
            .iter()
            .any(|d| d.media_type.as_deref() == Some(WEIGHTS_MEDIA_TYPE))
    }

    /// The manifest's path below the store.
    pub fn manifest_path(&self) -> PathBuf {
        [
            "manifests",
            &self.host,
            &self.namespace,
            &self.model,
            &self.tag,
        ]
        .iter()
        .collect()
    }
}

/// A blob's path below the store.
pub fn blob_path(d: &Digest) -> PathBuf {
    PathBuf::from(format!("blobs/sha256-{}", d.hex()))
}

/// One model to bake: its name, its locked manifest's bytes and parsed
/// form (its blobs already in the cache).
pub struct StoreModel<'a> {
    pub name: &'a ModelName,
    pub manifest_bytes: &'a [u8],
    pub manifest: &'a ImageManifest,
}

/// Writes the models into the store at `root` (the image's
/// [`MODELS_DIR`]) and returns the bytes written (blobs shared by two
/// models count once).
pub fn write_store(root: &Path, models: &[StoreModel], cache: &BlobCache) -> Result<u64> {
    let mut total = 0;
    for m in models {
        for d in std::iter::once(&m.manifest.config).chain(&m.manifest.layers) {
            let dest = root.join(blob_path(&d.digest));
            if dest.exists() {
                continue;
            }
            fsutil::create_dir_all(dest.parent().expect("has parent"))?;
            let src = cache.path(&d.digest);
            let tmp = dest.with_extension("partial");
            fs::copy(&src, &tmp).with_context(|| {
                format!(
                    "copying blob {} of model {} from the cache ({}) into the store",
                    d.digest,
                    m.name.full(),
                    src.display()
                )
            })?;
            fs::rename(&tmp, &dest)
                .with_context(|| format!("moving {} into place", dest.display()))?;
            total += d.size;
        }
        let path = root.join(m.name.manifest_path());
        fsutil::create_dir_all(path.parent().expect("has parent"))?;
        fsutil::atomic_write(&path, m.manifest_bytes)
            .with_context(|| format!("writing the manifest of model {}", m.name.full()))?;
        total += m.manifest_bytes.len() as u64;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_take_ollamas_defaults() {
        let n = ModelName::parse("llama3.2").unwrap();
        assert_eq!(n.full(), "registry.ollama.ai/library/llama3.2:latest");
        assert_eq!(
            n.manifest_path(),
            Path::new("manifests/registry.ollama.ai/library/llama3.2/latest")
        );
        let r = n.reference();
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str(), r.tag.as_deref()),
            ("registry.ollama.ai", "library/llama3.2", Some("latest"))
        );
        let n = ModelName::parse("nomic-embed-text:v1.5").unwrap();
        assert_eq!(n.full(), "registry.ollama.ai/library/nomic-embed-text:v1.5");
        let n = ModelName::parse("someone/tiny").unwrap();
        assert_eq!(n.full(), "registry.ollama.ai/someone/tiny:latest");
        let n = ModelName::parse("127.0.0.1:5000/library/tiny:q4").unwrap();
        assert_eq!(
            n.manifest_path(),
            Path::new("manifests/127.0.0.1:5000/library/tiny/q4")
        );
        // Three parts: the first is the host even without a dot or port.
        let r = ModelName::parse("myhost/ns/tiny").unwrap().reference();
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str()),
            ("myhost", "ns/tiny")
        );
    }

    #[test]
    fn bad_names_say_what_a_name_is() {
        for bad in [
            "", "a/b/c/d", "llama 3", "Llama3", "x:Q4_K_M", "x:", "/x", "x:@1", "x-",
        ] {
            let e = ModelName::parse(bad).unwrap_err().to_string();
            assert!(e.contains(&format!("model name `{bad}`")), "{e}");
        }
    }

    #[test]
    fn blobs_are_named_as_ollama_names_them() {
        let d = Digest::of(b"weights");
        assert_eq!(
            blob_path(&d).to_str().unwrap(),
            format!("blobs/sha256-{}", d.hex())
        );
    }
}

//! `docker load`-able archives. One tar is both a docker-archive
//! (`manifest.json` naming config and layers) and an OCI image layout
//! (`oci-layout`, `index.json`, `blobs/sha256/…`), the way `docker save`
//! writes them since Docker 25, so any engine version loads it. Layers stay
//! as the registry serves them (compressed): the engine decompresses on load.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use anyhow::{Context, Result};

use super::cache::BlobCache;
use super::manifest::{self, ImageManifest};
use super::Digest;

/// What went into an archive.
#[derive(Debug, Clone)]
pub struct ArchiveInfo {
    /// Bytes of config and layers (what the registry served).
    pub blob_bytes: u64,
    /// Size of the tar file.
    pub archive_bytes: u64,
}

/// Writes the archive of one image to `dest`. The manifest, its config and
/// layers must all be in `cache` under their digests.
pub fn write(
    dest: &Path,
    tag: &str,
    manifest_digest: &Digest,
    image: &ImageManifest,
    cache: &BlobCache,
) -> Result<ArchiveInfo> {
    let file = File::create(dest).with_context(|| format!("creating {}", dest.display()))?;
    let mut tar = tar::Builder::new(BufWriter::new(file));
    let blob_name = |d: &Digest| format!("blobs/sha256/{}", d.hex());

    let docker_manifest = serde_json::json!([{
        "Config": blob_name(&image.config.digest),
        "RepoTags": [tag],
        "Layers": image.layers.iter().map(|l| blob_name(&l.digest)).collect::<Vec<_>>(),
    }]);
    let manifest_body = cache
        .read(manifest_digest)
        .with_context(|| format!("reading manifest {manifest_digest} of {tag} from the cache"))?;
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": manifest::OCI_INDEX,
        "manifests": [{
            "mediaType": image.media_type.as_deref().unwrap_or(manifest::OCI_MANIFEST),
            "digest": manifest_digest,
            "size": manifest_body.len(),
            "annotations": {
                "io.containerd.image.name": tag,
                "org.opencontainers.image.ref.name": tag.rsplit_once(':').map_or(tag, |(_, t)| t),
            },
        }],
    });
    let mut blob_bytes = 0;
    add_bytes(&mut tar, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    add_bytes(&mut tar, "index.json", index.to_string().as_bytes())?;
    add_bytes(
        &mut tar,
        "manifest.json",
        docker_manifest.to_string().as_bytes(),
    )?;
    add_bytes(&mut tar, &blob_name(manifest_digest), &manifest_body)?;
    let mut seen: Vec<&Digest> = Vec::new();
    for d in std::iter::once(&image.config).chain(&image.layers) {
        // An image may repeat a layer (an empty one, typically).
        if seen.contains(&&d.digest) {
            continue;
        }
        seen.push(&d.digest);
        let path = cache
            .get(&d.digest)
            .with_context(|| format!("blob {} of {tag} is not in the cache", d.digest))?;
        let f = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
        let len = f
            .metadata()
            .with_context(|| format!("reading {}", path.display()))?
            .len();
        let mut h = header(len);
        tar.append_data(&mut h, blob_name(&d.digest), f)
            .with_context(|| format!("adding blob {} of {tag} to {}", d.digest, dest.display()))?;
        blob_bytes += len;
    }
    let mut w = tar
        .into_inner()
        .with_context(|| format!("finishing {}", dest.display()))?;
    let file = w
        .flush()
        .and_then(|()| w.into_inner().map_err(|e| e.into_error()))
        .and_then(|f| f.sync_all().map(|()| f))
        .with_context(|| format!("writing {}", dest.display()))?;
    Ok(ArchiveInfo {
        blob_bytes,
        archive_bytes: file
            .metadata()
            .with_context(|| format!("reading {}", dest.display()))?
            .len(),
    })
}

/// A header with fixed owner, mode and time, so the same image gives the
/// same archive bytes.
fn header(len: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_size(len);
    h.set_mode(0o644);
    h.set_mtime(0);
    h.set_uid(0);
    h.set_gid(0);
    h.set_entry_type(tar::EntryType::Regular);
    h
}

fn add_bytes<W: Write>(tar: &mut tar::Builder<W>, name: &str, data: &[u8]) -> Result<()> {
    let mut h = header(data.len() as u64);
    tar.append_data(&mut h, name, data)
        .with_context(|| format!("adding {name} to the archive"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::manifest::Descriptor;

    #[test]
    fn archive_is_docker_archive_and_oci_layout() {
        let dir = tempfile::tempdir().unwrap();
        let cache = BlobCache::new(dir.path());
        let config =
            br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
        let layer = b"not really a tar, but bytes";
        let (cd, ld) = (Digest::of(config), Digest::of(layer));
        cache.put(&cd, config).unwrap();
        cache.put(&ld, layer).unwrap();
        let desc = |d: &Digest, n: usize| Descriptor {
            media_type: None,
            digest: d.clone(),
            size: n as u64,
            platform: None,
        };
        let im = ImageManifest {
            schema_version: 2,
            media_type: Some(manifest::OCI_MANIFEST.into()),
            config: desc(&cd, config.len()),
            layers: vec![desc(&ld, layer.len()), desc(&ld, layer.len())],
        };
        let body = serde_json::to_vec(&im).unwrap();
        let md = Digest::of(&body);
        cache.put(&md, &body).unwrap();
        let dest = dir.path().join("img.tar");
        let info = write(&dest, "127.0.0.1:5000/web:1", &md, &im, &cache).unwrap();
        assert_eq!(info.blob_bytes, (config.len() + layer.len()) as u64);

        let mut names = Vec::new();
        let mut docker_manifest = serde_json::Value::Null;
        let mut ar = tar::Archive::new(File::open(&dest).unwrap());
        for e in ar.entries().unwrap() {
            let mut e = e.unwrap();
            let name = e.path().unwrap().to_string_lossy().into_owned();
            if name == "manifest.json" {
                docker_manifest = serde_json::from_reader(&mut e).unwrap();
            }
            names.push(name);
        }
        assert_eq!(docker_manifest[0]["RepoTags"][0], "127.0.0.1:5000/web:1");
        assert_eq!(
            docker_manifest[0]["Config"],
            format!("blobs/sha256/{}", cd.hex())
        );
        assert_eq!(docker_manifest[0]["Layers"].as_array().unwrap().len(), 2);
        for want in [
            "oci-layout",
            "index.json",
            &format!("blobs/sha256/{}", md.hex()),
            &format!("blobs/sha256/{}", ld.hex()),
        ] {
            assert!(
                names.iter().any(|n| n == want),
                "{want} missing from {names:?}"
            );
        }
        // The repeated layer is stored once.
        assert_eq!(names.iter().filter(|n| n.ends_with(ld.hex())).count(), 1);
        // Missing blobs name the blob and the image.
        let other = dir.path().join("b.tar");
        let mut im2 = im.clone();
        im2.layers[0].digest = Digest::of(b"absent");
        let err = format!("{:#}", write(&other, "x:1", &md, &im2, &cache).unwrap_err());
        assert!(
            err.contains(Digest::of(b"absent").as_str()) && err.contains("x:1"),
            "{err}"
        );
    }
}

//! A build in a registry: `nodeforge push` publishes a build directory's
//! image (zstd-compressed), block map, build manifest and netboot files as
//! one OCI artifact; `flash oci://REF@sha256:…` streams it back.
//!
//! The artifact is an OCI image manifest (image-spec v1.1 artifact
//! guidance: `artifactType`, the empty config `{}`), one layer per file,
//! each told apart by its media type ([`DISK_IMAGE_ZSTD`], [`BMAP`] …) and
//! titled with its file name (`org.opencontainers.image.title`).
//! Compression is deterministic (zstd level [`ZSTD_LEVEL`], one thread),
//! so one image always gives one digest.

use std::fs::File;
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::json;
use sha2::{Digest as _, Sha256};

use super::client::Client;
use super::manifest::{Descriptor, Manifest, OCI_MANIFEST};
use super::{Digest, Reference};

pub const ARTIFACT_TYPE: &str = "application/vnd.nodeforge.image.v1";
pub const EMPTY_CONFIG: &str = "application/vnd.oci.empty.v1+json";
pub const DISK_IMAGE_ZSTD: &str = "application/vnd.nodeforge.disk-image.v1.raw+zstd";
pub const BMAP: &str = "application/vnd.nodeforge.bmap.v1+xml";
pub const BUILD_MANIFEST: &str = "application/vnd.nodeforge.build-manifest.v1+json";
pub const ROOT_CHUNKS: &str = "application/vnd.nodeforge.root-chunks.v1+json";
pub const RELEASE: &str = "application/vnd.nodeforge.release.v1+json";
pub const RELEASE_SIGNATURE: &str = "application/vnd.nodeforge.release.v1.sshsig";
/// Files beside the image a build may have written, by their suffix
/// after the build's name: its manifest, its root slot's chunk index and
/// its (signed) release.
pub const BESIDE_IMAGE: [(&str, &str); 4] = [
    (".manifest.json", BUILD_MANIFEST),
    (".root.chunks.json", ROOT_CHUNKS),
    (".release.json", RELEASE),
    (".release.json.sig", RELEASE_SIGNATURE),
];
/// Netboot files by their suffix after the build's name.
pub const NETBOOT: [(&str, &str); 4] = [
    (".vmlinuz", "application/vnd.nodeforge.netboot.kernel.v1"),
    (".initrd", "application/vnd.nodeforge.netboot.initrd.v1"),
    (
        ".squashfs",
        "application/vnd.nodeforge.netboot.root.v1+squashfs",
    ),
    (
        ".boot.ipxe",
        "application/vnd.nodeforge.netboot.ipxe-script.v1",
    ),
];
pub const ZSTD_LEVEL: i32 = 3;
const TITLE: &str = "org.opencontainers.image.title";

/// `oci://host[:port]/repository[:tag][@sha256:…]` (the scheme may be left
/// out where nothing else is meant).
pub fn parse_uri(s: &str) -> Result<Reference> {
    let rest = s.strip_prefix("oci://").unwrap_or(s);
    let r = Reference::parse(rest)?;
    if !rest.starts_with(&r.registry) {
        bail!("`{s}` names no registry host: write oci://HOST[:PORT]/REPOSITORY[:TAG]");
    }
    Ok(r)
}

/// The files of one build in a build directory.
#[derive(Debug)]
pub struct BuildFiles {
    pub name: String,
    /// (path, media type), the disk image first.
    pub files: Vec<(PathBuf, &'static str)>,
}

/// Finds the build `name` in `dir` (the only one when `name` is None):
/// `<name>.img` with its `.img.bmap`, and its manifest, release and
/// netboot files when the build made them.
pub fn find_build(dir: &Path, name: Option<&str>) -> Result<BuildFiles> {
    let name = match name {
        Some(n) => n.to_owned(),
        None => {
            let mut names: Vec<String> = std::fs::read_dir(dir)
                .with_context(|| format!("listing build directory {}", dir.display()))?
                .filter_map(|e| e.ok())
                .filter_map(|e| {
                    e.file_name()
                        .to_str()
                        .and_then(|n| n.strip_suffix(".img"))
                        .map(str::to_owned)
                })
                .collect();
            names.sort();
            match names.as_slice() {
                [one] => one.clone(),
                [] => bail!(
                    "{} holds no image (NAME.img): build one with `nodeforge build -o {} PROFILE`",
                    dir.display(),
                    dir.display()
                ),
                many => bail!(
                    "{} holds several builds ({}): say which with --name",
                    dir.display(),
                    many.join(", ")
                ),
            }
        }
    };
    let path = |suffix: &str| dir.join(format!("{name}{suffix}"));
    let mut files = Vec::new();
    for (suffix, media) in [(".img", DISK_IMAGE_ZSTD), (".img.bmap", BMAP)] {
        let p = path(suffix);
        if !p.is_file() {
            bail!(
                "{} is missing: push takes what `nodeforge build -o {} PROFILE` writes",
                p.display(),
                dir.display()
            );
        }
        files.push((p, media));
    }
    for (suffix, media) in BESIDE_IMAGE.into_iter().chain(NETBOOT) {
        let p = path(suffix);
        if p.is_file() {
            files.push((p, media));
        }
    }
    Ok(BuildFiles { name, files })
}

/// Compresses `image` into `out` and returns the compressed file's digest
/// and size.
fn compress(image: &Path, out: &Path) -> Result<(Digest, u64)> {
    let src = File::open(image).with_context(|| format!("opening {}", image.display()))?;
    let dst = File::create(out).with_context(|| format!("creating {}", out.display()))?;
    let mut hashing = HashingWriter {
        inner: std::io::BufWriter::with_capacity(1 << 20, dst),
        hash: Sha256::new(),
        len: 0,
    };
    zstd::stream::copy_encode(
        BufReader::with_capacity(1 << 20, src),
        &mut hashing,
        ZSTD_LEVEL,
    )
    .with_context(|| format!("compressing {}", image.display()))?;
    hashing
        .inner
        .flush()
        .with_context(|| format!("writing {}", out.display()))?;
    let digest = Digest::from_hex(&hex::encode(hashing.hash.finalize()))?;
    Ok((digest, hashing.len))
}

struct HashingWriter<W> {
    inner: W,
    hash: Sha256,
    len: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// A file's sha256 digest and size.
pub fn file_digest(path: &Path) -> Result<(Digest, u64)> {
    let len = std::fs::metadata(path)
        .with_context(|| format!("reading {}", path.display()))?
        .len();
    Ok((Digest::from_hex(&crate::fsutil::sha256_file(path)?)?, len))
}

/// Publishes the build `name` of `dir` (the only one when None) to
/// `target`; `work` holds the compressed image meanwhile. Returns the
/// artifact's manifest digest.
pub fn push(
    client: &Client,
    dir: &Path,
    name: Option<&str>,
    target: &Reference,
    work: &Path,
) -> Result<Digest> {
    let build = find_build(dir, name)?;
    std::fs::create_dir_all(work).with_context(|| format!("creating {}", work.display()))?;
    let compressed =
        crate::fsutil::private_partial_path(&work.join(format!("{}.img.zst", build.name)));
    let _cleanup = RemoveOnDrop(compressed.clone());
    let mut layers = Vec::new();
    for (path, media) in &build.files {
        let file_name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_owned();
        let (upload, title, (digest, size)) = if *media == DISK_IMAGE_ZSTD {
            let d = compress(path, &compressed)?;
            (compressed.clone(), format!("{file_name}.zst"), d)
        } else {
            (path.clone(), file_name, file_digest(path)?)
        };
        client
            .upload_blob(target, &digest, &upload, size)
            .with_context(|| format!("pushing {} as blob {digest}", path.display()))?;
        layers.push(json!({
            "mediaType": media,
            "digest": digest.as_str(),
            "size": size,
            "annotations": {TITLE: title},
        }));
    }
    let reference = target.tag.clone();
    put_artifact(
        client,
        target,
        reference.as_deref(),
        ARTIFACT_TYPE,
        layers,
        json!({TITLE: build.name}),
    )
}

/// Puts an artifact manifest of `artifact_type` with `layers` (their blobs
/// pushed already) and the empty config under `tag` (none: its digest).
/// Returns the manifest's digest.
pub fn put_artifact(
    client: &Client,
    target: &Reference,
    tag: Option<&str>,
    artifact_type: &str,
    layers: Vec<serde_json::Value>,
    annotations: serde_json::Value,
) -> Result<Digest> {
    let empty = b"{}";
    let empty_digest = Digest::of(empty);
    client.upload_blob_bytes(target, &empty_digest, empty)?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": artifact_type,
        "config": {"mediaType": EMPTY_CONFIG, "digest": empty_digest.as_str(), "size": 2},
        "layers": layers,
        "annotations": annotations,
    });
    let body = serde_json::to_vec(&manifest)?;
    let digest = Digest::of(&body);
    let reference = tag.map_or_else(|| digest.to_string(), str::to_owned);
    client.put_manifest(target, &reference, OCI_MANIFEST, &body)?;
    Ok(digest)
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A pushed build, its manifest fetched and checked by digest.
pub struct Pulled {
    pub reference: Reference,
    pub layers: Vec<Descriptor>,
    /// The build's name (the manifest's title annotation), when it has one.
    pub name: Option<String>,
}

impl Pulled {
    /// Fetches the artifact `uri`, which must be pinned by digest.
    pub fn fetch(client: &Client, uri: &str) -> Result<Pulled> {
        let reference = parse_uri(uri)?;
        let Some(digest) = reference.digest.clone() else {
            bail!(
                "`{uri}` is not pinned: name the artifact by its digest (oci://…@sha256:…, as \
                 `nodeforge push` prints it), so what is flashed is exactly what was pushed"
            );
        };
        let (m, body, _) = client.manifest(&reference, digest.as_str())?;
        let Manifest::Image(m) = m else {
            bail!("{uri} is an index, not a nodeforge image artifact");
        };
        let raw: serde_json::Value = serde_json::from_slice(&body)?;
        let name = raw["annotations"][TITLE].as_str().map(str::to_owned);
        Ok(Pulled {
            reference,
            layers: m.layers,
            name,
        })
    }

    pub fn layer(&self, media: &str) -> Result<&Descriptor> {
        self.layers
            .iter()
            .find(|l| l.media_type.as_deref() == Some(media))
            .ok_or_else(|| {
                anyhow!(
                    "{} has no {media} layer: is it a nodeforge image?",
                    self.uri()
                )
            })
    }

    pub fn uri(&self) -> String {
        format!("oci://{}", self.reference)
    }

    /// A small blob, read whole and checked against its digest.
    pub fn read_small(&self, client: &Client, d: &Descriptor) -> Result<Vec<u8>> {
        let mut body = Vec::new();
        self.stream(client, d)?
            .read_to_end(&mut body)
            .with_context(|| format!("reading blob {} of {}", d.digest, self.uri()))?;
        Ok(body)
    }

    /// A blob as a reader that fails at its end unless the bytes had the
    /// blob's digest and size.
    pub fn stream(&self, client: &Client, d: &Descriptor) -> Result<VerifyingReader> {
        let (resp, _) = client.blob(&self.reference, &d.digest, 0)?;
        Ok(VerifyingReader {
            inner: Box::new(resp),
            hash: Sha256::new(),
            len: 0,
            expected: d.digest.clone(),
            size: d.size,
            what: format!("blob {} of {}", d.digest, self.uri()),
        })
    }
}

/// Fetches the pushed build `uri` (pinned by digest) into the raw image
/// file `dest`, sparse where the image is zero, with its block map beside
/// it (`dest.bmap`); the blob's digest is checked before `dest` appears.
pub fn pull_image(client: &Client, uri: &str, dest: &Path) -> Result<()> {
    let pulled = Pulled::fetch(client, uri)?;
    let bmap = pulled.layer(BMAP)?;
    let bmap_text = pulled.read_small(client, bmap)?;
    let image = pulled.layer(DISK_IMAGE_ZSTD)?;
    let what = format!("blob {} of {uri}", image.digest);
    let partial = crate::fsutil::private_partial_path(dest);
    let _cleanup = RemoveOnDrop(partial.clone());
    let mut out =
        File::create(&partial).with_context(|| format!("creating {}", partial.display()))?;
    let mut decoder = zstd::stream::read::Decoder::new(pulled.stream(client, image)?)
        .with_context(|| format!("starting zstd decoder for {what}"))?;
    let len = copy_sparse(&mut decoder, &mut out).with_context(|| format!("unpacking {what}"))?;
    // The rest of the blob, so its digest is checked.
    std::io::copy(&mut decoder.finish(), &mut std::io::sink())
        .with_context(|| format!("reading the rest of {what}"))?;
    out.set_len(len)
        .and_then(|_| out.sync_all())
        .with_context(|| format!("writing {}", partial.display()))?;
    crate::fsutil::atomic_write(
        &PathBuf::from(format!("{}.bmap", dest.display())),
        &bmap_text,
    )?;
    crate::fsutil::commit_partial(&partial, dest)
}

/// Fetches every file of the pushed build `uri` into `dir` under the
/// names `nodeforge build` gives them (`NAME.img` unpacked, `NAME.img.bmap`,
/// `NAME.manifest.json`, netboot files), so `serve` can use `dir` as its
/// artifacts. Returns the build's name. Files already there from an
/// earlier fetch of the same digest are kept.
pub fn pull_build(client: &Client, uri: &str, dir: &Path) -> Result<String> {
    let pulled = Pulled::fetch(client, uri)?;
    let name = pulled.name.clone().ok_or_else(|| {
        anyhow!("{uri} names no build (no title annotation): push it with nodeforge push")
    })?;
    if name.contains('/') || name.starts_with('.') {
        bail!("{uri} names its build `{name}`, which is not a file name");
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let image = dir.join(format!("{name}.img"));
    if !image.is_file() {
        pull_image(client, uri, &image)?;
    }
    let rest = BESIDE_IMAGE.into_iter().chain(NETBOOT);
    for (suffix, media) in rest {
        let Some(layer) = pulled
            .layers
            .iter()
            .find(|l| l.media_type.as_deref() == Some(media))
        else {
            continue;
        };
        let path = dir.join(format!("{name}{suffix}"));
        if path.is_file() {
            continue;
        }
        let partial = crate::fsutil::private_partial_path(&path);
        let _cleanup = RemoveOnDrop(partial.clone());
        let mut out =
            File::create(&partial).with_context(|| format!("creating {}", partial.display()))?;
        std::io::copy(&mut pulled.stream(client, layer)?, &mut out)
            .with_context(|| format!("fetching blob {} of {uri}", layer.digest))?;
        out.sync_all()?;
        crate::fsutil::commit_partial(&partial, &path)?;
    }
    Ok(name)
}

/// Copies `from` into `to`, seeking over blocks of zeros (holes); returns
/// the length.
fn copy_sparse(from: &mut dyn Read, to: &mut File) -> Result<u64> {
    use std::io::{Seek, SeekFrom};
    let mut buf = vec![0u8; 1 << 16];
    let mut pos = 0u64;
    loop {
        let mut filled = 0;
        while filled < buf.len() {
            match from.read(&mut buf[filled..])? {
                0 => break,
                n => filled += n,
            }
        }
        if filled == 0 {
            return Ok(pos);
        }
        let block = &buf[..filled];
        if block.iter().all(|b| *b == 0) {
            to.seek(SeekFrom::Current(filled as i64))?;
        } else {
            to.write_all(block)?;
        }
        pos += filled as u64;
    }
}

/// Passes a blob's bytes through and checks digest and size at its end.
pub struct VerifyingReader {
    inner: Box<dyn Read + Send>,
    hash: Sha256,
    len: u64,
    expected: Digest,
    size: u64,
    what: String,
}

impl Read for VerifyingReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        self.len += n as u64;
        if self.len > self.size {
            return Err(std::io::Error::other(format!(
                "{} is longer than its {} bytes: refused",
                self.what, self.size
            )));
        }
        if n == 0 && !buf.is_empty() {
            let actual = hex::encode(self.hash.clone().finalize());
            if self.len != self.size || actual != self.expected.hex() {
                return Err(std::io::Error::other(format!(
                    "{} arrived as {} bytes with digest sha256:{actual}, not {} bytes with {}: \
                     refused (the registry's copy is damaged, or another blob was served)",
                    self.what, self.len, self.size, self.expected
                )));
            }
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_name_a_registry() {
        let r = parse_uri("oci://127.0.0.1:5000/fleet/core:1").unwrap();
        assert_eq!(r.registry, "127.0.0.1:5000");
        assert_eq!(r.repository, "fleet/core");
        assert_eq!(r.tag.as_deref(), Some("1"));
        let e = parse_uri("oci://core:1").unwrap_err().to_string();
        assert!(e.contains("names no registry host"), "{e}");
    }

    #[test]
    fn a_damaged_blob_is_refused_at_its_end() {
        let data = b"the image".to_vec();
        let mut bad = data.clone();
        bad[0] = b'T';
        let mut r = VerifyingReader {
            inner: Box::new(std::io::Cursor::new(bad)),
            hash: Sha256::new(),
            len: 0,
            expected: Digest::of(&data),
            size: data.len() as u64,
            what: "blob X of oci://r/x@sha256:y".into(),
        };
        let err = std::io::read_to_string(&mut r).unwrap_err().to_string();
        assert!(
            err.starts_with("blob X of oci://r/x@sha256:y arrived as 9 bytes"),
            "{err}"
        );
        let mut good = VerifyingReader {
            inner: Box::new(std::io::Cursor::new(data.clone())),
            hash: Sha256::new(),
            len: 0,
            expected: Digest::of(&data),
            size: data.len() as u64,
            what: String::new(),
        };
        assert_eq!(std::io::read_to_string(&mut good).unwrap(), "the image");
    }

    #[test]
    fn a_build_is_pushed_with_its_signed_release() {
        let d = tempfile::tempdir().unwrap();
        for f in [
            "core.img",
            "core.img.bmap",
            "core.manifest.json",
            "core.release.json",
            "core.release.json.sig",
            "core.squashfs",
        ] {
            std::fs::write(d.path().join(f), f).unwrap();
        }
        let b = find_build(d.path(), None).unwrap();
        let media: Vec<&str> = b.files.iter().map(|(_, m)| *m).collect();
        for want in [
            DISK_IMAGE_ZSTD,
            BMAP,
            BUILD_MANIFEST,
            RELEASE,
            RELEASE_SIGNATURE,
        ] {
            assert!(media.contains(&want), "{want} not pushed: {media:?}");
        }
    }
}

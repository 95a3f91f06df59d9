//! Signed releases: the list of files a build wrote (each one's size and
//! sha256) with the image key as its version, signed with the fleet's
//! ed25519 release key. The signature is OpenSSH's (SSHSIG, namespace
//! `nodeforge-release`), so `ssh-keygen -Y verify` checks it as well as
//! nodeforge does, and the keys are ordinary OpenSSH key files.
//!
//! The private key stays where `nodeforge keys generate` wrote it: a
//! build reads it to sign and never copies it into an image, a cache or
//! a log.

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use ssh_key::{Algorithm, HashAlg, LineEnding, PrivateKey, PublicKey, SshSig};

use crate::fsutil;

/// The SSHSIG namespace: a signature made for anything else (a git
/// commit, a file signed by hand) does not verify as a release.
pub const NAMESPACE: &str = "nodeforge-release";
/// The release document's format.
pub const FORMAT: u32 = 1;

/// `<build>.release.json`, beside the build's files.
pub fn release_path(dir: &Path, build: &str) -> PathBuf {
    dir.join(format!("{build}.release.json"))
}

/// `<build>.release.json.sig`, the armored SSH signature of the above.
pub fn signature_path(dir: &Path, build: &str) -> PathBuf {
    dir.join(format!("{build}.release.json.sig"))
}

/// One file of a release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileDigest {
    pub size: u64,
    pub sha256: String,
}

impl FileDigest {
    pub fn of(path: &Path) -> Result<Self> {
        let size = fs::metadata(path)
            .with_context(|| format!("reading the size of {}", path.display()))?
            .len();
        Ok(FileDigest {
            size,
            sha256: fsutil::sha256_file(path)?,
        })
    }
}

/// What a build released. Only inputs of the build go in, so two builds
/// of the same inputs write the same bytes (the signature aside).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Release {
    pub format: u32,
    pub name: String,
    pub role: String,
    pub arch: String,
    /// The image key: every input of the build.
    pub version: String,
    /// File name (in the build's output directory) → digest.
    pub files: BTreeMap<String, FileDigest>,
    /// Where the root filesystem is, for updates that fetch only the
    /// chunks a node lacks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_slot: Option<RootSlot>,
}

/// The root partition's bytes within a released file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RootSlot {
    /// The file holding it: the disk image.
    pub file: String,
    pub offset: u64,
    pub size: u64,
    /// Its chunk index (`nodeforge_delta::ChunkIndex` as JSON), itself a
    /// file of the release, so the signature covers it and, through each
    /// chunk's sha256, every byte of the slot.
    pub chunks: String,
}

/// `<build>.root.chunks.json`: the root slot's chunk index.
pub fn chunks_file_name(build: &str) -> String {
    format!("{build}.root.chunks.json")
}

/// Why a release was refused; callers (serve, the tests) branch on it.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error("{path}: not signed (build with `--signing-key` to sign the release)")]
    Unsigned { path: PathBuf },
    #[error("{path}: signed by key {signer}, not by the trusted release key {trusted}")]
    OtherKey {
        path: PathBuf,
        signer: String,
        trusted: String,
    },
    #[error("{path}: the signature does not match the document (changed after signing?)")]
    BadSignature { path: PathBuf },
    #[error("{sig}: not an SSH signature ({reason}); sign the build again")]
    MalformedSignature { sig: PathBuf, reason: String },
    #[error("{file}: {what} is {got}, the signed release says {want}")]
    FileMismatch {
        file: PathBuf,
        what: &'static str,
        got: String,
        want: String,
    },
    #[error("{file} is not in the signed release {release}")]
    NotReleased { file: String, release: PathBuf },
}

impl Release {
    /// The document's bytes: pretty JSON with a final newline.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).expect("a release serialises");
        v.push(b'\n');
        v
    }

    /// Checks that `dir/file` is the file this release lists, by size
    /// first and then by sha256.
    pub fn check_file(&self, dir: &Path, file: &str, release: &Path) -> Result<()> {
        let Some(want) = self.files.get(file) else {
            return Err(Refused::NotReleased {
                file: file.into(),
                release: release.into(),
            }
            .into());
        };
        let path = dir.join(file);
        let got = FileDigest::of(&path)?;
        if got.size != want.size {
            return Err(Refused::FileMismatch {
                file: path,
                what: "the size",
                got: got.size.to_string(),
                want: want.size.to_string(),
            }
            .into());
        }
        if got.sha256 != want.sha256 {
            return Err(Refused::FileMismatch {
                file: path,
                what: "the sha256",
                got: got.sha256,
                want: want.sha256.clone(),
            }
            .into());
        }
        Ok(())
    }
}

/// Writes a new ed25519 key pair: `<dir>/<name>.key` (the private key,
/// 0600, OpenSSH format) and `<dir>/<name>.pub`. Refuses to replace
/// either: a lost release key means re-flashing every node that trusts it.
pub fn generate_keys(dir: &Path, name: &str) -> Result<(PathBuf, PathBuf)> {
    let private = dir.join(format!("{name}.key"));
    let public = dir.join(format!("{name}.pub"));
    for p in [&private, &public] {
        if p.exists() {
            bail!(
                "{} already exists: nodeforge does not replace a release key (nodes trust it); \
                 move it away first or choose another --name",
                p.display()
            );
        }
    }
    fsutil::create_dir_all(dir)?;
    let mut rng = rand_core::OsRng;
    let mut key =
        PrivateKey::random(&mut rng, Algorithm::Ed25519).context("generating an ed25519 key")?;
    key.set_comment(format!("nodeforge release key {name}"));
    let pem = key
        .to_openssh(LineEnding::LF)
        .context("encoding the private key")?;
    let pub_line = key
        .public_key()
        .to_openssh()
        .context("encoding the public key")?;
    write_new(&private, pem.as_bytes(), 0o600)?;
    write_new(&public, format!("{pub_line}\n").as_bytes(), 0o644)?;
    Ok((private, public))
}

/// Writes a file that must not exist yet, whole or not at all: a temp file
/// with `mode` from its creation (a secret is never readable by others,
/// not even for a moment), linked into place, which fails rather than
/// replaces a file another process made in the meantime.
fn write_new(path: &Path, contents: &[u8], mode: u32) -> Result<()> {
    let tmp = fsutil::private_partial_path(path);
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    let written = f
        .write_all(contents)
        .and_then(|_| f.sync_all())
        .and_then(|_| fs::hard_link(&tmp, path));
    let _ = fs::remove_file(&tmp);
    written.with_context(|| format!("writing {}", path.display()))?;
    fsutil::sync_parent(path)
}

/// Reads a release signing key: an unencrypted OpenSSH ed25519 key.
pub fn load_signing_key(path: &Path) -> Result<PrivateKey> {
    let text = fs::read_to_string(path).with_context(|| {
        format!(
            "reading the release signing key {} (make one with `nodeforge keys generate`)",
            path.display()
        )
    })?;
    let key = PrivateKey::from_openssh(&text).map_err(|e| {
        anyhow::anyhow!(
            "{} is not an OpenSSH private key ({e}); make one with `nodeforge keys generate`",
            path.display()
        )
    })?;
    use std::os::unix::fs::PermissionsExt;
    let mode = fs::metadata(path)
        .with_context(|| format!("reading {}", path.display()))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        bail!(
            "{} can be read by others (mode {:o}): a release key is the fleet's trust; \
             `chmod 600 {}`",
            path.display(),
            mode & 0o777,
            path.display()
        );
    }
    if key.is_encrypted() {
        bail!(
            "{} is encrypted with a passphrase; builds sign unattended, so give an unencrypted \
             key (`nodeforge keys generate`) kept where only the build can read it",
            path.display()
        );
    }
    if key.algorithm() != Algorithm::Ed25519 {
        bail!(
            "{} is a {} key; release keys are ed25519 (`nodeforge keys generate`)",
            path.display(),
            key.algorithm()
        );
    }
    Ok(key)
}

/// Reads a trusted release key: one OpenSSH public key line.
pub fn load_public_key(path: &Path) -> Result<PublicKey> {
    let text = fs::read_to_string(path)
        .with_context(|| format!("reading the release key {}", path.display()))?;
    let key = PublicKey::from_openssh(text.trim()).map_err(|e| {
        anyhow::anyhow!(
            "{} is not an OpenSSH public key line ({e}); give the .pub that \
             `nodeforge keys generate` wrote",
            path.display()
        )
    })?;
    if key.algorithm() != Algorithm::Ed25519 {
        bail!(
            "{} is a {} key; release keys are ed25519",
            path.display(),
            key.algorithm()
        );
    }
    Ok(key)
}

/// Writes `release` into `dir` and, with a key, its signature; without a
/// key, removes a signature left by an earlier build (it would not match).
pub fn write(dir: &Path, release: &Release, key: Option<&PrivateKey>) -> Result<PathBuf> {
    let path = release_path(dir, &release.name);
    let sig_path = signature_path(dir, &release.name);
    let bytes = release.to_bytes();
    match key {
        Some(key) => {
            let sig = sign(&bytes, key)?;
            // The signature first: a reader that finds the new document
            // with the old signature refuses it, never the reverse.
            fsutil::atomic_write(&sig_path, sig.as_bytes())?;
        }
        None => match fs::remove_file(&sig_path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", sig_path.display())),
        },
    }
    fsutil::atomic_write(&path, &bytes)?;
    Ok(path)
}

/// The armored SSH signature of `doc`.
pub fn sign(doc: &[u8], key: &PrivateKey) -> Result<String> {
    let sig = key
        .sign(NAMESPACE, HashAlg::Sha512, doc)
        .context("signing the release")?;
    sig.to_pem(LineEnding::LF)
        .context("encoding the release signature")
}

/// Reads `<dir>/<build>.release.json` and checks its signature against
/// `trusted`.
pub fn read_verified(dir: &Path, build: &str, trusted: &PublicKey) -> Result<Release> {
    let path = release_path(dir, build);
    let sig_path = signature_path(dir, build);
    let doc = fs::read(&path).with_context(|| {
        format!(
            "reading {} (build with `--signing-key` to release the build)",
            path.display()
        )
    })?;
    let sig = match fs::read_to_string(&sig_path) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Refused::Unsigned { path }.into())
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", sig_path.display())),
    };
    verify(&doc, &sig, trusted, &path, &sig_path)?;
    parse(&doc, &path)
}

/// A release document's bytes, its format checked first: a newer
/// nodeforge's release is named as such, not as a broken file.
pub fn parse(doc: &[u8], path: &Path) -> Result<Release> {
    #[derive(Deserialize)]
    struct Format {
        format: u32,
    }
    let not_release = || format!("{}: not a nodeforge release", path.display());
    let format: Format = serde_json::from_slice(doc).with_context(not_release)?;
    if format.format != FORMAT {
        bail!(
            "{}: release format {} (this nodeforge reads {FORMAT}; use the nodeforge that built it)",
            path.display(),
            format.format
        );
    }
    serde_json::from_slice(doc).with_context(not_release)
}

/// Checks the armored signature `sig` (read from `sig_path`) of `doc`
/// (from `path`) against `trusted`.
pub fn verify(
    doc: &[u8],
    sig: &str,
    trusted: &PublicKey,
    path: &Path,
    sig_path: &Path,
) -> Result<(), Refused> {
    let bad = || Refused::BadSignature { path: path.into() };
    let parsed = SshSig::from_pem(sig).map_err(|e| Refused::MalformedSignature {
        sig: sig_path.into(),
        reason: e.to_string(),
    })?;
    let signer = PublicKey::from(parsed.public_key().clone());
    if signer.key_data() != trusted.key_data() {
        return Err(Refused::OtherKey {
            path: path.into(),
            signer: signer.fingerprint(HashAlg::Sha256).to_string(),
            trusted: trusted.fingerprint(HashAlg::Sha256).to_string(),
        });
    }
    trusted.verify(NAMESPACE, doc, &parsed).map_err(|_| bad())
}

pub mod diff;

#[cfg(test)]
mod tests;

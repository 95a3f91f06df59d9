//! Signed releases: the list of files a build wrote (each one's size and
//! sha256) with the image key as its version, signed with the fleet's
//! ed25519 release key. The signature is OpenSSH's (SSHSIG, namespace
//! `nodeforge-release`), so `ssh-keygen -Y verify` checks it as well as
//! nodeforge does, and the keys are ordinary OpenSSH key files.
//!
//! The private key stays where `nodeforge keys generate` wrote it: a
//! build reads it to sign and never copies it into an image, a cache or
//! a log.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use ssh_key::{Algorithm, LineEnding, PrivateKey, PublicKey};

pub use nodeforge_release::{
    chunks_file_name, FileDigest, Refused, Release, RootSlot, FORMAT, NAMESPACE,
};

use crate::fsutil;

/// `<build>.release.json`, beside the build's files.
pub fn release_path(dir: &Path, build: &str) -> PathBuf {
    dir.join(nodeforge_release::release_file_name(build))
}

/// `<build>.release.json.sig`, the armored SSH signature of the above.
pub fn signature_path(dir: &Path, build: &str) -> PathBuf {
    dir.join(nodeforge_release::signature_file_name(build))
}

/// The size and sha256 of the file at `path`.
pub fn file_digest(path: &Path) -> Result<FileDigest> {
    let size = fs::metadata(path)
        .with_context(|| format!("reading the size of {}", path.display()))?
        .len();
    Ok(FileDigest {
        size,
        sha256: fsutil::sha256_file(path)?,
    })
}

/// Checks that `dir/file` is the file `release` (read from `doc`) lists,
/// by size first and then by sha256.
pub fn check_file(release: &Release, dir: &Path, file: &str, doc: &Path) -> Result<()> {
    let doc = doc.display().to_string();
    release.listed(file, &doc)?;
    let path = dir.join(file);
    let got = file_digest(&path)?;
    release.check_digest(file, &path.display().to_string(), &got, &doc)?;
    Ok(())
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
    Ok(nodeforge_release::parse_public_key(
        &text,
        &path.display().to_string(),
    )?)
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
    nodeforge_release::sign(doc, key).context("signing the release")
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
    let shown = path.display().to_string();
    let sig = match fs::read_to_string(&sig_path) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Refused::Unsigned { doc: shown }.into())
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", sig_path.display())),
    };
    nodeforge_release::verify(&doc, &sig, trusted, &shown, &sig_path.display().to_string())?;
    parse(&doc, &path)
}

/// A release document's bytes, its format checked first.
pub fn parse(doc: &[u8], path: &Path) -> Result<Release> {
    Ok(nodeforge_release::parse(doc, &path.display().to_string())?)
}

pub mod diff;

#[cfg(test)]
mod tests;

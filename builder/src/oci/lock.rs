//! Lock files: every image a profile's stacks name, resolved to the digest
//! of its manifest for the profile's architecture. `nodeforge lock` writes
//! `profiles/<name>.lock.toml`; builds read it and never resolve tags.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::{Client, Digest, Platform, Reference};
use crate::fsutil;
use crate::profile::Profile;

pub const LOCK_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockFile {
    pub version: u32,
    /// The architecture the digests were chosen for.
    pub arch: String,
    #[serde(default)]
    pub images: Vec<LockedImage>,
    /// The profile's Ollama models (`[[models]]`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<LockedModel>,
}

/// A model resolved to the digest of its manifest (what `ollama list`
/// shows as its ID).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockedModel {
    /// The name as the profile writes it.
    pub name: String,
    pub digest: Digest,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockedImage {
    /// The reference as the profile writes it.
    pub reference: String,
    /// The platform's image manifest.
    pub digest: Digest,
    /// The index the reference pointed at, when it was multi-platform.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index_digest: Option<Digest>,
    pub platform: String,
    /// The mirror the digest was resolved through (`nodeforge lock
    /// --mirror`); builds fetch the blobs from it too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<String>,
}

/// Why a profile's images cannot be built from its lock file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LockError {
    #[error(
        "the profile's stacks name {count} container images but it has no lock file {lock}: \
         run `nodeforge lock {profile}` (with `--mirror REGISTRY=URL` when the registry is \
         only reachable through a mirror); builds use locked digests only"
    )]
    NoLockFile {
        count: usize,
        lock: String,
        profile: String,
    },
    #[error(
        "the profile bakes {count} models but it has no lock file {lock}: run `nodeforge lock \
         {profile}`; builds use locked digests only"
    )]
    NoLockFileForModels {
        count: usize,
        lock: String,
        profile: String,
    },
    #[error("model {model} is not in the lock file {lock}: run `nodeforge lock {profile}`")]
    ModelNotLocked {
        model: String,
        lock: String,
        profile: String,
    },
    #[error("image {image} is not in the lock file {lock}: run `nodeforge lock {profile}`")]
    NotLocked {
        image: String,
        lock: String,
        profile: String,
    },
    #[error(
        "image {image}: its digest {wanted} does not match the lock file {lock}, which has {locked}: \
         run `nodeforge lock {profile}`"
    )]
    DigestMismatch {
        image: String,
        wanted: Digest,
        locked: String,
        lock: String,
        profile: String,
    },
    #[error("the lock file {lock} is for {locked}, the profile builds for {arch}: run `nodeforge lock {profile}`")]
    WrongArch {
        lock: String,
        locked: String,
        arch: String,
        profile: String,
    },
}

/// The lock file beside a profile: `x.toml` → `x.lock.toml`.
pub fn lock_path(profile_path: &Path) -> PathBuf {
    profile_path.with_extension("lock.toml")
}

impl LockFile {
    /// Reads a lock file; `None` when there is none.
    pub fn read(path: &Path) -> Result<Option<LockFile>> {
        let text = match fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(e).with_context(|| format!("reading lock file {}", path.display()))
            }
        };
        let lock: LockFile = toml::from_str(&text)
            .with_context(|| format!("parsing lock file {}", path.display()))?;
        if lock.version != LOCK_VERSION {
            bail!(
                "lock file {} has version {}, this nodeforge reads version {LOCK_VERSION}",
                path.display(),
                lock.version
            );
        }
        Ok(Some(lock))
    }

    pub fn to_toml(&self) -> String {
        format!(
            "# Written by `nodeforge lock`: the image digests builds use. Commit it.\n{}",
            toml::to_string_pretty(self).expect("LockFile always serialises")
        )
    }

    pub fn find(&self, reference: &str) -> Option<&LockedImage> {
        self.images.iter().find(|i| i.reference == reference)
    }

    pub fn find_model(&self, name: &str) -> Option<&LockedModel> {
        self.models.iter().find(|m| m.name == name)
    }

    /// The locked entry of every model in `names`.
    pub fn check_models<'a>(
        lock: Option<&'a LockFile>,
        lock_path: &Path,
        profile_path: &Path,
        names: &[String],
    ) -> Result<Vec<&'a LockedModel>, LockError> {
        let (lock_name, profile) = (
            lock_path.display().to_string(),
            profile_path.display().to_string(),
        );
        let Some(lock) = lock else {
            return match names.len() {
                0 => Ok(Vec::new()),
                count => Err(LockError::NoLockFileForModels {
                    count,
                    lock: lock_name,
                    profile,
                }),
            };
        };
        names
            .iter()
            .map(|n| {
                lock.find_model(n).ok_or_else(|| LockError::ModelNotLocked {
                    model: n.clone(),
                    lock: lock_name.clone(),
                    profile: profile.clone(),
                })
            })
            .collect()
    }

    /// The locked entry of every image in `references`, checked against
    /// the profile: present, for the right architecture, and matching any
    /// digest the reference pins.
    pub fn check<'a>(
        lock: Option<&'a LockFile>,
        lock_path: &Path,
        profile_path: &Path,
        arch: &str,
        references: &[String],
    ) -> Result<Vec<&'a LockedImage>, LockError> {
        let names = (
            lock_path.display().to_string(),
            profile_path.display().to_string(),
        );
        if lock.is_none() && !references.is_empty() {
            return Err(LockError::NoLockFile {
                count: references.len(),
                lock: names.0,
                profile: names.1,
            });
        }
        let mut out = Vec::new();
        for r in references {
            let entry = lock
                .and_then(|l| l.find(r))
                .ok_or_else(|| LockError::NotLocked {
                    image: r.clone(),
                    lock: names.0.clone(),
                    profile: names.1.clone(),
                })?;
            let l = lock.expect("an entry was found in it");
            if l.arch != arch {
                return Err(LockError::WrongArch {
                    lock: names.0.clone(),
                    locked: l.arch.clone(),
                    arch: arch.to_owned(),
                    profile: names.1.clone(),
                });
            }
            let pinned = Reference::parse(r).ok().and_then(|p| p.digest);
            if let Some(wanted) = pinned {
                if entry.digest != wanted && entry.index_digest.as_ref() != Some(&wanted) {
                    return Err(LockError::DigestMismatch {
                        image: r.clone(),
                        wanted,
                        locked: match &entry.index_digest {
                            Some(i) => format!("{} (index {i})", entry.digest),
                            None => entry.digest.to_string(),
                        },
                        lock: names.0.clone(),
                        profile: names.1.clone(),
                    });
                }
            }
            out.push(entry);
        }
        Ok(out)
    }
}

/// The mirrors the locked images were resolved through, for the build to
/// fetch their blobs from the same place.
pub fn mirrors(locked: &[&LockedImage]) -> Result<super::Mirrors> {
    let mut out = Vec::new();
    for l in locked {
        if let Some(url) = &l.mirror {
            let r = Reference::parse(&l.reference)?;
            out.push((r.registry, url.as_str(), l.reference.as_str()));
        }
    }
    mirror_list(out)
}

/// The same for locked models (`LockedModel::mirror`, by the model's host).
pub fn model_mirrors(locked: &[&LockedModel]) -> Result<super::Mirrors> {
    let mut out = Vec::new();
    for l in locked {
        if let Some(url) = &l.mirror {
            let name = super::ollama::ModelName::parse(&l.name)?;
            out.push((name.host, url.as_str(), l.name.as_str()));
        }
    }
    mirror_list(out)
}

/// Mirrors from (registry, mirror URL, what the lock recorded it for).
fn mirror_list(entries: Vec<(String, &str, &str)>) -> Result<super::Mirrors> {
    let mut out = Vec::new();
    for (registry, url, of) in entries {
        out.push(
            super::Mirror::parse(&format!("{registry}={url}"))
                .with_context(|| format!("the lock file's mirror of {of}"))?,
        );
    }
    Ok(super::Mirrors::new(out))
}

/// Every image of every stack, each once, in profile order.
pub fn profile_images(p: &Profile) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for s in &p.stacks {
        for i in &s.images {
            if !out.contains(i) {
                out.push(i.clone());
            }
        }
    }
    out
}

/// Resolves every image of the profile for its architecture and writes the
/// lock file beside `profile_path`. Returns the lock and where it went.
pub fn lock(
    profile: &Profile,
    profile_path: &Path,
    client: &Client,
) -> Result<(LockFile, PathBuf)> {
    let platform = Platform {
        arch: profile.hardware.arch,
    };
    let mut images = Vec::new();
    for r in profile_images(profile) {
        let parsed = Reference::parse(&r)?;
        let resolved = client
            .resolve(&parsed, platform)
            .with_context(|| format!("locking image {r} for {platform}"))?;
        images.push(LockedImage {
            mirror: client.mirror_of(&parsed).map(|m| m.url.clone()),
            reference: r,
            digest: resolved.digest,
            index_digest: resolved.index_digest,
            platform: platform.to_string(),
        });
    }
    let mut models = Vec::new();
    for name in &profile.models {
        let reference = super::ollama::ModelName::parse(name)?.reference();
        // A model's manifest names no platform: the tag's manifest is it.
        let (manifest, _, digest) = client
            .manifest(&reference, &reference.manifest_ref())
            .with_context(|| format!("locking model {name} ({reference})"))?;
        match manifest {
            super::manifest::Manifest::Image(m) if super::ollama::ModelName::is_model(&m) => {}
            _ => bail!(
                "locking model {name} ({reference}): what the registry serves is not an Ollama \
                 model (no {} layer); check the name",
                super::ollama::WEIGHTS_MEDIA_TYPE
            ),
        }
        models.push(LockedModel {
            name: name.clone(),
            digest,
            mirror: client.mirror_of(&reference).map(|m| m.url.clone()),
        });
    }
    let lock = LockFile {
        version: LOCK_VERSION,
        arch: profile.hardware.arch.debian().to_owned(),
        images,
        models,
    };
    let path = lock_path(profile_path);
    fsutil::atomic_write(&path, lock.to_toml().as_bytes())
        .with_context(|| format!("writing lock file {}", path.display()))?;
    Ok((lock, path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(c: char) -> Digest {
        Digest::from_hex(&c.to_string().repeat(64)).unwrap()
    }

    fn sample() -> LockFile {
        LockFile {
            version: LOCK_VERSION,
            arch: "amd64".into(),
            images: vec![LockedImage {
                reference: "127.0.0.1:5000/web:1".into(),
                digest: d('a'),
                index_digest: Some(d('b')),
                platform: "linux/amd64".into(),
                mirror: Some("http://127.0.0.1:5000".into()),
            }],
            models: vec![LockedModel {
                name: "llama3.2".into(),
                digest: d('e'),
                mirror: None,
            }],
        }
    }

    #[test]
    fn lock_path_is_beside_the_profile() {
        assert_eq!(
            lock_path(Path::new("profiles/core.toml")),
            Path::new("profiles/core.lock.toml")
        );
    }

    /// [`LockFile::check`] for the profile `x.toml` beside `x.lock.toml`.
    fn check<'a>(
        lock: Option<&'a LockFile>,
        arch: &str,
        references: &[String],
    ) -> Result<Vec<&'a LockedImage>, LockError> {
        let (lock_path, profile_path) = (Path::new("x.lock.toml"), Path::new("x.toml"));
        LockFile::check(lock, lock_path, profile_path, arch, references)
    }

    #[test]
    fn round_trip_and_checks() {
        let (dir, p) = crate::testutil::scratch_file("x.lock.toml", sample().to_toml());
        let lock = LockFile::read(&p).unwrap().unwrap();
        assert_eq!(lock, sample());
        assert!(LockFile::read(&dir.path().join("none.toml"))
            .unwrap()
            .is_none());
        let web = ["127.0.0.1:5000/web:1".to_string()];
        let ok = check(Some(&lock), "amd64", &web).unwrap();
        assert_eq!(ok[0].digest, d('a'));

        let missing = check(Some(&lock), "amd64", &["other:1".into()]).unwrap_err();
        assert!(
            missing
                .to_string()
                .contains("image other:1 is not in the lock file"),
            "{missing}"
        );
        let none = check(None, "amd64", &web).unwrap_err();
        assert!(matches!(none, LockError::NoLockFile { count: 1, .. }));
        assert!(
            none.to_string()
                .contains("run `nodeforge lock x.toml` (with `--mirror REGISTRY=URL`"),
            "{none}"
        );
        let arch = check(Some(&lock), "arm64", &web).unwrap_err();
        assert!(matches!(arch, LockError::WrongArch { .. }), "{arch}");

        // A pinned digest must be the locked manifest or its index.
        let mut lock2 = lock.clone();
        let by_index = format!("127.0.0.1:5000/web:1@{}", d('b'));
        let bad = format!("127.0.0.1:5000/web:1@{}", d('c'));
        lock2.images.push(LockedImage {
            reference: by_index.clone(),
            ..lock.images[0].clone()
        });
        lock2.images.push(LockedImage {
            reference: bad.clone(),
            ..lock.images[0].clone()
        });
        assert!(check(Some(&lock2), "amd64", &[by_index]).is_ok());
        let err = check(Some(&lock2), "amd64", std::slice::from_ref(&bad)).unwrap_err();
        assert!(matches!(err, LockError::DigestMismatch { .. }));
        assert!(err.to_string().contains(&bad), "{err}");
    }

    #[test]
    fn models_must_be_locked() {
        let lock = sample();
        let (lock_path, profile_path) = (Path::new("x.lock.toml"), Path::new("x.toml"));
        let check = |l, names: &[&str]| {
            let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
            LockFile::check_models(l, lock_path, profile_path, &names)
        };
        assert_eq!(check(Some(&lock), &["llama3.2"]).unwrap()[0].digest, d('e'));
        assert!(check(None, &[]).unwrap().is_empty());
        let e = check(Some(&lock), &["nomic-embed-text"]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "model nomic-embed-text is not in the lock file x.lock.toml: run `nodeforge lock x.toml`"
        );
        let e = check(None, &["llama3.2"]).unwrap_err();
        assert!(
            matches!(e, LockError::NoLockFileForModels { count: 1, .. }),
            "{e}"
        );
    }

    #[test]
    fn other_versions_are_refused() {
        let (_dir, p) =
            crate::testutil::scratch_file("x.lock.toml", "version = 9\narch = \"amd64\"\n");
        let err = LockFile::read(&p).unwrap_err().to_string();
        assert!(err.contains("version 9"), "{err}");
    }
}

//! nodeforge-release: the release document a build writes beside its files
//! (each file's size and sha256, the image key as its version, where the
//! root slot is) and its signature, as the builder writes it, `serve`
//! checks it and a node's updater trusts it.
//!
//! The signature is OpenSSH's (SSHSIG, namespace `nodeforge-release`,
//! ed25519), so `ssh-keygen -Y verify` checks it as well as nodeforge
//! does, and the keys are ordinary OpenSSH key files. This crate holds no
//! I/O: callers read the bytes from a disk or an HTTP server.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use ssh_key::{Algorithm, HashAlg, LineEnding, PrivateKey, PublicKey, SshSig};

/// The SSHSIG namespace: a signature made for anything else (a git
/// commit, a file signed by hand) does not verify as a release.
pub const NAMESPACE: &str = "nodeforge-release";
/// The release document's format.
pub const FORMAT: u32 = 1;

/// `<build>.release.json`, beside the build's files.
pub fn release_file_name(build: &str) -> String {
    format!("{build}.release.json")
}

/// `<build>.release.json.sig`, the armored SSH signature of the above.
pub fn signature_file_name(build: &str) -> String {
    format!("{build}.release.json.sig")
}

/// `<build>.root.chunks.json`: the root slot's chunk index.
pub fn chunks_file_name(build: &str) -> String {
    format!("{build}.root.chunks.json")
}

/// One file of a release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileDigest {
    pub size: u64,
    pub sha256: String,
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
    /// The image key: every input of the build. A hash, so it says
    /// whether two builds differ, not which is newer.
    pub version: String,
    /// The build's SOURCE_DATE_EPOCH: the order of releases (an updater
    /// refuses a lower one, a downgrade). None for a build that took the
    /// current time (not reproducible; never offered as an update).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<i64>,
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
    /// With A/B slots: the GPT GUID of the disk layout the slot was built
    /// for (its partitions' GUIDs follow from it); a node with another
    /// layout refuses the release.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_guid: Option<String>,
}

/// Why a release was refused; callers (serve, the updater, the tests)
/// branch on it. `doc` and `sig` name where the bytes came from (a path
/// or a URL).
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error("{doc}: not signed (build with `--signing-key` to sign the release)")]
    Unsigned { doc: String },
    #[error("{doc}: signed by key {signer}, not by the trusted release key {trusted}")]
    OtherKey {
        doc: String,
        signer: String,
        trusted: String,
    },
    #[error("{doc}: the signature does not match the document (changed after signing?)")]
    BadSignature { doc: String },
    #[error("{sig}: not an SSH signature ({reason}); sign the build again")]
    MalformedSignature { sig: String, reason: String },
    #[error("{file}: {what} is {got}, the signed release says {want}")]
    FileMismatch {
        file: String,
        what: &'static str,
        got: String,
        want: String,
    },
    #[error("{file} is not in the signed release {doc}")]
    NotReleased { file: String, doc: String },
}

/// A document that is not a release this nodeforge reads.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error("{doc}: not a nodeforge release ({source})")]
    NotRelease {
        doc: String,
        source: serde_json::Error,
    },
    #[error(
        "{doc}: release format {found} (this nodeforge reads {FORMAT}; use the nodeforge that \
         built it)"
    )]
    Format { doc: String, found: u32 },
}

impl Release {
    /// The document's bytes: pretty JSON with a final newline.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).expect("a release serialises");
        v.push(b'\n');
        v
    }

    /// The listed digest of `file`, or why there is none.
    pub fn listed(&self, file: &str, doc: &str) -> Result<&FileDigest, Refused> {
        self.files.get(file).ok_or_else(|| Refused::NotReleased {
            file: file.into(),
            doc: doc.into(),
        })
    }

    /// Checks that `got` (the digest of `file`, named `shown` in errors) is
    /// what this release lists, size first.
    pub fn check_digest(
        &self,
        file: &str,
        shown: &str,
        got: &FileDigest,
        doc: &str,
    ) -> Result<(), Refused> {
        let want = self.listed(file, doc)?;
        let mismatch = |what, got: String, want: String| Refused::FileMismatch {
            file: shown.into(),
            what,
            got,
            want,
        };
        if got.size != want.size {
            return Err(mismatch(
                "the size",
                got.size.to_string(),
                want.size.to_string(),
            ));
        }
        if got.sha256 != want.sha256 {
            return Err(mismatch(
                "the sha256",
                got.sha256.clone(),
                want.sha256.clone(),
            ));
        }
        Ok(())
    }
}

/// A release document's bytes (from `doc`), its format checked first: a
/// newer nodeforge's release is named as such, not as a broken file.
pub fn parse(bytes: &[u8], doc: &str) -> Result<Release, ParseError> {
    #[derive(Deserialize)]
    struct Format {
        format: u32,
    }
    let not_release = |source| ParseError::NotRelease {
        doc: doc.into(),
        source,
    };
    let format: Format = serde_json::from_slice(bytes).map_err(not_release)?;
    if format.format != FORMAT {
        return Err(ParseError::Format {
            doc: doc.into(),
            found: format.format,
        });
    }
    serde_json::from_slice(bytes).map_err(not_release)
}

/// The armored SSH signature of `bytes`.
pub fn sign(bytes: &[u8], key: &PrivateKey) -> Result<String, ssh_key::Error> {
    key.sign(NAMESPACE, HashAlg::Sha512, bytes)?
        .to_pem(LineEnding::LF)
}

/// Checks the armored signature `sig` (named `sig_name`) of `bytes` (named
/// `doc`) against `trusted`.
pub fn verify(
    bytes: &[u8],
    sig: &str,
    trusted: &PublicKey,
    doc: &str,
    sig_name: &str,
) -> Result<(), Refused> {
    let parsed = SshSig::from_pem(sig).map_err(|e| Refused::MalformedSignature {
        sig: sig_name.into(),
        reason: e.to_string(),
    })?;
    let signer = PublicKey::from(parsed.public_key().clone());
    if signer.key_data() != trusted.key_data() {
        return Err(Refused::OtherKey {
            doc: doc.into(),
            signer: fingerprint(&signer),
            trusted: fingerprint(trusted),
        });
    }
    trusted
        .verify(NAMESPACE, bytes, &parsed)
        .map_err(|_| Refused::BadSignature { doc: doc.into() })
}

/// The key's SHA256 fingerprint as `ssh-keygen -l` prints it.
pub fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

/// Why a trusted release key was not taken.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(
        "{what} is not an OpenSSH public key line ({reason}); give the .pub that \
         `nodeforge keys generate` wrote"
    )]
    NotAKey { what: String, reason: String },
    #[error("{what} is a {algorithm} key; release keys are ed25519")]
    NotEd25519 { what: String, algorithm: String },
}

/// A trusted release key from its OpenSSH public key line (`what` names
/// where it came from).
pub fn parse_public_key(text: &str, what: &str) -> Result<PublicKey, KeyError> {
    let key = PublicKey::from_openssh(text.trim()).map_err(|e| KeyError::NotAKey {
        what: what.into(),
        reason: e.to_string(),
    })?;
    if key.algorithm() != Algorithm::Ed25519 {
        return Err(KeyError::NotEd25519 {
            what: what.into(),
            algorithm: key.algorithm().to_string(),
        });
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> PrivateKey {
        PrivateKey::random(&mut rand_core::OsRng, Algorithm::Ed25519).unwrap()
    }

    fn release() -> Release {
        Release {
            format: FORMAT,
            name: "web".into(),
            role: "web".into(),
            arch: "amd64".into(),
            version: "k1".into(),
            epoch: Some(1_700_000_000),
            files: BTreeMap::from([(
                "web.img".into(),
                FileDigest {
                    size: 3,
                    sha256: "ab".into(),
                },
            )]),
            root_slot: None,
        }
    }

    #[test]
    fn a_signed_release_verifies_and_parses_back() {
        let k = key();
        let doc = release().to_bytes();
        let sig = sign(&doc, &k).unwrap();
        verify(&doc, &sig, k.public_key(), "doc", "sig").unwrap();
        assert_eq!(parse(&doc, "doc").unwrap(), release());
    }

    #[test]
    fn another_key_a_changed_document_and_garbage_are_each_refused_by_name() {
        let (k, other) = (key(), key());
        let doc = release().to_bytes();
        let sig = sign(&doc, &other).unwrap();
        let e = verify(&doc, &sig, k.public_key(), "doc", "sig").unwrap_err();
        assert!(matches!(e, Refused::OtherKey { .. }), "{e}");
        assert!(e.to_string().contains(&fingerprint(k.public_key())), "{e}");

        let sig = sign(&doc, &k).unwrap();
        let mut changed = doc.clone();
        changed[20] ^= 1;
        let e = verify(&changed, &sig, k.public_key(), "doc", "sig").unwrap_err();
        assert!(matches!(e, Refused::BadSignature { .. }), "{e}");

        let e = verify(&doc, "nonsense", k.public_key(), "doc", "the.sig").unwrap_err();
        assert!(matches!(e, Refused::MalformedSignature { .. }), "{e}");
        assert!(e.to_string().starts_with("the.sig:"), "{e}");
    }

    #[test]
    fn a_newer_format_is_named_as_such() {
        let doc = br#"{"format": 2, "whatever": true}"#;
        let e = parse(doc, "x.release.json").unwrap_err();
        assert!(matches!(e, ParseError::Format { found: 2, .. }), "{e}");
        let e = parse(b"{", "x.release.json").unwrap_err();
        assert!(matches!(e, ParseError::NotRelease { .. }), "{e}");
    }

    #[test]
    fn a_digest_is_checked_by_size_then_sum() {
        let r = release();
        let good = r.files["web.img"].clone();
        r.check_digest("web.img", "/x/web.img", &good, "doc")
            .unwrap();
        let bigger = FileDigest {
            size: 4,
            ..good.clone()
        };
        let e = r
            .check_digest("web.img", "/x/web.img", &bigger, "doc")
            .unwrap_err();
        assert!(e.to_string().contains("the size is 4"), "{e}");
        let e = r.check_digest("other", "other", &good, "doc").unwrap_err();
        assert!(matches!(e, Refused::NotReleased { .. }), "{e}");
    }

    #[test]
    fn a_release_key_must_be_an_ed25519_public_key_line() {
        let k = key();
        let line = k.public_key().to_openssh().unwrap();
        parse_public_key(&format!("{line}\n"), "release.pub").unwrap();
        let e = parse_public_key("ssh-ed25519 AAAA", "release.pub").unwrap_err();
        assert!(e.to_string().starts_with("release.pub is not"), "{e}");
    }
}

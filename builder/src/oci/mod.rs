//! Container images from OCI registries: references, the distribution API
//! client, lock files, a content-addressed blob cache, `docker load`-able
//! archives and the Docker engine's own image store, written daemonless.

pub mod artifact;
pub mod auth;
pub mod cache;
pub mod client;
pub mod docker_store;
#[cfg(any(test, feature = "test-support"))]
pub mod fixture;
pub mod lock;
pub mod manifest;
pub mod mirror;
pub mod ollama;
pub mod reference;
#[cfg(test)]
mod registry_tests;
pub mod tar_stream;
pub mod unpack;

use std::fmt;

use anyhow::{anyhow, bail, Result};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub use client::{Client, RegistryError};
pub use mirror::{Mirror, Mirrors};
pub use reference::Reference;

/// A content digest. Only sha256 is accepted: it is what registries use and
/// what the cache and the checks here compute.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(String);

impl Digest {
    pub fn parse(s: &str) -> Result<Digest> {
        let hex = s
            .strip_prefix("sha256:")
            .ok_or_else(|| anyhow!("digest `{s}` must start with `sha256:`"))?;
        if hex.len() != 64
            || !hex
                .chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        {
            bail!("digest `{s}` must be `sha256:` and 64 lowercase hex digits");
        }
        Ok(Digest(s.to_owned()))
    }

    /// The digest of `data`.
    pub fn of(data: &[u8]) -> Digest {
        Digest(format!("sha256:{}", crate::fsutil::sha256_bytes(data)))
    }

    pub fn from_hex(hex: &str) -> Result<Digest> {
        Digest::parse(&format!("sha256:{hex}"))
    }

    pub fn hex(&self) -> &str {
        &self.0["sha256:".len()..]
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for Digest {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Digest::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// The platform an image is chosen for: Linux on the profile's arch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Platform {
    pub arch: crate::profile::Arch,
}

impl Platform {
    /// OCI's (Go's) architecture name.
    pub fn oci_arch(&self) -> &'static str {
        match self.arch {
            crate::profile::Arch::Amd64 => "amd64",
            crate::profile::Arch::Arm64 => "arm64",
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "linux/{}", self.oci_arch())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests() {
        let d = Digest::of(b"abc");
        assert_eq!(
            d.as_str(),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(Digest::parse(d.as_str()).unwrap(), d);
        let why = |r: Result<Digest>| r.unwrap_err().to_string();
        let upper = "sha256:BA7816BF8F01CFEA414140DE5DAE2223B00361A396177A9CB410FF61F20015AD";
        assert_eq!(
            why(Digest::parse(upper)),
            format!("digest `{upper}` must be `sha256:` and 64 lowercase hex digits")
        );
        assert_eq!(
            why(Digest::parse("sha512:abc")),
            "digest `sha512:abc` must start with `sha256:`"
        );
        assert!(why(Digest::from_hex("00")).contains("64 lowercase hex digits"));
    }
}

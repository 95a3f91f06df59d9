//! Image manifests and indexes (OCI and Docker schema 2), and choosing the
//! manifest for a platform from an index.

use anyhow::{anyhow, bail, Result};
use nodeforge_firstboot::text::join_or;
use serde::{Deserialize, Serialize};

use super::{Digest, Platform};

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const OCI_LAYER_TAR_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// What a manifest request accepts: every form handled here.
pub const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.v2+json";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<PlatformSpec>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlatformSpec {
    pub architecture: String,
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

/// A single-platform image manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageManifest {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub manifests: Vec<Descriptor>,
}

/// A parsed manifest document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Manifest {
    Image(ImageManifest),
    Index(Index),
}

impl Manifest {
    /// Parses a manifest body. The media type comes from the response's
    /// Content-Type, or from the body's own `mediaType`; an index is told
    /// from an image manifest by its `manifests` list when neither says.
    pub fn parse(content_type: Option<&str>, body: &[u8]) -> Result<Manifest> {
        let value: serde_json::Value =
            serde_json::from_slice(body).map_err(|e| anyhow!("manifest is not JSON: {e}"))?;
        let declared = value
            .get("mediaType")
            .and_then(|m| m.as_str())
            .map(str::to_owned);
        let ct = content_type
            .map(|c| c.split(';').next().unwrap_or("").trim().to_owned())
            .filter(|c| c.starts_with("application/vnd."));
        let kind = ct.or(declared).unwrap_or_else(|| {
            if value.get("manifests").is_some() {
                OCI_INDEX.into()
            } else {
                OCI_MANIFEST.into()
            }
        });
        match kind.as_str() {
            OCI_INDEX | DOCKER_LIST => serde_json::from_value(value)
                .map(Manifest::Index)
                .map_err(|e| anyhow!("bad image index: {e}")),
            OCI_MANIFEST | DOCKER_MANIFEST => serde_json::from_value(value)
                .map(Manifest::Image)
                .map_err(|e| anyhow!("bad image manifest: {e}")),
            other => bail!(
                "unsupported manifest type `{other}` (schema 1 and other formats are not handled)"
            ),
        }
    }
}

impl Index {
    /// The manifest for `platform`. arm64 entries with variant v8 or none
    /// both match; attestation entries (`unknown/unknown`) never do.
    pub fn select(&self, platform: Platform) -> Result<&Descriptor> {
        let arch = platform.oci_arch();
        self.manifests
            .iter()
            .find(|d| match &d.platform {
                Some(p) => {
                    p.os == "linux"
                        && p.architecture == arch
                        && match (arch, p.variant.as_deref()) {
                            ("arm64", Some(v)) => v == "v8",
                            _ => true,
                        }
                }
                None => false,
            })
            .ok_or_else(|| {
                let have: Vec<String> = self
                    .manifests
                    .iter()
                    .filter_map(|d| d.platform.as_ref())
                    .map(|p| match &p.variant {
                        Some(v) => format!("{}/{}/{v}", p.os, p.architecture),
                        None => format!("{}/{}", p.os, p.architecture),
                    })
                    .collect();
                anyhow!(
                    "no manifest for {platform} in the index (it has {})",
                    join_or(&have, ", ", "no platforms")
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::Arch;

    fn desc(n: u8, arch: &str, variant: Option<&str>) -> serde_json::Value {
        let mut p = serde_json::json!({"architecture": arch, "os": "linux"});
        if let Some(v) = variant {
            p["variant"] = v.into();
        }
        serde_json::json!({
            "mediaType": OCI_MANIFEST,
            "digest": format!("sha256:{}", format!("{n:02x}").repeat(32)),
            "size": 100,
            "platform": p,
        })
    }

    #[test]
    fn selects_platform_from_index() {
        let body = serde_json::json!({
            "schemaVersion": 2,
            "manifests": [desc(1, "arm", Some("v7")), desc(2, "amd64", None), desc(3, "arm64", Some("v8"))],
        });
        let m = Manifest::parse(Some(DOCKER_LIST), body.to_string().as_bytes()).unwrap();
        let Manifest::Index(idx) = m else {
            panic!("not an index")
        };
        let amd = idx.select(Platform { arch: Arch::Amd64 }).unwrap();
        assert!(amd.digest.hex().starts_with("0202"));
        let arm = idx.select(Platform { arch: Arch::Arm64 }).unwrap();
        assert!(arm.digest.hex().starts_with("0303"));
        let only_arm = Index {
            schema_version: 2,
            media_type: None,
            manifests: idx.manifests[..1].to_vec(),
        };
        let err = only_arm
            .select(Platform { arch: Arch::Amd64 })
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("linux/amd64") && err.contains("linux/arm/v7"),
            "{err}"
        );
    }

    #[test]
    fn image_manifest_from_body_media_type() {
        let body = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": format!("sha256:{}", "a".repeat(64)), "size": 10},
            "layers": [{"mediaType": OCI_LAYER_TAR, "digest": format!("sha256:{}", "b".repeat(64)), "size": 20}],
        });
        let m = Manifest::parse(Some("application/json"), body.to_string().as_bytes()).unwrap();
        let Manifest::Image(im) = m else {
            panic!("not an image manifest")
        };
        assert_eq!(im.layers.len(), 1);
        assert_eq!(im.config.size, 10);
        let why = |body: &[u8]| Manifest::parse(None, body).unwrap_err().to_string();
        assert!(why(b"{\"schemaVersion\":1,\"mediaType\":\"application/vnd.docker.distribution.manifest.v1+json\"}")
            .starts_with("unsupported manifest type `application/vnd.docker.distribution.manifest.v1+json`"));
        assert!(why(b"not json").starts_with("manifest is not JSON: "));
    }
}

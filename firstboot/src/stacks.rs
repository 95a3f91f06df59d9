//! The baked stacks manifest (`/etc/nodeforge/stacks.toml`): which compose
//! stacks the image holds, the container image archives they need and how
//! each service's health is checked. The builder writes it; the agent's
//! `containers` step reads it.

use serde::{Deserialize, Serialize};

/// Where the builder writes the manifest inside the image.
pub const STACKS_MANIFEST_PATH: &str = "/etc/nodeforge/stacks.toml";
/// Directory holding one folder per stack (`<dir>/<stack>/compose.yaml`).
pub const STACKS_DIR: &str = "/etc/nodeforge/stacks";
/// Directory holding the `docker load`-able image archives.
pub const IMAGES_DIR: &str = "/var/lib/nodeforge/images";

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StacksManifest {
    #[serde(default)]
    pub stacks: Vec<StackEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StackEntry {
    /// Stack name, also the compose project name (`docker compose -p`).
    pub name: String,
    /// In-image path of the rendered compose file.
    pub compose: String,
    /// In-image path of the stack's `.env` file, when it has environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env_file: Option<String>,
    /// Bound on waiting for all services of the stack to become healthy.
    pub health_timeout_secs: u64,
    #[serde(default)]
    pub images: Vec<ImageEntry>,
    /// Probes for services without a compose healthcheck (or in addition).
    #[serde(default)]
    pub probes: Vec<ProbeEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageEntry {
    /// The reference as the profile wrote it.
    pub reference: String,
    /// The tag the archive loads as; compose files use this name.
    pub tag: String,
    /// Locked manifest digest (`sha256:…`) the archive was made from.
    pub digest: String,
    /// Config digest: the image ID the engine shows once loaded, so the
    /// agent can skip images already present.
    pub image_id: String,
    /// In-image path of the `docker load`-able archive.
    pub archive: String,
}

/// One probe: exactly one of `http` and `tcp` is set (the builder checks).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeEntry {
    /// The compose service the probe reports for.
    pub service: String,
    /// An HTTP GET that must answer 200, e.g. `http://127.0.0.1:8080/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<String>,
    /// A TCP connect to `host:port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<String>,
}

impl StacksManifest {
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("StacksManifest always serialises")
    }

    pub fn from_toml(text: &str) -> Result<Self, toml::de::Error> {
        toml::from_str(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> StacksManifest {
        StacksManifest {
            stacks: vec![StackEntry {
                name: "web".into(),
                compose: "/etc/nodeforge/stacks/web/compose.yaml".into(),
                env_file: Some("/etc/nodeforge/stacks/web/.env".into()),
                health_timeout_secs: 120,
                images: vec![ImageEntry {
                    reference: "127.0.0.1:5000/web:1".into(),
                    tag: "127.0.0.1:5000/web:1".into(),
                    digest: format!("sha256:{}", "a".repeat(64)),
                    image_id: format!("sha256:{}", "b".repeat(64)),
                    archive: "/var/lib/nodeforge/images/aaaa.tar".into(),
                }],
                probes: vec![
                    ProbeEntry {
                        service: "web".into(),
                        http: Some("http://127.0.0.1:8080/".into()),
                        tcp: None,
                    },
                    ProbeEntry {
                        service: "db".into(),
                        http: None,
                        tcp: Some("127.0.0.1:5432".into()),
                    },
                ],
            }],
        }
    }

    #[test]
    fn manifest_round_trips_with_probe_kinds() {
        let m = sample();
        let text = m.to_toml();
        assert!(text.contains("http = \"http://127.0.0.1:8080/\""), "{text}");
        assert!(text.contains("tcp = \"127.0.0.1:5432\""), "{text}");
        assert_eq!(StacksManifest::from_toml(&text).unwrap(), m);
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let err = StacksManifest::from_toml(
            "[[stacks]]\nname='a'\ncompose='/x'\nhealth_timeout_secs=1\nbogus=1\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("bogus"), "{err}");
    }
}

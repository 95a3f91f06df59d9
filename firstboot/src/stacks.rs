//! The baked stacks manifest (`/etc/nodeforge/stacks.toml`): which compose
//! stacks the image holds, the container images they need and how
//! each service's health is checked. The builder writes it; the agent's
//! `containers` step reads it.

use serde::{Deserialize, Serialize};

/// Where the builder writes the manifest inside the image.
pub const STACKS_MANIFEST_PATH: &str = "/etc/nodeforge/stacks.toml";
/// Directory holding one folder per stack (`<dir>/<stack>/compose.yaml`).
pub const STACKS_DIR: &str = "/etc/nodeforge/stacks";
/// Directory of the per-stack secrets files the agent writes at first boot
/// (mode 0600, never in the image).
pub const SECRETS_DIR: &str = "/var/lib/nodeforge/secrets";

/// The secrets file of a stack that declares secrets.
pub fn secrets_file(stack: &str) -> String {
    format!("{SECRETS_DIR}/{stack}.env")
}

/// A compose env file: single-quoted values are taken literally (no
/// interpolation); callers keep `'` and newlines out of values.
pub fn env_file<'a>(vars: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    vars.into_iter()
        .map(|(k, v)| format!("{k}='{v}'\n"))
        .collect()
}

/// Parses what [`env_file`] writes; other lines are ignored.
pub fn parse_env_file(text: &str) -> std::collections::BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once('=')?;
            let v = v.strip_prefix('\'')?.strip_suffix('\'')?;
            Some((k.trim().to_owned(), v.to_owned()))
        })
        .collect()
}

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
    /// Names of the secrets the compose file interpolates: taken from the
    /// seed or generated once, into `secrets_file`, before `compose up`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<String>,
    /// In-image path of the secrets env file (see [`secrets_file`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secrets_file: Option<String>,
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
    /// The tag the image is stored under; compose files use this name.
    pub tag: String,
    /// Locked manifest digest (`sha256:…`): the image's repo digest.
    pub digest: String,
    /// Config digest: the image ID the engine shows for it.
    pub image_id: String,
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
                secrets: vec!["DB_PASSWORD".into()],
                secrets_file: Some(secrets_file("web")),
                health_timeout_secs: 120,
                images: vec![ImageEntry {
                    reference: "127.0.0.1:5000/web:1".into(),
                    tag: "127.0.0.1:5000/web:1".into(),
                    digest: format!("sha256:{}", "a".repeat(64)),
                    image_id: format!("sha256:{}", "b".repeat(64)),
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
    fn env_files_round_trip() {
        let text = env_file([("A", "x y $Z"), ("B", "")]);
        assert_eq!(text, "A='x y $Z'\nB=''\n");
        let back = parse_env_file(&format!("# comment\n{text}junk\n"));
        assert_eq!(back.len(), 2);
        assert_eq!(back["A"], "x y $Z");
        assert_eq!(secrets_file("db"), "/var/lib/nodeforge/secrets/db.env");
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

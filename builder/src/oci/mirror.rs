//! Registry mirrors: `--mirror docker.io=http://127.0.0.1:5000` sends the
//! API requests for one registry's images to another server while the
//! references (and so the lock file and the names the engine loads) stay
//! as the profile writes them.

use std::fmt;

use anyhow::{anyhow, bail, Result};
use serde::{Deserialize, Serialize};

use super::Reference;

/// One registry's mirror: `registry=http(s)://host[:port]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mirror {
    /// The registry as references name it (`docker.io`, `ghcr.io`).
    pub registry: String,
    /// The mirror's base URL, without `/v2`.
    pub url: String,
}

impl Mirror {
    /// Parses `registry=url`; the error says what a good one looks like.
    pub fn parse(s: &str) -> Result<Mirror> {
        let example = "e.g. docker.io=http://127.0.0.1:5000";
        let (registry, url) = s
            .split_once('=')
            .ok_or_else(|| anyhow!("mirror `{s}` must be REGISTRY=URL, {example}"))?;
        let registry = registry.trim();
        if registry.is_empty() || registry.contains(['/', ' ']) {
            bail!("mirror `{s}`: `{registry}` is not a registry name, {example}");
        }
        let url = url.trim().trim_end_matches('/');
        let host = url
            .strip_prefix("http://")
            .or_else(|| url.strip_prefix("https://"))
            .unwrap_or("");
        if host.is_empty() || host.contains(['/', ' ', '?', '#']) {
            bail!(
                "mirror `{s}`: `{url}` must be an http:// or https:// URL of a registry, without a path, {example}"
            );
        }
        Ok(Mirror {
            registry: registry.to_owned(),
            url: url.to_owned(),
        })
    }
}

impl fmt::Display for Mirror {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.registry, self.url)
    }
}

/// The mirrors a client uses; a registry without one is asked directly.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Mirrors(Vec<Mirror>);

impl Mirrors {
    /// A later mirror of the same registry replaces an earlier one.
    pub fn new(list: impl IntoIterator<Item = Mirror>) -> Mirrors {
        let mut out: Vec<Mirror> = Vec::new();
        for m in list {
            out.retain(|x| x.registry != m.registry);
            out.push(m);
        }
        Mirrors(out)
    }

    /// The mirror serving `image`'s registry, if any.
    pub fn for_image(&self, image: &Reference) -> Option<&Mirror> {
        self.0.iter().find(|m| m.registry == image.registry)
    }

    /// Base URL of the API `image` is fetched from.
    pub fn api_base(&self, image: &Reference) -> String {
        match self.for_image(image) {
            Some(m) => format!("{}/v2", m.url),
            None => image.api_base(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_routes_by_registry() {
        let m = Mirror::parse("docker.io=http://127.0.0.1:5000/").unwrap();
        assert_eq!(m.url, "http://127.0.0.1:5000");
        assert_eq!(m.to_string(), "docker.io=http://127.0.0.1:5000");
        let mirrors = Mirrors::new([
            Mirror::parse("docker.io=http://a:1").unwrap(),
            m.clone(),
            Mirror::parse("ghcr.io=https://mirror.example").unwrap(),
        ]);
        let hub = Reference::parse("grafana/grafana:11.2.0").unwrap();
        assert_eq!(mirrors.api_base(&hub), "http://127.0.0.1:5000/v2");
        let gh = Reference::parse("ghcr.io/open-webui/open-webui:v0.3.32").unwrap();
        assert_eq!(mirrors.api_base(&gh), "https://mirror.example/v2");
        let quay = Reference::parse("quay.io/prometheus/busybox:latest").unwrap();
        assert_eq!(mirrors.api_base(&quay), "https://quay.io/v2");
    }

    #[test]
    fn bad_mirrors_say_what_is_expected() {
        for bad in [
            "docker.io",
            "=http://a",
            "docker.io=ftp://a",
            "docker.io=http://a/b",
        ] {
            let e = Mirror::parse(bad).unwrap_err().to_string();
            assert!(
                e.contains("e.g. docker.io=http://127.0.0.1:5000"),
                "{bad}: {e}"
            );
        }
    }
}

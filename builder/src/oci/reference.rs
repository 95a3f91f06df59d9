//! Image references: `[registry/]repository[:tag][@sha256:hex]`, with
//! Docker Hub's defaults (`docker.io`, `library/`, `latest`).

use std::fmt;

use anyhow::{anyhow, Result};

use super::Digest;

pub const DOCKER_HUB: &str = "docker.io";
/// Docker Hub's registry API lives on another host than its name.
const DOCKER_HUB_API: &str = "registry-1.docker.io";

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Reference {
    /// Registry host with optional port, e.g. `docker.io`, `127.0.0.1:5000`.
    pub registry: String,
    /// Repository path inside the registry, e.g. `library/busybox`.
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

impl Reference {
    pub fn parse(s: &str) -> Result<Reference> {
        let bad = |why: &str| anyhow!("image reference `{s}` is not valid: {why}");
        if s.is_empty() || s.trim() != s {
            return Err(bad("empty or surrounded by spaces"));
        }
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => (r, Some(Digest::parse(d).map_err(|e| bad(&e.to_string()))?)),
            None => (s, None),
        };
        // A tag is after the last ':' that follows the last '/'; a ':'
        // before it is a registry port.
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => (
                &rest[..last_slash + i],
                Some(rest[last_slash + i + 1..].to_owned()),
            ),
            None => (rest, None),
        };
        if let Some(t) = &tag {
            let ok = !t.is_empty()
                && t.len() <= 128
                && t.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
                && t.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
            if !ok {
                return Err(bad("the tag may hold letters, digits, `_`, `.` and `-`"));
            }
        }
        let (registry, repository) = match name.split_once('/') {
            Some((first, path))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_owned(), path.to_owned())
            }
            _ => (DOCKER_HUB.to_owned(), name.to_owned()),
        };
        let repository = if registry == DOCKER_HUB && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        let component_ok = |c: &str| {
            !c.is_empty()
                && c.starts_with(|ch: char| ch.is_ascii_lowercase() || ch.is_ascii_digit())
                && c.ends_with(|ch: char| ch.is_ascii_lowercase() || ch.is_ascii_digit())
                && c.chars()
                    .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || "._-".contains(ch))
        };
        if !repository.split('/').all(component_ok) {
            return Err(bad(
                "repository names use lowercase letters, digits and `._-` between slashes",
            ));
        }
        let tag = if tag.is_none() && digest.is_none() {
            Some("latest".to_owned())
        } else {
            tag
        };
        Ok(Reference {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// What a manifest request names: the digest if pinned, else the tag.
    pub fn manifest_ref(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => "latest".into(),
        }
    }

    /// Base URL of the registry's API. Loopback registries speak plain
    /// HTTP, as the Docker engine assumes too; everything else HTTPS.
    pub fn api_base(&self) -> String {
        let host = if self.registry == DOCKER_HUB {
            DOCKER_HUB_API
        } else {
            &self.registry
        };
        let hostname = host.rsplit_once(':').map_or(host, |(h, _)| h);
        let loopback =
            hostname == "localhost" || hostname.starts_with("127.") || hostname == "[::1]";
        let scheme = if loopback { "http" } else { "https" };
        format!("{scheme}://{host}/v2")
    }

    /// The fully-qualified repository, `registry/repository`.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// The repository as the engine shows it (its "familiar" name): Docker
    /// Hub's host and `library/` dropped, other registries kept.
    pub fn familiar_name(&self) -> String {
        match self.registry == DOCKER_HUB {
            true => self
                .repository
                .strip_prefix("library/")
                .unwrap_or(&self.repository)
                .to_owned(),
            false => self.name(),
        }
    }

    /// The name the engine gives the stored image: `registry/repo:tag` as
    /// written (Docker Hub names shortened the way the engine shows them).
    /// A digest-only reference gets a tag made from its digest.
    pub fn load_tag(&self, digest: &Digest) -> String {
        let name = self.familiar_name();
        match &self.tag {
            Some(t) => format!("{name}:{t}"),
            None => format!("{name}:digest-{}", &digest.hex()[..16]),
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.name())?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn docker_hub_defaults() {
        let r = Reference::parse("busybox").unwrap();
        assert_eq!(r.registry, "docker.io");
        assert_eq!(r.repository, "library/busybox");
        assert_eq!(r.tag.as_deref(), Some("latest"));
        assert_eq!(r.api_base(), "https://registry-1.docker.io/v2");
        assert_eq!(
            r.load_tag(&Digest::parse(&format!("sha256:{HEX}")).unwrap()),
            "busybox:latest"
        );
        let r = Reference::parse("grafana/grafana:11.1").unwrap();
        assert_eq!(r.repository, "grafana/grafana");
        assert_eq!(r.tag.as_deref(), Some("11.1"));
    }

    #[test]
    fn registry_with_port_tag_and_digest() {
        let r = Reference::parse(&format!("127.0.0.1:5000/team/web:1.2@sha256:{HEX}")).unwrap();
        assert_eq!(r.registry, "127.0.0.1:5000");
        assert_eq!(r.repository, "team/web");
        assert_eq!(r.tag.as_deref(), Some("1.2"));
        assert_eq!(r.digest.as_ref().unwrap().hex(), HEX);
        assert_eq!(r.manifest_ref(), format!("sha256:{HEX}"));
        assert_eq!(r.api_base(), "http://127.0.0.1:5000/v2");
        let r = Reference::parse("localhost:5000/web").unwrap();
        assert_eq!(r.registry, "localhost:5000");
        assert_eq!(r.tag.as_deref(), Some("latest"));
        let r = Reference::parse("ghcr.io/o/p").unwrap();
        assert_eq!(r.api_base(), "https://ghcr.io/v2");
    }

    #[test]
    fn digest_only_gets_a_load_tag() {
        let d = Digest::parse(&format!("sha256:{HEX}")).unwrap();
        let r = Reference::parse(&format!("quay.io/x/y@sha256:{HEX}")).unwrap();
        assert_eq!(r.tag, None);
        assert_eq!(r.load_tag(&d), "quay.io/x/y:digest-e3b0c44298fc1c14");
    }

    #[test]
    fn bad_references_are_errors() {
        for (bad, why) in [
            ("", "empty or surrounded by spaces"),
            ("Busybox", "repository names use lowercase"),
            ("busybox:", "the tag may hold"),
            ("busybox:a b", "the tag may hold"),
            ("busybox@sha256:123", "64 lowercase hex digits"),
            ("busybox@md5:abc", "must start with `sha256:`"),
            ("a//b", "repository names use lowercase"),
            (" busybox", "empty or surrounded by spaces"),
        ] {
            let e = Reference::parse(bad).expect_err(bad).to_string();
            assert!(
                e.starts_with(&format!("image reference `{bad}` is not valid: "))
                    && e.contains(why),
                "{bad:?}: {e}"
            );
        }
    }
}

//! Registry credentials, the way `docker login` keeps them: the `auths` of
//! a Docker config file (`$DOCKER_CONFIG/config.json`, else
//! `~/.docker/config.json`, or a file given with `--registry-auth-file`),
//! each a base64 `user:password` (`auth`) or `username` and `password`.
//! Credential helpers (`credsStore`, `credHelpers`) are not run: a host
//! that only has one gets no credentials, and the error says so.
//! Never from the command line.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};
use base64::Engine as _;
use serde::Deserialize;

#[derive(Clone, Default)]
pub struct Credentials {
    by_host: HashMap<String, (String, String)>,
    /// Hosts whose credentials sit in a helper we do not run.
    helper_hosts: Vec<String>,
    /// Where they came from, for messages.
    pub source: Option<PathBuf>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the passwords.
        f.debug_struct("Credentials")
            .field("hosts", &self.by_host.keys().collect::<Vec<_>>())
            .field("source", &self.source)
            .finish()
    }
}

#[derive(Deserialize)]
struct ConfigFile {
    #[serde(default)]
    auths: HashMap<String, AuthEntry>,
    #[serde(default, rename = "credHelpers")]
    cred_helpers: HashMap<String, String>,
    #[serde(default, rename = "credsStore")]
    creds_store: Option<String>,
}

#[derive(Deserialize)]
struct AuthEntry {
    auth: Option<String>,
    username: Option<String>,
    password: Option<String>,
}

/// `https://host:port/v1/` and `host:port` name the same registry.
fn host_of(key: &str) -> String {
    let k = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let host = k.split('/').next().unwrap_or(k);
    match host {
        // docker login's name for Docker Hub.
        "index.docker.io" | "registry-1.docker.io" => "docker.io".to_owned(),
        h => h.to_owned(),
    }
}

impl Credentials {
    /// `explicit` when given (it must exist), else the Docker config file
    /// when there is one, else none.
    pub fn load(explicit: Option<&Path>) -> Result<Credentials> {
        let path = match explicit {
            Some(p) => Some(p.to_path_buf()),
            None => std::env::var_os("DOCKER_CONFIG")
                .map(|d| PathBuf::from(d).join("config.json"))
                .or_else(|| {
                    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker/config.json"))
                })
                .filter(|p| p.is_file()),
        };
        match path {
            Some(p) => Credentials::from_file(&p),
            None => Ok(Credentials::default()),
        }
    }

    pub fn from_file(path: &Path) -> Result<Credentials> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading registry credentials {}", path.display()))?;
        let file: ConfigFile = serde_json::from_str(&text).with_context(|| {
            format!(
                "{} is not a Docker config file ({{\"auths\": {{\"HOST\": {{\"auth\": \"base64 of user:password\"}}}}}})",
                path.display()
            )
        })?;
        let mut by_host = HashMap::new();
        for (key, entry) in file.auths {
            let pair = match (entry.auth, entry.username, entry.password) {
                (Some(a), _, _) if !a.is_empty() => {
                    let raw = base64::engine::general_purpose::STANDARD
                        .decode(a.trim())
                        .map_err(|e| {
                            anyhow!("{}: `auth` of {key} is not base64: {e}", path.display())
                        })?;
                    let raw = String::from_utf8(raw)
                        .map_err(|_| anyhow!("{}: `auth` of {key} is not text", path.display()))?;
                    let (u, p) = raw.split_once(':').ok_or_else(|| {
                        anyhow!("{}: `auth` of {key} is not `user:password`", path.display())
                    })?;
                    (u.to_owned(), p.to_owned())
                }
                (_, Some(u), Some(p)) => (u, p),
                // An entry a helper fills: nothing here.
                _ => continue,
            };
            by_host.insert(host_of(&key), pair);
        }
        let mut helper_hosts: Vec<String> = file.cred_helpers.keys().map(|k| host_of(k)).collect();
        if file.creds_store.is_some() {
            helper_hosts.push("*".into());
        }
        Ok(Credentials {
            by_host,
            helper_hosts,
            source: Some(path.to_path_buf()),
        })
    }

    /// User and password for `registry` (`host[:port]`).
    pub fn for_registry(&self, registry: &str) -> Option<(&str, &str)> {
        self.by_host
            .get(&host_of(registry))
            .map(|(u, p)| (u.as_str(), p.as_str()))
    }

    /// What to tell a user whom `registry` refused.
    pub fn hint(&self, registry: &str) -> String {
        let host = host_of(registry);
        if self.for_registry(registry).is_some() {
            return format!(
                ": the credentials for {host} in {} were refused",
                self.source.as_deref().unwrap_or(Path::new("?")).display()
            );
        }
        if self.helper_hosts.iter().any(|h| h == &host || h == "*") {
            return format!(
                ": {host}'s credentials are in a Docker credential helper, which nodeforge does not \
                 run; put them in a file ({{\"auths\": {{\"{host}\": {{\"auth\": …}}}}}}) and pass \
                 --registry-auth-file"
            );
        }
        format!(
            ": log in (`docker login {host}` writes ~/.docker/config.json, which nodeforge reads), \
             or pass --registry-auth-file FILE in that format"
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_login_files_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("config.json");
        let auth = base64::engine::general_purpose::STANDARD.encode("alice:s3cret");
        std::fs::write(
            &f,
            format!(
                r#"{{"auths": {{"https://reg.example:5000/v1/": {{"auth": "{auth}"}},
                    "ghcr.io": {{"username": "bob", "password": "tok"}},
                    "helped.example": {{}}}},
                   "credHelpers": {{"helped.example": "pass"}}}}"#
            ),
        )
        .unwrap();
        let c = Credentials::from_file(&f).unwrap();
        assert_eq!(
            c.for_registry("reg.example:5000"),
            Some(("alice", "s3cret"))
        );
        assert_eq!(c.for_registry("ghcr.io"), Some(("bob", "tok")));
        assert_eq!(c.for_registry("helped.example"), None);
        assert!(c.hint("helped.example").contains("credential helper"));
        assert!(c
            .hint("other.example")
            .contains("docker login other.example"));
        assert!(!format!("{c:?}").contains("s3cret"));
    }

    #[test]
    fn a_broken_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("auth.json");
        std::fs::write(&f, r#"{"auths": {"r.example": {"auth": "%%%"}}}"#).unwrap();
        let e = Credentials::from_file(&f).unwrap_err().to_string();
        assert!(e.contains("auth.json") && e.contains("not base64"), "{e}");
    }
}

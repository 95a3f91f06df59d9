//! The fleet file: the machines of a fleet and their per-node values, so
//! `customize --node`, `flash --node` and `serve` stamp each machine's own
//! seed from one place.
//!
//! ```toml
//! [defaults]
//! tags = ["tag:lab"]
//! ssh_keys = ["ssh-ed25519 AAAA… ops@laptop"]
//!
//! [nodes.sentinel-2]
//! hostname = "sentinel-2"            # default: the node's name
//! authkey_file = "keys/sentinel-2"   # relative to this file
//! tags = ["tag:edge"]
//! backup_repository = "s3:http://datacore.tail79107c.ts.net:9000/backups"
//! stack_secrets = { RESTIC_PASSWORD = "keys/restic" }   # NAME = file
//! profile = "profiles/sentinel.toml"
//! mac = "52:54:00:12:34:56"
//! ```
//!
//! `serve` also reads `default_node` (top level), `artifacts`, `mode`,
//! `install_disk`, `force`, `install_from` and `install_mirror`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Deserialize;

use super::options::SeedOptions;
use crate::profile::ProfileError;

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct NodeValues {
    pub hostname: Option<String>,
    pub authkey_file: Option<PathBuf>,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub ssh_keys: Vec<String>,
    /// Where the machine's backups go (a restic repository), over its
    /// image's own; see the seed's `backup_repository`.
    pub backup_repository: Option<String>,
    /// Stack secrets by name, each read from a file relative to the fleet
    /// file (a node's own over the defaults' of the same name).
    #[serde(default)]
    pub stack_secrets: BTreeMap<String, PathBuf>,
    /// The role profile this machine runs (for `serve`).
    pub profile: Option<PathBuf>,
    /// The machine's MAC address (for `serve`).
    pub mac: Option<String>,
    /// The build whose netboot files `serve` hands this machine (a
    /// profile's `name`; default: the name of `profile`).
    pub artifacts: Option<String>,
    /// `diskless` (default): run from RAM; `install`: write the role's
    /// disk image to a local disk and boot from it.
    pub mode: Option<NodeMode>,
    /// Install mode: which disk (see [`crate::install::DiskRule`]).
    pub install_disk: Option<String>,
    /// Install mode: overwrite a disk that holds data.
    pub force: Option<bool>,
    /// Install mode: the machine writes this pushed build
    /// (`oci://HOST/REPOSITORY@sha256:…`, see `nodeforge push`) straight
    /// from the registry, streamed to its disk, instead of fetching the
    /// image from `serve`.
    pub install_from: Option<String>,
    /// The URL the machine reaches `install_from`'s registry at, when not
    /// the reference's own (a plain-HTTP address on the LAN, a mirror).
    pub install_mirror: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum NodeMode {
    #[default]
    Diskless,
    Install,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Fleet {
    #[serde(default)]
    pub defaults: NodeValues,
    #[serde(default)]
    pub nodes: BTreeMap<String, NodeValues>,
    /// The node `serve` boots a machine whose MAC no node names (each such
    /// machine gets the node's hostname with its MAC appended); without
    /// it, unknown machines are refused.
    pub default_node: Option<String>,
    #[serde(skip)]
    pub dir: PathBuf,
}

impl Fleet {
    pub fn load(path: &Path) -> Result<Fleet> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading fleet file {}", path.display()))?;
        let mut fleet: Fleet =
            toml::from_str(&text).map_err(|e| ProfileError::from_toml(path, &text, &e))?;
        fleet.dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        Ok(fleet)
    }

    /// The seed options of node `name`: its values over the defaults.
    pub fn seed_options(&self, name: &str) -> Result<SeedOptions> {
        let node = self.nodes.get(name).with_context(|| {
            let known: Vec<&str> = self.nodes.keys().map(String::as_str).collect();
            format!(
                "no node `{name}` in the fleet file (it has: {})",
                known.join(", ")
            )
        })?;
        let d = &self.defaults;
        let mut tags = d.tags.clone();
        tags.extend(node.tags.iter().cloned());
        let mut ssh_keys = d.ssh_keys.clone();
        ssh_keys.extend(node.ssh_keys.iter().cloned());
        let mut secrets = d.stack_secrets.clone();
        secrets.extend(node.stack_secrets.clone());
        Ok(SeedOptions {
            hostname: Some(node.hostname.clone().unwrap_or_else(|| name.to_owned())),
            authkey_file: node
                .authkey_file
                .as_ref()
                .or(d.authkey_file.as_ref())
                .map(|p| self.dir.join(p)),
            ssh_keys,
            tags,
            stack_secret_files: secrets
                .into_iter()
                .map(|(name, file)| (name, self.dir.join(file)))
                .collect(),
            backup_repository: node
                .backup_repository
                .clone()
                .or_else(|| d.backup_repository.clone()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::scratch_file;

    #[test]
    fn node_values_override_defaults() {
        let (dir, path) = scratch_file("fleet.toml", "[defaults]\ntags = [\"tag:lab\"]\nauthkey_file = \"k/default\"\n[nodes.a]\n[nodes.b]\nhostname = \"bee\"\nauthkey_file = \"k/b\"\ntags = [\"tag:edge\"]\n");
        let f = Fleet::load(&path).unwrap();
        let a = f.seed_options("a").unwrap();
        assert_eq!(a.hostname.as_deref(), Some("a"));
        assert_eq!(a.authkey_file, Some(dir.path().join("k/default")));
        let b = f.seed_options("b").unwrap();
        assert_eq!(b.hostname.as_deref(), Some("bee"));
        assert_eq!(b.tags, ["tag:lab", "tag:edge"]);
        let err = f.seed_options("c").unwrap_err().to_string();
        assert!(err.contains("no node `c`") && err.contains("a, b"), "{err}");
    }

    #[test]
    fn backup_repository_and_stack_secrets_come_from_the_node_over_the_defaults() {
        let (dir, path) = scratch_file(
            "fleet.toml",
            "[defaults]\nbackup_repository = \"s3:http://datacore:9000/backups\"\n\
             stack_secrets = { RESTIC_PASSWORD = \"k/restic\", AWS_ACCESS_KEY_ID = \"k/id\" }\n\
             [nodes.a]\n[nodes.b]\nbackup_repository = \"/srv/backups/b\"\n\
             stack_secrets = { RESTIC_PASSWORD = \"k/restic-b\" }\n",
        );
        let f = Fleet::load(&path).unwrap();
        let a = f.seed_options("a").unwrap();
        assert_eq!(
            a.backup_repository.as_deref(),
            Some("s3:http://datacore:9000/backups")
        );
        assert_eq!(
            a.stack_secret_files,
            [
                ("AWS_ACCESS_KEY_ID".to_owned(), dir.path().join("k/id")),
                ("RESTIC_PASSWORD".to_owned(), dir.path().join("k/restic")),
            ]
        );
        let b = f.seed_options("b").unwrap();
        assert_eq!(b.backup_repository.as_deref(), Some("/srv/backups/b"));
        assert_eq!(
            b.stack_secret_files,
            [
                ("AWS_ACCESS_KEY_ID".to_owned(), dir.path().join("k/id")),
                ("RESTIC_PASSWORD".to_owned(), dir.path().join("k/restic-b")),
            ]
        );
    }

    #[test]
    fn unknown_keys_are_located() {
        let (_dir, path) = scratch_file("fleet.toml", "[nodes.a]\nhostnme = \"x\"\n");
        let err = format!("{:#}", Fleet::load(&path).unwrap_err());
        assert!(
            err.contains("fleet.toml:2:1") && err.contains("hostnme"),
            "{err}"
        );
    }
}

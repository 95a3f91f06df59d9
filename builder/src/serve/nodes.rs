//! Which node a machine is, by its MAC address: the fleet file's nodes,
//! each with its seed and the build whose files it boots.

use std::collections::BTreeMap;
use std::fmt;

use anyhow::{bail, Context, Result};
use nodeforge_firstboot::seed::Seed;

use crate::install::disk::DiskRule;
use crate::seed::fleet::{Fleet, NodeMode};

/// A MAC address, as iPXE's `${mac}` (colons) or `${mac:hexhyp}` (dashes)
/// spells it, case-insensitive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    pub fn parse(s: &str) -> Option<Mac> {
        let parts: Vec<&str> = s.split([':', '-']).collect();
        if parts.len() != 6 {
            return None;
        }
        let mut out = [0u8; 6];
        for (o, p) in out.iter_mut().zip(&parts) {
            if p.len() != 2 {
                return None;
            }
            *o = u8::from_str_radix(p, 16).ok()?;
        }
        Some(Mac(out))
    }

    /// `52-54-00-12-34-56`: the form in URLs (no colons to confuse a URI
    /// parser).
    pub fn hyphenated(&self) -> String {
        self.to_string().replace(':', "-")
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

/// A machine's role and own values.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// The fleet file's name for it.
    pub name: String,
    /// The build whose netboot files it boots (`<artifacts>.vmlinuz` …).
    pub artifacts: String,
    pub seed: Seed,
    /// Install mode: which disk, and whether one holding data may be
    /// overwritten; None for diskless.
    pub install: Option<InstallPlan>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstallPlan {
    /// The fleet's `install_disk`, checked.
    pub disk: String,
    pub force: bool,
    /// `install_from`: a pushed build pinned by digest, which the machine
    /// streams from the registry itself.
    pub from: Option<String>,
    /// `install_mirror`, as `registry=url` for that reference's registry.
    pub mirror: Option<crate::oci::Mirror>,
}

/// The fleet's machines by MAC address.
#[derive(Debug, Clone)]
pub struct NodeTable {
    by_mac: BTreeMap<Mac, Node>,
    default: Option<Node>,
}

/// What a MAC address is.
#[derive(Debug, Clone, PartialEq)]
pub enum Lookup {
    Known(Node),
    /// Not in the fleet file; booted as the default node.
    Default(Node),
    /// Not in the fleet file and no default node.
    Refused,
}

impl NodeTable {
    /// Reads every node's seed (auth key files included) now, so a missing
    /// key shows at start-up rather than when its machine boots.
    pub fn from_fleet(fleet: &Fleet) -> Result<NodeTable> {
        let mut by_mac = BTreeMap::new();
        for (name, values) in &fleet.nodes {
            // Nodes without a MAC address are flashed, not netbooted.
            let Some(mac) = &values.mac else {
                continue;
            };
            let node = node(fleet, name)?;
            let mac = Mac::parse(mac).with_context(|| {
                format!(
                    "fleet node `{name}`: `{mac}` is not a MAC address (like 52:54:00:12:34:56)"
                )
            })?;
            if let Some(other) = by_mac.insert(mac, node) {
                bail!(
                    "fleet nodes `{}` and `{name}` have the same MAC address {mac}",
                    other.name
                );
            }
        }
        let default = match &fleet.default_node {
            Some(name) => Some(node(fleet, name).context("default_node")?),
            None => None,
        };
        if by_mac.is_empty() && default.is_none() {
            bail!("the fleet file has no node with a `mac` and no default_node: nothing to serve");
        }
        Ok(NodeTable { by_mac, default })
    }

    pub fn lookup(&self, mac: Mac) -> Lookup {
        if let Some(n) = self.by_mac.get(&mac) {
            return Lookup::Known(n.clone());
        }
        let Some(d) = &self.default else {
            return Lookup::Refused;
        };
        // Machines sharing the default node still need their own names.
        let mut node = d.clone();
        let b = mac.0;
        let suffix = format!("{:02x}{:02x}{:02x}", b[3], b[4], b[5]);
        let base = node.seed.hostname.clone().unwrap_or_else(|| d.name.clone());
        node.seed.hostname = Some(format!("{base}-{suffix}"));
        Lookup::Default(node)
    }

    /// Every build the fleet boots, with the files serve may hand out of
    /// it: the netboot files, and the image with its block map when a node
    /// of the build installs from serve.
    pub fn served_files(&self) -> Vec<(String, Vec<String>)> {
        self.artifacts()
            .into_iter()
            .map(|build| {
                let installs = self
                    .by_mac
                    .values()
                    .chain(&self.default)
                    .any(|n| n.artifacts == build && n.install.is_some());
                let mut files = fetchable_files(build, installs);
                files.push(crate::build::netboot::NetbootFiles::of(build).script);
                (build.to_owned(), files)
            })
            .collect()
    }

    /// Every build the fleet boots.
    pub fn artifacts(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self
            .by_mac
            .values()
            .chain(&self.default)
            .map(|n| n.artifacts.as_str())
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }
}

/// The files of `build` a node fetches by name (its iPXE script comes
/// through its own route): kernel, initrd and root, and the image with its
/// block map when the node `installs`.
pub fn fetchable_files(build: &str, installs: bool) -> Vec<String> {
    let f = crate::build::netboot::NetbootFiles::of(build);
    let mut files = vec![f.kernel, f.initrd, f.squashfs];
    if installs {
        files.push(format!("{build}.img"));
        files.push(format!("{build}.img.bmap"));
    }
    files
}

fn node(fleet: &Fleet, name: &str) -> Result<Node> {
    let values = fleet
        .nodes
        .get(name)
        .with_context(|| format!("no node `{name}` in the fleet file"))?;
    let seed = fleet
        .seed_options(name)?
        .to_seed()
        .with_context(|| format!("the seed of fleet node `{name}`"))?;
    let artifacts = match (&values.artifacts, &values.profile) {
        (Some(a), _) => a.clone(),
        (None, Some(profile)) => {
            let path = fleet.dir.join(profile);
            crate::profile::load(&path)
                .with_context(|| format!("fleet node `{name}`: reading its profile"))?
                .name
        }
        (None, None) => bail!(
            "fleet node `{name}` names neither `profile` nor `artifacts`: `serve` needs to know \
             which build it boots"
        ),
    };
    if fleet.defaults.install_from.is_some() {
        bail!(
            "the fleet file's [defaults] sets install_from: a pushed build belongs to one node's \
             role, so set it on each install-mode node"
        );
    }
    let install = match values.mode.unwrap_or_default() {
        NodeMode::Diskless => None,
        NodeMode::Install => {
            let disk = values
                .install_disk
                .clone()
                .unwrap_or_else(|| "smallest-empty".into());
            DiskRule::parse(&disk).with_context(|| format!("fleet node `{name}`"))?;
            let (from, mirror) = install_source(fleet, name, values)?;
            Some(InstallPlan {
                disk,
                force: values.force.unwrap_or(false),
                from,
                mirror,
            })
        }
    };
    if install.is_none() && (values.install_from.is_some() || values.install_mirror.is_some()) {
        bail!(
            "fleet node `{name}` sets install_from or install_mirror but is not `mode = \"install\"`"
        );
    }
    Ok(Node {
        name: name.to_owned(),
        artifacts,
        seed,
        install,
    })
}

/// A node's `install_from` (checked: an `oci://` reference pinned by
/// digest) and `install_mirror` (its own, else the defaults').
fn install_source(
    fleet: &Fleet,
    name: &str,
    values: &crate::seed::fleet::NodeValues,
) -> Result<(Option<String>, Option<crate::oci::Mirror>)> {
    let mirror_url = values
        .install_mirror
        .as_ref()
        .or(fleet.defaults.install_mirror.as_ref());
    let Some(from) = &values.install_from else {
        if values.install_mirror.is_some() {
            bail!("fleet node `{name}` sets install_mirror without install_from");
        }
        return Ok((None, None));
    };
    let pinned = crate::oci::artifact::parse_uri(from)
        .ok()
        .filter(|r| from.starts_with("oci://") && r.digest.is_some());
    let Some(reference) = pinned else {
        bail!(
            "fleet node `{name}`: install_from `{from}` must be a pushed build pinned by digest, \
             oci://HOST/REPOSITORY@sha256:… (`nodeforge push` prints it)"
        );
    };
    let mirror = mirror_url
        .map(|url| {
            crate::oci::Mirror::parse(&format!("{}={url}", reference.registry)).map_err(|_| {
                anyhow::anyhow!(
                    "fleet node `{name}`: install_mirror `{url}` must be an http:// or https:// \
                     URL without a path, e.g. http://10.0.0.5:5000"
                )
            })
        })
        .transpose()?;
    Ok((Some(from.clone()), mirror))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fleet(text: &str) -> (tempfile::TempDir, Fleet) {
        let (dir, path) = crate::testutil::scratch_file("fleet.toml", text);
        let f = Fleet::load(&path).unwrap();
        (dir, f)
    }

    #[test]
    fn macs_parse_in_both_spellings_and_print_canonically() {
        let m = Mac::parse("52:54:00:AB:cd:01").unwrap();
        assert_eq!(Mac::parse("52-54-00-ab-CD-01"), Some(m));
        assert_eq!(m.to_string(), "52:54:00:ab:cd:01");
        assert_eq!(m.hyphenated(), "52-54-00-ab-cd-01");
        for bad in [
            "52:54:00:ab:cd",
            "52:54:00:ab:cd:0g",
            "525400abcd01",
            "5:54:00:ab:cd:011",
        ] {
            assert_eq!(Mac::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn known_macs_get_their_node_and_others_the_default_with_their_own_hostname() {
        let (_d, f) = fleet(
            "default_node = \"spare\"\n\
             [nodes.a]\nmac = \"52:54:00:00:00:0a\"\nartifacts = \"web\"\n\
             [nodes.spare]\nhostname = \"spare\"\nartifacts = \"base\"\n",
        );
        let t = NodeTable::from_fleet(&f).unwrap();
        let Lookup::Known(a) = t.lookup(Mac::parse("52:54:00:00:00:0a").unwrap()) else {
            panic!("a is known");
        };
        assert_eq!((a.name.as_str(), a.artifacts.as_str()), ("a", "web"));
        assert_eq!(a.seed.hostname.as_deref(), Some("a"));
        let Lookup::Default(s) = t.lookup(Mac::parse("52:54:00:12:34:56").unwrap()) else {
            panic!("unknown MACs get the default");
        };
        assert_eq!(s.seed.hostname.as_deref(), Some("spare-123456"));
        assert_eq!(t.artifacts(), ["base", "web"]);
    }

    #[test]
    fn without_a_default_unknown_macs_are_refused() {
        let (_d, f) = fleet("[nodes.a]\nmac = \"52:54:00:00:00:0a\"\nartifacts = \"web\"\n");
        let t = NodeTable::from_fleet(&f).unwrap();
        assert_eq!(
            t.lookup(Mac::parse("52:54:00:00:00:0b").unwrap()),
            Lookup::Refused
        );
    }

    #[test]
    fn fleet_mistakes_name_the_node() {
        for (text, want) in [
            (
                "[nodes.a]\nmac = \"nope\"\nartifacts = \"w\"\n",
                "`nope` is not a MAC",
            ),
            (
                "[nodes.a]\nmac = \"52:54:00:00:00:0a\"\n",
                "neither `profile` nor `artifacts`",
            ),
            (
                "[nodes.a]\nmac = \"52:54:00:00:00:0a\"\nartifacts = \"w\"\n\
                 [nodes.b]\nmac = \"52-54-00-00-00-0A\"\nartifacts = \"w\"\n",
                "same MAC address 52:54:00:00:00:0a",
            ),
            ("", "nothing to serve"),
            (
                "[nodes.a]\nmac = \"52:54:00:00:00:0a\"\nartifacts = \"w\"\nmode = \"install\"\ninstall_disk = \"sda\"\n",
                "fleet node `a`: install_disk `sda`",
            ),
            ("[nodes.a]\nartifacts = \"w\"\n", "nothing to serve"),
            (
                "[nodes.a]\nmac = \"52:54:00:00:00:0a\"\nartifacts = \"w\"\ninstall_from = \"oci://r:5000/b@sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855\"\n",
                "fleet node `a` sets install_from or install_mirror but is not `mode = \"install\"`",
            ),
            (
                "[nodes.a]\nmac = \"52:54:00:00:00:0a\"\nartifacts = \"w\"\nmode = \"install\"\ninstall_from = \"oci://r:5000/b:latest\"\n",
                "fleet node `a`: install_from `oci://r:5000/b:latest` must be a pushed build pinned by digest",
            ),
            (
                "[nodes.a]\nmac = \"52:54:00:00:00:0a\"\nartifacts = \"w\"\nmode = \"install\"\ninstall_mirror = \"http://10.0.0.5:5000\"\n",
                "fleet node `a` sets install_mirror without install_from",
            ),
            (
                "[nodes.a]\nmac = \"52:54:00:00:00:0a\"\nartifacts = \"w\"\nmode = \"install\"\ninstall_from = \"oci://r:5000/b@sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855\"\ninstall_mirror = \"10.0.0.5:5000\"\n",
                "fleet node `a`: install_mirror `10.0.0.5:5000` must be an http:// or https:// URL",
            ),
            (
                "[defaults]\ninstall_from = \"oci://r:5000/b@sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855\"\n\
                 [nodes.a]\nmac = \"52:54:00:00:00:0a\"\nartifacts = \"w\"\nmode = \"install\"\n",
                "[defaults] sets install_from",
            ),
        ] {
            let (_d, f) = fleet(text);
            let err = format!("{:#}", NodeTable::from_fleet(&f).unwrap_err());
            assert!(err.contains(want), "{text}: {err}");
        }
    }

    #[test]
    fn an_install_from_a_registry_takes_the_defaults_mirror() {
        let digest = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let (_d, f) = fleet(&format!(
            "[defaults]\ninstall_mirror = \"http://10.0.0.5:5000\"\n\
             [nodes.a]\nmac = \"52:54:00:00:00:0a\"\nartifacts = \"w\"\nmode = \"install\"\n\
             install_from = \"oci://registry.lan:5000/fleet/w@{digest}\"\n"
        ));
        let table = NodeTable::from_fleet(&f).unwrap();
        let Lookup::Known(node) = table.lookup(Mac::parse("52:54:00:00:00:0a").unwrap()) else {
            panic!("node a not found")
        };
        let install = node.install.unwrap();
        assert_eq!(
            install.from.as_deref(),
            Some(format!("oci://registry.lan:5000/fleet/w@{digest}").as_str())
        );
        assert_eq!(
            install.mirror.unwrap().to_string(),
            "registry.lan:5000=http://10.0.0.5:5000"
        );
    }
}

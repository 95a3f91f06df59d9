//! Roles and the tailnet access they get, read from data rather than
//! written in the tests: the roles from a project's profiles/*.toml, the
//! access from tests/fixtures/access-matrix.toml (beside the seed's ACL),
//! so a new role needs no Rust change.

use std::path::{Path, PathBuf};

use nodeforge::profile::Profile;
use nodeforge::tailnet::{allows, Policy};
use serde::Deserialize;

use super::{fixture, read_text};

/// A role: a profile that joins the tailnet under tags of its own
/// (`[tailscale] tags`). base.toml and node.toml, which the roles extend,
/// have none.
pub struct Role {
    pub file: PathBuf,
    pub profile: Profile,
}

impl Role {
    /// Its `role`, which names its profile file and its stack.
    pub fn role(&self) -> &str {
        &self.profile.role
    }

    pub fn tags(&self) -> &[String] {
        self.profile.tailscale.as_ref().map_or(&[], |t| &t.tags)
    }

    pub fn fleet(&self) -> Option<&str> {
        self.profile.tailscale.as_ref()?.fleet.as_deref()
    }
}

/// The profile files of `root`/profiles (lock files are not profiles).
pub fn profile_files(root: &Path) -> Vec<PathBuf> {
    let dir = root.join("profiles");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("listing {}: {e}", dir.display()))
        .map(|e| {
            e.unwrap_or_else(|e| panic!("listing {}: {e}", dir.display()))
                .path()
        })
        .filter(|f| {
            let name = f.to_string_lossy();
            name.ends_with(".toml") && !name.ends_with(".lock.toml")
        })
        .collect();
    files.sort();
    files
}

pub fn load_profile(file: &Path) -> Profile {
    nodeforge::profile::load(file).unwrap_or_else(|e| panic!("{}: {e:#}", file.display()))
}

/// The roles among `root`'s profiles, in file order.
pub fn roles(root: &Path) -> Vec<Role> {
    let roles: Vec<Role> = profile_files(root)
        .into_iter()
        .map(|file| Role {
            profile: load_profile(&file),
            file,
        })
        .filter(|r| !r.tags().is_empty())
        .collect();
    assert!(
        !roles.is_empty(),
        "no role profiles in {}/profiles",
        root.display()
    );
    roles
}

/// Every tag of `roles`.
pub fn tags(roles: &[Role]) -> Vec<String> {
    roles
        .iter()
        .flat_map(|r| r.tags().iter().cloned())
        .collect()
}

/// tests/fixtures/access-matrix.toml: which source reaches which role tag
/// on which ports; anything no row allows is denied.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessMatrix {
    /// Ports probed on every pair, besides those the rows name.
    ports: Vec<u16>,
    /// A source that is a person's device, not a tagged node.
    pub user: String,
    allow: Vec<Allow>,
    #[serde(skip)]
    path: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Allow {
    /// A tag, `*` (any source) or `fleet` (the other roles of the
    /// destination's fleet).
    src: String,
    /// A tag or `*` (any role tag).
    dst: String,
    /// None: every port.
    ports: Option<Vec<u16>>,
}

impl AccessMatrix {
    pub fn load() -> AccessMatrix {
        let path = fixture("access-matrix.toml");
        let mut m: AccessMatrix =
            toml::from_str(&read_text(&path)).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        m.path = path;
        m
    }

    /// The probed ports: the listed ones and every row's.
    pub fn ports(&self) -> Vec<u16> {
        let mut ports = self.ports.clone();
        ports.extend(self.allow.iter().flat_map(|a| a.ports.iter().flatten()));
        ports.sort();
        ports.dedup();
        ports
    }

    /// Whether the matrix lets `src` reach `dst` (a tag of `roles`) on `port`.
    pub fn expected(&self, roles: &[Role], src: &str, dst: &str, port: u16) -> bool {
        self.allow.iter().any(|a| a.allows(roles, src, dst, port))
    }

    /// Asserts that `policy` (`what` names it) gives each of `sources`
    /// exactly the matrix's access to each of `dsts` on the probed ports;
    /// returns how many of those the matrix allows.
    pub fn check(
        &self,
        policy: &Policy,
        what: &str,
        roles: &[Role],
        sources: &[String],
        dsts: &[String],
    ) -> usize {
        let mut allowed = 0;
        for src in sources {
            for dst in dsts {
                for port in self.ports() {
                    let want = self.expected(roles, src, dst, port);
                    let got = allows(policy, src, dst, port);
                    assert_eq!(
                        got,
                        want,
                        "{what}: {src} -> {dst}:{port} is {} but {} {} it; if the profiles' \
                         [tailscale] rules mean it, add a row there (README: Adding a role)",
                        if got { "allowed" } else { "denied" },
                        self.path.display(),
                        if want {
                            "allows"
                        } else {
                            "has no row allowing"
                        },
                    );
                    allowed += usize::from(want);
                }
            }
        }
        allowed
    }
}

impl AccessMatrix {
    /// Panics naming each row that allows nothing among `sources` ×
    /// `dsts` × the probed ports: a misspelt tag, or a role since gone.
    pub fn assert_every_row_used(&self, roles: &[Role], sources: &[String], dsts: &[String]) {
        let ports = self.ports();
        for a in &self.allow {
            let used = sources.iter().any(|s| {
                dsts.iter()
                    .any(|d| ports.iter().any(|p| a.allows(roles, s, d, *p)))
            });
            assert!(used, "{}: row {a:?} allows nothing", self.path.display());
        }
    }
}

impl Allow {
    fn allows(&self, roles: &[Role], src: &str, dst: &str, port: u16) -> bool {
        let src_ok = match self.src.as_str() {
            "*" => true,
            "fleet" => fleet_of(roles, dst).iter().any(|t| t == src),
            tag => tag == src,
        };
        src_ok
            && (self.dst == "*" || self.dst == dst)
            && self.ports.as_ref().is_none_or(|p| p.contains(&port))
    }
}

/// The tags of the roles in the fleet of the role tagged `tag` (profiles
/// naming the same `[tailscale] fleet`, or none), that role excepted.
fn fleet_of(roles: &[Role], tag: &str) -> Vec<String> {
    let Some(owner) = roles.iter().find(|r| r.tags().iter().any(|t| t == tag)) else {
        return Vec::new();
    };
    roles
        .iter()
        .filter(|r| r.fleet() == owner.fleet() && r.file != owner.file)
        .flat_map(|r| r.tags().iter().cloned())
        .collect()
}

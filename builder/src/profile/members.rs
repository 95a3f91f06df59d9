//! A profile's fleet: the roles whose nodes share its tailnet, read from
//! the profiles beside the file that declares `[tailnet]` (profiles/ for
//! the shipped roles, whichever directory a test profile extends from).
//! Their hostnames and MagicDNS names feed the templates (scrape targets,
//! the gateway's Loki URL), so no profile repeats another's hostname.

use std::fs;
use std::path::{Path, PathBuf};

use super::error::{ProfileError, ProfileErrors};
use super::resolve::load_alone;
use super::{FleetMember, Profile};

/// Loads `path` as [`load_alone`] does, then its fleet.
pub fn load(path: &Path) -> Result<Profile, ProfileErrors> {
    let mut p = load_alone(path)?;
    let found = members(&p);
    p.fleet = found.fleet;
    let Some(file) = p.tailnet.declared_in.clone() else {
        return Ok(p);
    };
    let broken = if found.broken.is_empty() {
        String::new()
    } else {
        format!(
            "; left out for their errors (run `nodeforge check` on them): {}",
            found
                .broken
                .iter()
                .map(|f| f.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    let mut errors = Vec::new();
    if let Some(role) = &p.tailnet.gateway {
        if !p.fleet.iter().any(|m| &m.role == role) {
            errors.push(ProfileError::whole_file(
                &file,
                format!(
                    "[tailnet] gateway is role `{role}`, but no profile of {}'s fleet beside this \
                     file has that role (roles: {}){broken}",
                    p.name,
                    p.fleet
                        .iter()
                        .map(|m| m.role.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
    }
    for role in p.tailnet.routes.keys() {
        if !found.roles.contains(role) {
            errors.push(ProfileError::whole_file(
                &file,
                format!(
                    "[tailnet.routes] names role `{role}`, but no profile beside this file has \
                     that role (roles: {}){broken}",
                    found.roles.join(", ")
                ),
            ));
        }
    }
    if errors.is_empty() {
        Ok(p)
    } else {
        Err(ProfileErrors(errors))
    }
}

/// What the profiles beside the `[tailnet]` file say about a profile's fleet.
struct Found {
    fleet: Vec<FleetMember>,
    /// Every role beside the file, of any fleet, sorted.
    roles: Vec<String>,
    /// Neighbours that did not load.
    broken: Vec<PathBuf>,
}

/// `p` itself and every other role of its fleet: profiles beside the
/// `[tailnet]` file with a `[tailscale]` table naming the same fleet (a
/// profile without one, such as node.toml, is of the unnamed fleet). A
/// neighbour with errors is left out here; `nodeforge check` reports it.
fn members(p: &Profile) -> Found {
    let fleet = p.tailscale.as_ref().and_then(|t| t.fleet.clone());
    let mut found = Found {
        fleet: vec![member(p, p)],
        roles: vec![p.role.clone()],
        broken: Vec::new(),
    };
    let Some(dir) = p.tailnet.declared_in.as_deref().and_then(Path::parent) else {
        return found;
    };
    for file in profile_files(dir) {
        let Ok(other) = load_alone(&file) else {
            found.broken.push(file);
            continue;
        };
        found.roles.push(other.role.clone());
        let same_fleet = other.tailscale.as_ref().is_some_and(|t| t.fleet == fleet);
        if same_fleet && other.role != p.role && !found.fleet.iter().any(|m| m.role == other.role) {
            found.fleet.push(member(p, &other));
        }
    }
    found.fleet.sort_by(|a, b| a.name.cmp(&b.name));
    found.roles.sort();
    found.roles.dedup();
    found
}

fn member(p: &Profile, of: &Profile) -> FleetMember {
    FleetMember {
        name: of.name.clone(),
        role: of.role.clone(),
        hostname: of.hostname.clone(),
        fqdn: p
            .tailnet
            .domain
            .as_ref()
            .map(|d| format!("{}.{d}", of.hostname)),
        tags: of
            .tailscale
            .as_ref()
            .map(|t| t.tags.clone())
            .unwrap_or_default(),
        node_exporter: of
            .all_packages()
            .iter()
            .any(|p| p == "prometheus-node-exporter"),
    }
}

/// The profile files of `dir` (lock files are not profiles).
fn profile_files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|f| {
            f.is_file()
                && f.extension().is_some_and(|x| x == "toml")
                && !f.to_string_lossy().ends_with(".lock.toml")
        })
        .collect();
    files.sort();
    files
}

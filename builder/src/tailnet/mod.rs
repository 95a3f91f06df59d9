//! The tailnet side of roles: the policy file generated from the profiles
//! and auth keys minted through Tailscale's API.

pub mod api;
pub mod policy;
#[cfg(any(test, feature = "test-support"))]
pub mod testapi;

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::profile::{self, Profile};

pub use policy::{allows, generate, Policy};

/// The profile files `paths` name: each directory's `*.toml` files (sorted;
/// lock files beside them are not profiles), each file itself.
pub fn profile_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut found: Vec<PathBuf> = fs::read_dir(p)
                .with_context(|| format!("reading profiles directory {}", p.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| f.is_file() && f.extension().is_some_and(|x| x == "toml"))
                .filter(|f| !f.to_string_lossy().ends_with(".lock.toml"))
                .collect();
            found.sort();
            files.extend(found);
        } else if p.is_file() {
            files.push(p.clone());
        } else {
            bail!("{}: no such profile or profiles directory", p.display());
        }
    }
    Ok(files)
}

/// Loads every profile `paths` name; all profiles' errors are reported
/// together.
pub fn load_profiles(paths: &[PathBuf]) -> Result<Vec<Profile>> {
    let mut profiles = Vec::new();
    let mut errors = Vec::new();
    for f in profile_files(paths)? {
        match profile::load(&f) {
            Ok(p) => profiles.push(p),
            Err(e) => errors.push(e.to_string()),
        }
    }
    if !errors.is_empty() {
        bail!(
            "{}\n{} profiles have errors (`nodeforge check` shows the same)",
            errors.join("\n"),
            errors.len()
        );
    }
    Ok(profiles)
}

/// The profile of `role` among `profiles`: the one named so, else the only
/// one whose `role` is so.
pub fn find_role<'a>(profiles: &'a [Profile], role: &str) -> Result<&'a Profile> {
    if let Some(p) = profiles.iter().find(|p| p.name == role) {
        return Ok(p);
    }
    let by_role: Vec<&Profile> = profiles.iter().filter(|p| p.role == role).collect();
    match by_role.as_slice() {
        [one] => Ok(one),
        [] => bail!(
            "no profile has name or role `{role}` (roles: {})",
            profiles
                .iter()
                .map(|p| p.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        many => bail!(
            "several profiles have role `{role}` ({}): name one of them",
            many.iter()
                .map(|p| p.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// The tags a role's nodes join with.
pub fn role_tags(p: &Profile) -> Result<Vec<String>> {
    match &p.tailscale {
        Some(t) if !t.tags.is_empty() => Ok(t.tags.clone()),
        _ => bail!(
            "profile `{}` has no [tailscale] tags: add e.g. tags = [\"tag:{}\"]",
            p.name,
            p.role
        ),
    }
}

/// Writes the policy for `paths`' profiles to `out` (atomically), or
/// returns its text when `out` is None.
pub fn write_policy(paths: &[PathBuf], out: Option<&Path>) -> Result<String> {
    let profiles = load_profiles(paths)?;
    let policy = generate(&profiles)?;
    let sources: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    let text = policy.render(&sources);
    if let Some(out) = out {
        crate::fsutil::atomic_write(out, text.as_bytes())
            .with_context(|| format!("writing the tailnet policy to {}", out.display()))?;
    }
    Ok(text)
}

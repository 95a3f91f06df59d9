//! The `[apt]` table: third-party repositories, each with a signing key
//! whose fingerprint is checked here (so `nodeforge check` catches a wrong
//! key), and local .deb directories.

use std::fs;
use std::path::PathBuf;

use toml::Spanned;

use super::error::ProfileError;
use super::file::{AptFile, RepositoryFile};
use super::validate::FileCtx;
use super::{Apt, AptRepository};
use crate::apt::openpgp;

/// Adds `file`'s sources to `apt`; a repository with the name of an
/// inherited one replaces it.
pub fn merge(ctx: &FileCtx, file: &AptFile, apt: &mut Apt, errors: &mut Vec<ProfileError>) {
    for r in &file.repositories {
        if let Some(repo) = repository(ctx, r, errors) {
            apt.repositories.retain(|x| x.name != repo.name);
            apt.repositories.push(repo);
        }
    }
    for l in &file.local {
        match find(ctx, &l.path) {
            Ok(dir) if dir.is_dir() => {
                let debs = crate::apt::local::debs_in(&dir).unwrap_or_default();
                if debs.is_empty() {
                    errors.push(ctx.error_at(
                        &l.path,
                        format!("local apt directory {} holds no .deb files", dir.display()),
                    ));
                } else if !apt.local.contains(&dir) {
                    apt.local.push(dir);
                }
            }
            Ok(other) => errors.push(ctx.error_at(
                &l.path,
                format!("local apt path {} is not a directory", other.display()),
            )),
            Err(e) => errors.push(e),
        }
    }
}

fn repository(
    ctx: &FileCtx,
    r: &RepositoryFile,
    errors: &mut Vec<ProfileError>,
) -> Option<AptRepository> {
    let before = errors.len();
    let name = r.name.get_ref();
    if !valid_name(name) {
        errors.push(ctx.error_at(&r.name, format!("repository name `{name}` must be lowercase letters, digits, `-`, `_` or `.` (it names files in /etc/apt)")));
    }
    let url = r.url.get_ref();
    if !(url.starts_with("http://") || url.starts_with("https://") || url.starts_with("file:/"))
        || url.contains(char::is_whitespace)
    {
        errors.push(ctx.error_at(
            &r.url,
            format!("repository `{name}`: url `{url}` must be an http://, https:// or file:/ URL"),
        ));
    }
    let suite = r.suite.get_ref();
    let flat = suite.ends_with('/');
    if suite.is_empty() || suite.contains(char::is_whitespace) {
        errors.push(ctx.error_at(&r.suite, format!("repository `{name}`: suite `{suite}` must be one word (or a flat repository's path ending in `/`)")));
    } else if flat && !r.components.is_empty() {
        errors.push(ctx.error_at(&r.suite, format!("repository `{name}`: a flat repository (suite `{suite}`) has no components: remove `components`")));
    } else if !flat && r.components.is_empty() {
        errors.push(ctx.error_at(&r.suite, format!("repository `{name}`: add components, e.g. components = [\"main\"] (or end the suite with `/` for a flat repository)")));
    }
    for c in &r.components {
        let v = c.get_ref();
        if v.is_empty()
            || !v
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || "-_./".contains(ch))
        {
            errors.push(ctx.error_at(
                c,
                format!("repository `{name}`: component `{v}` is not a component name"),
            ));
        }
    }
    let Some(key) = &r.key else {
        errors.push(ctx.error_at(
            &r.name,
            format!(
                "repository `{name}` is unsigned (no `key`): nodeforge refuses unsigned repositories — \
                 add key = \"keys/{name}.asc\" (the vendor's public key) and its fingerprint"
            ),
        ));
        return None;
    };
    let path = match find(ctx, key) {
        Ok(p) => p,
        Err(e) => {
            errors.push(e);
            return None;
        }
    };
    let found = match fs::read(&path)
        .map_err(|e| e.to_string())
        .and_then(|data| openpgp::primary_fingerprints(&data).map_err(|e| e.to_string()))
    {
        Ok(f) => f,
        Err(e) => {
            errors.push(ctx.error_at(
                key,
                format!("repository `{name}`: key file {}: {e}", path.display()),
            ));
            return None;
        }
    };
    let Some(declared) = &r.fingerprint else {
        errors.push(ctx.error_at(
            key,
            format!(
                "repository `{name}`: add fingerprint = \"…\" (the vendor's published fingerprint of this key); \
                 the file holds {}",
                found.join(", ")
            ),
        ));
        return None;
    };
    let Some(fpr) = openpgp::normalize_fingerprint(declared.get_ref()) else {
        errors.push(ctx.error_at(
            declared,
            format!(
                "repository `{name}`: fingerprint `{}` is not 40 hex digits",
                declared.get_ref()
            ),
        ));
        return None;
    };
    if found != [fpr.clone()] {
        let msg = if found.contains(&fpr) {
            format!(
                "repository `{name}`: key file {} holds {} keys ({}); apt would trust all of them: keep only {fpr}",
                path.display(),
                found.len(),
                found.join(", ")
            )
        } else {
            format!(
                "repository `{name}`: wrong key: {} has fingerprint {}, not the declared {fpr} — \
                 get the key from the vendor again or fix the fingerprint",
                path.display(),
                found.join(", ")
            )
        };
        errors.push(ctx.error_at(declared, msg));
        return None;
    }
    (errors.len() == before).then(|| AptRepository {
        name: name.clone(),
        url: url.trim_end_matches('/').to_owned(),
        suite: suite.clone(),
        components: r.components.iter().map(|c| c.get_ref().clone()).collect(),
        key: path,
        fingerprint: fpr,
    })
}

fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 64
        && n.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && n.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c))
}

/// A file the profile names: relative to the profile's folder, else to
/// the project root (the folder above `profiles/`).
fn find(ctx: &FileCtx, value: &Spanned<String>) -> Result<PathBuf, ProfileError> {
    let v = value.get_ref();
    let mut candidates = vec![ctx.dir().join(v)];
    if let Some(root) = ctx.dir().parent() {
        candidates.push(root.join(v));
    }
    if v.starts_with('/') {
        candidates.truncate(1);
    }
    candidates
        .iter()
        .find(|p| p.exists())
        .cloned()
        .ok_or_else(|| {
            ctx.error_at(
                value,
                format!(
                    "`{v}` not found (looked for {})",
                    candidates
                        .iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )
        })
}

//! The `[apt]` table: third-party repositories, each with a signing key
//! whose fingerprint is checked here (so `nodeforge check` catches a wrong
//! key), and local .deb directories.

use std::fs;
use std::path::PathBuf;

use toml::Spanned;

use super::error::ProfileError;
use super::file::{AptFile, RepositoryFile};
use super::validate::FileCtx;
use super::{Apt, AptRepository, RepoKey};
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
    let url = resolve_url(ctx, r.url.get_ref());
    if !(url.starts_with("http://") || url.starts_with("https://") || url.starts_with("file:/"))
        || url.contains(char::is_whitespace)
    {
        errors.push(ctx.error_at(
            &r.url,
            format!(
                "repository `{name}`: url `{}` must be an http://, https:// or file: URL",
                r.url.get_ref()
            ),
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
    let (key, key_url) = match (&r.key, &r.key_url) {
        (Some(k), None) => (k, None),
        (None, Some(u)) => (u, Some(u)),
        (Some(_), Some(u)) => {
            errors.push(ctx.error_at(
                u,
                format!("repository `{name}`: give `key` (a file) or `key_url`, not both"),
            ));
            return None;
        }
        (None, None) => {
            errors.push(ctx.error_at(
                &r.name,
                format!(
                    "repository `{name}` is unsigned (no `key`): nodeforge refuses unsigned repositories — \
                     add key = \"keys/{name}.asc\" (the vendor's public key) or key_url = \"https://…\", \
                     and the key's fingerprint"
                ),
            ));
            return None;
        }
    };
    if let Some(u) = key_url {
        return key_from_url(ctx, r, name, u, &url, errors, before);
    }
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
    let fpr = declared_fingerprint(ctx, name, declared, errors)?;
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
        key: RepoKey::File(path),
        fingerprint: fpr,
    })
}

/// A repository whose key is fetched from `key_url` at build time: only
/// the URL's form and the declared fingerprint can be checked here.
fn key_from_url(
    ctx: &FileCtx,
    r: &RepositoryFile,
    name: &str,
    key_url: &Spanned<String>,
    url: &str,
    errors: &mut Vec<ProfileError>,
    before: usize,
) -> Option<AptRepository> {
    let u = key_url.get_ref();
    if !(u.starts_with("https://") || u.starts_with("http://")) || u.contains(char::is_whitespace) {
        errors.push(ctx.error_at(
            key_url,
            format!("repository `{name}`: key_url `{u}` must be an https:// (or http://) URL"),
        ));
        return None;
    }
    let Some(declared) = &r.fingerprint else {
        errors.push(ctx.error_at(
            key_url,
            format!(
                "repository `{name}`: a key from key_url needs fingerprint = \"…\" (the vendor's \
                 published fingerprint): the build refuses any other key"
            ),
        ));
        return None;
    };
    let fpr = declared_fingerprint(ctx, name, declared, errors)?;
    (errors.len() == before).then(|| AptRepository {
        name: name.to_owned(),
        url: url.trim_end_matches('/').to_owned(),
        suite: r.suite.get_ref().clone(),
        components: r.components.iter().map(|c| c.get_ref().clone()).collect(),
        key: RepoKey::Url(u.clone()),
        fingerprint: fpr,
    })
}

/// `file:` followed by a relative path names a folder relative to the
/// profile's own (apt needs it absolute); other URLs stay as written.
fn resolve_url(ctx: &FileCtx, url: &str) -> String {
    match url.strip_prefix("file:") {
        Some(rest) if !rest.starts_with('/') && !rest.is_empty() => {
            let dir = ctx.dir().join(rest);
            let abs = std::path::absolute(&dir).unwrap_or(dir);
            // Lexically: the folder may not exist yet (a test writes it).
            let mut clean = PathBuf::new();
            for c in abs.components() {
                match c {
                    std::path::Component::ParentDir => {
                        clean.pop();
                    }
                    std::path::Component::CurDir => {}
                    other => clean.push(other),
                }
            }
            format!("file:{}", clean.display())
        }
        _ => url.to_owned(),
    }
}

/// The declared fingerprint, normalized; an error at its line otherwise.
fn declared_fingerprint(
    ctx: &FileCtx,
    name: &str,
    declared: &Spanned<String>,
    errors: &mut Vec<ProfileError>,
) -> Option<String> {
    let fpr = openpgp::normalize_fingerprint(declared.get_ref());
    if fpr.is_none() {
        errors.push(ctx.error_at(
            declared,
            format!(
                "repository `{name}`: fingerprint `{}` is not 40 hex digits",
                declared.get_ref()
            ),
        ));
    }
    fpr
}

fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 64
        && n.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && n.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c))
}

/// `[update] key`: the file's OpenSSH ed25519 public key line, checked.
pub(super) fn release_key(
    ctx: &FileCtx,
    key: &Spanned<String>,
    errors: &mut Vec<ProfileError>,
) -> Option<String> {
    let path = match find(ctx, key) {
        Ok(p) => p,
        Err(e) => {
            errors.push(e);
            return None;
        }
    };
    let parsed = fs::read_to_string(&path)
        .map_err(|e| format!("[update] key {}: {e}", path.display()))
        .and_then(|text| {
            nodeforge_release::parse_public_key(&text, &format!("[update] key {}", path.display()))
                .map_err(|e| e.to_string())
        });
    match parsed.and_then(|k| k.to_openssh().map_err(|e| e.to_string())) {
        Ok(line) => Some(line),
        Err(e) => {
            errors.push(ctx.error_at(key, e));
            None
        }
    }
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

//! Extra apt sources for the rootfs: signed third-party repositories and
//! local .deb directories. mmdebstrap gets them as extra sources.list
//! lines pointing at files on the build host; the image keeps the
//! repositories (key under /etc/apt/keyrings, a deb822 .sources file) and
//! drops the host-only lines.

pub mod local;
pub mod openpgp;

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::fsutil;
use crate::profile::{Apt, AptRepository};

/// Folder (in the build cache) of the host-side keyrings and local
/// repositories; sources lines that name it are dropped from the image.
pub const HOST_DIR: &str = "nodeforge-apt";

/// The repository's key in binary form (what apt's signed-by reads),
/// checked once more against the declared fingerprint: the file may have
/// changed since the profile was loaded.
pub fn keyring(repo: &AptRepository) -> Result<Vec<u8>> {
    let data = fs::read(&repo.key).with_context(|| {
        format!(
            "reading the key of repository `{}` from {}",
            repo.name,
            repo.key.display()
        )
    })?;
    let fprs = openpgp::primary_fingerprints(&data).with_context(|| {
        format!(
            "key file {} of repository `{}`",
            repo.key.display(),
            repo.name
        )
    })?;
    if fprs != [repo.fingerprint.clone()] {
        bail!(
            "repository `{}`: {} now has fingerprint {}, not {}",
            repo.name,
            repo.key.display(),
            fprs.join(", "),
            repo.fingerprint
        );
    }
    Ok(openpgp::dearmor(&data)?)
}

/// A one-line sources.list entry for `repo` with its keyring at `keyring`.
pub fn source_line(repo: &AptRepository, keyring: &Path) -> String {
    let mut line = format!(
        "deb [signed-by={}] {} {}",
        keyring.display(),
        repo.url,
        repo.suite
    );
    for c in &repo.components {
        line.push(' ');
        line.push_str(c);
    }
    line
}

/// Where the image keeps a repository's key.
pub fn image_keyring(repo: &AptRepository) -> String {
    format!("/etc/apt/keyrings/{}.gpg", repo.name)
}

/// The image's deb822 `/etc/apt/sources.list.d/<name>.sources`.
pub fn deb822(repo: &AptRepository) -> String {
    let mut s = format!(
        "# From nodeforge profile; key fingerprint {}\nTypes: deb\nURIs: {}\nSuites: {}\n",
        repo.fingerprint, repo.url, repo.suite
    );
    if !repo.components.is_empty() {
        s.push_str(&format!("Components: {}\n", repo.components.join(" ")));
    }
    s.push_str(&format!("Signed-By: {}\n", image_keyring(repo)));
    s
}

/// Writes keyrings and local repositories under `cache_dir/nodeforge-apt/`
/// and returns the extra mirror lines for mmdebstrap.
pub fn prepare(cache_dir: &Path, apt: &Apt) -> Result<Vec<String>> {
    let mut lines = Vec::new();
    if apt.repositories.is_empty() && apt.local.is_empty() {
        return Ok(lines);
    }
    // apt reads signed-by and file: paths as they are: they must be absolute.
    let host = std::path::absolute(cache_dir)
        .with_context(|| format!("resolving {}", cache_dir.display()))?
        .join(HOST_DIR);
    fs::create_dir_all(host.join("keys"))
        .with_context(|| format!("creating {}", host.display()))?;
    for repo in &apt.repositories {
        let path = host.join("keys").join(format!("{}.gpg", repo.fingerprint));
        fsutil::atomic_write(&path, &keyring(repo)?)?;
        lines.push(source_line(repo, &path));
    }
    for dir in &apt.local {
        let hash = local::content_hash(dir)?;
        let repo = host.join(format!("local-{}", &hash[..16]));
        local::build_repo(dir, &repo)
            .with_context(|| format!("indexing local packages in {}", dir.display()))?;
        lines.push(local_line(&repo));
    }
    Ok(lines)
}

/// Local packages are trusted as they are: they come from the profile's
/// own tree, not from a network.
pub fn local_line(repo: &Path) -> String {
    format!("deb [trusted=yes] file:{} ./", repo.display())
}

/// In the unpacked rootfs: drops the host-only sources lines mmdebstrap
/// wrote and installs each repository's key and .sources file, so the
/// node keeps updating from them.
pub fn install_in_image(rootfs: &Path, apt: &Apt) -> Result<()> {
    let etc_apt = rootfs.join("etc/apt");
    let mut lists: Vec<PathBuf> = vec![etc_apt.join("sources.list")];
    if let Ok(entries) = fs::read_dir(etc_apt.join("sources.list.d")) {
        lists.extend(
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "list")),
        );
    }
    let marker = format!("/{HOST_DIR}/");
    for list in lists.iter().filter(|l| l.is_file()) {
        let text =
            fs::read_to_string(list).with_context(|| format!("reading {}", list.display()))?;
        if text.contains(&marker) {
            let kept: String = text
                .lines()
                .filter(|l| !l.contains(&marker))
                .map(|l| format!("{l}\n"))
                .collect();
            fs::write(list, kept).with_context(|| format!("writing {}", list.display()))?;
        }
    }
    for repo in &apt.repositories {
        let key = rootfs.join(image_keyring(repo).trim_start_matches('/'));
        let sources = etc_apt.join(format!("sources.list.d/{}.sources", repo.name));
        for dir in [key.parent(), sources.parent()].into_iter().flatten() {
            fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        fs::write(&key, keyring(repo)?).with_context(|| format!("writing {}", key.display()))?;
        fs::write(&sources, deb822(repo))
            .with_context(|| format!("writing {}", sources.display()))?;
    }
    Ok(())
}

/// What of the sources shapes the rootfs (for its cache key): repositories
/// with their key fingerprints, local directories by content. None when
/// there are none, so keys of profiles without extra sources stay as they
/// were.
pub fn cache_key_part(apt: &Apt) -> Result<Option<serde_json::Value>> {
    if apt.repositories.is_empty() && apt.local.is_empty() {
        return Ok(None);
    }
    let repos: Vec<serde_json::Value> = apt
        .repositories
        .iter()
        .map(|r| {
            serde_json::json!({
                "name": r.name, "url": r.url, "suite": r.suite,
                "components": r.components, "fingerprint": r.fingerprint,
            })
        })
        .collect();
    let mut locals = Vec::new();
    for dir in &apt.local {
        locals.push(local::content_hash(dir)?);
    }
    Ok(Some(
        serde_json::json!({ "repositories": repos, "local": locals }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo(key: PathBuf, fpr: &str) -> AptRepository {
        AptRepository {
            name: "nvidia-container-toolkit".into(),
            url: "https://nvidia.github.io/libnvidia-container/stable/deb/amd64".into(),
            suite: "/".into(),
            components: vec![],
            key,
            fingerprint: fpr.into(),
        }
    }

    #[test]
    fn lines_and_sources_files() {
        let r = repo("k.asc".into(), "AB");
        assert_eq!(
            source_line(&r, Path::new("/c/nodeforge-apt/keys/AB.gpg")),
            "deb [signed-by=/c/nodeforge-apt/keys/AB.gpg] https://nvidia.github.io/libnvidia-container/stable/deb/amd64 /"
        );
        let d = deb822(&r);
        assert!(
            d.contains("Suites: /\n") && !d.contains("Components"),
            "{d}"
        );
        assert!(d.contains("Signed-By: /etc/apt/keyrings/nvidia-container-toolkit.gpg\n"));
    }

    #[test]
    fn image_keeps_repositories_and_loses_host_lines() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("k.asc");
        fs::write(&key, include_str!("../../tests/fixtures/test-repo-key.asc")).unwrap();
        let fpr = include_str!("../../tests/fixtures/test-repo-key.fpr").trim();
        let apt = Apt {
            repositories: vec![repo(key, fpr)],
            local: vec![],
        };
        let root = dir.path().join("root");
        fs::create_dir_all(root.join("etc/apt")).unwrap();
        let host_line = source_line(
            &apt.repositories[0],
            Path::new("/var/cache/x/nodeforge-apt/keys/K.gpg"),
        );
        fs::write(
            root.join("etc/apt/sources.list"),
            format!("deb http://deb.debian.org/debian trixie main\n{host_line}\ndeb [trusted=yes] file:/c/nodeforge-apt/local-1 ./\n"),
        )
        .unwrap();
        install_in_image(&root, &apt).unwrap();
        assert_eq!(
            fs::read_to_string(root.join("etc/apt/sources.list")).unwrap(),
            "deb http://deb.debian.org/debian trixie main\n"
        );
        let keyring = fs::read(root.join("etc/apt/keyrings/nvidia-container-toolkit.gpg")).unwrap();
        assert_eq!(
            openpgp::primary_fingerprints(&keyring).unwrap(),
            vec![fpr.to_owned()]
        );
        assert!(root
            .join("etc/apt/sources.list.d/nvidia-container-toolkit.sources")
            .is_file());
    }

    #[test]
    fn a_key_replaced_after_checking_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("k.asc");
        fs::write(&key, include_str!("../../tests/fixtures/test-repo-key.asc")).unwrap();
        let r = repo(key, "0000000000000000000000000000000000000000");
        let err = keyring(&r).unwrap_err().to_string();
        assert!(err.contains("not 0000"), "{err}");
    }
}

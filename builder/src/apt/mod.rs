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
use crate::profile::{Apt, AptRepository, RepoKey};

/// Folder (in the build cache) of the host-side keyrings and local
/// repositories; sources lines that name it are dropped from the image.
pub const HOST_DIR: &str = "nodeforge-apt";

/// The repository's key in binary form (what apt's signed-by reads),
/// checked once more against the declared fingerprint: a key file may
/// have changed since the profile was loaded, and a key from `key_url` is
/// fetched into `cache_dir` once and checked on every use.
pub fn keyring(repo: &AptRepository, cache_dir: &Path) -> Result<Vec<u8>> {
    let (data, from) = match &repo.key {
        RepoKey::File(path) => {
            let data = fs::read(path).with_context(|| {
                format!(
                    "reading the key of repository `{}` from {}",
                    repo.name,
                    path.display()
                )
            })?;
            (data, path.display().to_string())
        }
        RepoKey::Url(url) => fetched_key(repo, url, cache_dir)?,
    };
    let fprs = openpgp::primary_fingerprints(&data)
        .with_context(|| format!("key {from} of repository `{}`", repo.name))?;
    if fprs != [repo.fingerprint.clone()] {
        bail!(
            "repository `{}`: the key {from} has fingerprint {}, not the declared {}: \
             refusing it (if the vendor rotated its key, check the new fingerprint and declare it)",
            repo.name,
            fprs.join(", "),
            repo.fingerprint
        );
    }
    Ok(openpgp::dearmor(&data)?)
}

/// The key at `url`, from the cache when an earlier build fetched it.
/// Stored under the declared fingerprint only after it matched, so a
/// wrong key is fetched again (and refused again) rather than kept.
fn fetched_key(repo: &AptRepository, url: &str, cache_dir: &Path) -> Result<(Vec<u8>, String)> {
    let dir = cache_dir.join(HOST_DIR).join("fetched-keys");
    let path = dir.join(format!("{}.key", repo.fingerprint));
    if let Ok(data) = fs::read(&path) {
        return Ok((data, format!("{} (fetched from {url})", path.display())));
    }
    let data = http_get(url).with_context(|| {
        format!(
            "fetching the key of repository `{}` from {url} (or download it yourself, check its \
             fingerprint and set key = \"keys/{}.asc\")",
            repo.name, repo.name
        )
    })?;
    let fprs = openpgp::primary_fingerprints(&data)
        .with_context(|| format!("the key fetched from {url} for repository `{}`", repo.name))?;
    if fprs == [repo.fingerprint.clone()] {
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        fsutil::atomic_write(&path, &data)?;
    }
    Ok((data, format!("fetched from {url}")))
}

/// GET `url`'s body. Errors leave the URL out (it may carry a password):
/// callers name what they fetched. A server that does not answer costs
/// seconds, not minutes.
pub(crate) fn http_get(url: &str) -> Result<Vec<u8>> {
    let client = reqwest::blocking::Client::builder()
        .connect_timeout(std::time::Duration::from_secs(5))
        .timeout(std::time::Duration::from_secs(60))
        .user_agent(concat!("nodeforge/", env!("CARGO_PKG_VERSION")))
        .build()
        .context("setting up an HTTP client")?;
    let resp = client
        .get(url)
        .send()
        .and_then(|r| r.error_for_status())
        .map_err(reqwest::Error::without_url)?;
    Ok(resp.bytes().map_err(reqwest::Error::without_url)?.to_vec())
}

/// A one-line sources.list entry for `repo` with its keyring at `keyring`.
pub fn source_line(repo: &AptRepository, keyring: &Path) -> String {
    let mut line = format!(
        "deb [signed-by={}] {} {}",
        keyring.display(),
        host_url(&repo.url),
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
        fsutil::atomic_write(&path, &keyring(repo, cache_dir)?)?;
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
    format!("deb [trusted=yes] copy:{} ./", repo.display())
}

/// apt's `file:` method uses packages where they lie, a path that
/// mmdebstrap's chrooted dpkg cannot see; `copy:` (the same otherwise)
/// copies them into the chroot's archive cache first.
fn host_url(url: &str) -> String {
    match url.strip_prefix("file:") {
        Some(path) => format!("copy:{path}"),
        None => url.to_owned(),
    }
}

/// In the unpacked rootfs: drops the host-only sources lines mmdebstrap
/// wrote and installs each repository's key and .sources file, so the
/// node keeps updating from them.
pub fn install_in_image(rootfs: &Path, apt: &Apt, cache_dir: &Path) -> Result<()> {
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
        fs::write(&key, keyring(repo, cache_dir)?)
            .with_context(|| format!("writing {}", key.display()))?;
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
            let mut v = serde_json::json!({
                "name": r.name, "url": r.url, "suite": r.suite,
                "components": r.components, "fingerprint": r.fingerprint,
            });
            // A repository on this machine is keyed by what it serves: a
            // rebuilt local repository must not reuse an older tree.
            if let Some(index) = local_release(r) {
                v["release"] = fsutil::sha256_bytes(&index).into();
            }
            v
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

/// The signed index of a `file:` repository, when there is one.
fn local_release(repo: &AptRepository) -> Option<Vec<u8>> {
    let dir = Path::new(repo.url.strip_prefix("file:")?);
    let dists = if repo.suite.ends_with('/') {
        dir.join(&repo.suite)
    } else {
        dir.join("dists").join(&repo.suite)
    };
    ["InRelease", "Release"]
        .iter()
        .find_map(|n| fs::read(dists.join(n)).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURE_KEY: &str = include_str!("../../tests/fixtures/test-repo-key.asc");

    fn fixture_fpr() -> &'static str {
        include_str!("../../tests/fixtures/test-repo-key.fpr").trim()
    }

    fn repo(key: PathBuf, fpr: &str) -> AptRepository {
        AptRepository {
            name: "nvidia-container-toolkit".into(),
            url: "https://nvidia.github.io/libnvidia-container/stable/deb/amd64".into(),
            suite: "/".into(),
            components: vec![],
            key: RepoKey::File(key),
            fingerprint: fpr.into(),
        }
    }

    /// Serves `body` to every GET on 127.0.0.1 and counts the requests.
    fn serve(body: &'static str) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        use std::io::{Read, Write};
        use std::sync::atomic::{AtomicUsize, Ordering};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/key.asc", listener.local_addr().unwrap());
        let hits = std::sync::Arc::new(AtomicUsize::new(0));
        let counter = hits.clone();
        std::thread::spawn(move || {
            for mut conn in listener.incoming().flatten() {
                let mut buf = [0u8; 4096];
                let _ = conn.read(&mut buf);
                counter.fetch_add(1, Ordering::SeqCst);
                let _ = write!(
                    conn,
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        (url, hits)
    }

    #[test]
    fn a_key_from_its_url_is_fetched_once_and_checked() {
        use std::sync::atomic::Ordering;
        let cache = tempfile::tempdir().unwrap();
        let (url, hits) = serve(FIXTURE_KEY);
        let r = AptRepository {
            key: RepoKey::Url(url.clone()),
            ..repo(PathBuf::new(), fixture_fpr())
        };
        let first = keyring(&r, cache.path()).unwrap();
        assert_eq!(
            openpgp::primary_fingerprints(&first).unwrap(),
            [fixture_fpr()]
        );
        let again = keyring(&r, cache.path()).unwrap();
        assert_eq!(first, again);
        assert_eq!(
            hits.load(Ordering::SeqCst),
            1,
            "fetched once, then from the cache"
        );

        // Another declared fingerprint: refused, named, and not cached.
        let wrong = AptRepository {
            fingerprint: "2596A99EAAB33821893C0A79458CA832957F5868".into(),
            ..r.clone()
        };
        let err = format!("{:#}", keyring(&wrong, cache.path()).unwrap_err());
        assert!(err.contains(&url), "{err}");
        assert!(err.contains("not the declared 2596A99E"), "{err}");
        assert!(err.contains(fixture_fpr()), "{err}");
        let again = format!("{:#}", keyring(&wrong, cache.path()).unwrap_err());
        assert!(again.contains("not the declared 2596A99E"), "{again}");
        assert_eq!(
            hits.load(Ordering::SeqCst),
            3,
            "a refused key is never kept"
        );
    }

    #[test]
    fn an_unreachable_key_url_says_how_to_do_without_it() {
        let cache = tempfile::tempdir().unwrap();
        let r = AptRepository {
            name: "tailscale".into(),
            key: RepoKey::Url("http://127.0.0.1:9/nothing.gpg".into()),
            ..repo(PathBuf::new(), fixture_fpr())
        };
        let err = format!("{:#}", keyring(&r, cache.path()).unwrap_err());
        assert!(err.contains("http://127.0.0.1:9/nothing.gpg"), "{err}");
        assert!(err.contains("keys/tailscale.asc"), "{err}");
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
        let (dir, key) = crate::testutil::scratch_file("k.asc", FIXTURE_KEY);
        let fpr = fixture_fpr();
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
        install_in_image(&root, &apt, dir.path()).unwrap();
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
        let (dir, key) = crate::testutil::scratch_file("k.asc", FIXTURE_KEY);
        let r = repo(key, "0000000000000000000000000000000000000000");
        let err = keyring(&r, dir.path()).unwrap_err().to_string();
        assert!(err.contains("not the declared 0000"), "{err}");
    }
}

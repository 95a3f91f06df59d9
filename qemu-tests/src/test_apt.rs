//! The local signed apt repository that stands in for Tailscale's: the
//! test profiles point the `tailscale` repository entry of
//! profiles/node.toml at it (qemu-tests/profiles/fragments/tailscale-test-repo.toml),
//! so a test image is built as a user's is, with a package of the real
//! name, version scheme, paths and unit, for amd64 and arm64. The CLI is
//! firstboot/testdata/tailscale-standin; the daemon, its MagicDNS
//! resolver and the unit are in qemu-tests/standins/tailscale. The
//! package also carries the stand-in control server's netmap
//! ([`crate::control`]): the fleet's nodes, MagicDNS and packet filters.
//!
//! Laid out like the real one (dists/trixie/main/binary-ARCH, pool/),
//! its Release signed inline (InRelease) with the committed test key
//! qemu-tests/fixtures/test-apt-key.* (tests only).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{Context, Result};
use nodeforge::exec::Cmd;
use nodeforge::fsutil::sha256_bytes;

use crate::workspace_root;

/// The stand-in's version: the real client's scheme, marked as ours.
pub const VERSION: &str = "1.90.0~nodeforge1";
const ARCHES: &[&str] = &["amd64", "arm64"];
const SUITE: &str = "trixie";

/// Where the repository is written (the fragment's `url` names it).
pub fn repo_dir() -> PathBuf {
    workspace_root().join("target/qemu-tests/test-apt/tailscale")
}

fn standins() -> PathBuf {
    workspace_root().join("qemu-tests/standins/tailscale")
}

/// Writes the repository unless it is there from this same source.
/// Every boot test that builds an image calls it first.
pub fn ensure() -> Result<PathBuf> {
    static ONCE: Mutex<bool> = Mutex::new(false);
    let mut done = ONCE.lock().unwrap_or_else(|e| e.into_inner());
    let repo = repo_dir();
    if *done {
        return Ok(repo);
    }
    let stamp = source_hash()?;
    let stamp_file = repo.join(".source");
    if fs::read_to_string(&stamp_file).ok().as_deref() != Some(stamp.as_str()) {
        let _ = fs::remove_dir_all(&repo);
        write(&repo)
            .with_context(|| format!("writing the stand-in repository {}", repo.display()))?;
        fs::write(&stamp_file, &stamp)?;
    }
    *done = true;
    Ok(repo)
}

/// The package's files: path in the package, content, mode.
fn package_files() -> Result<Vec<(&'static str, Vec<u8>, u32)>> {
    let standin = |name: &str| {
        let p = standins().join(name);
        fs::read(&p).with_context(|| format!("reading {}", p.display()))
    };
    let netmap = crate::control::netmap()?;
    let underlay = underlay_network(&netmap)?;
    Ok(vec![
        (
            "usr/bin/tailscale",
            nodeforge_firstboot::TAILSCALE_STANDIN.as_bytes().to_vec(),
            0o755,
        ),
        ("usr/sbin/tailscaled", standin("tailscaled")?, 0o755),
        (
            "usr/lib/systemd/system/tailscaled.service",
            standin("tailscaled.service")?,
            0o644,
        ),
        ("etc/default/tailscaled", standin("default")?, 0o644),
        (
            "usr/lib/tailscale-standin/magicdns",
            standin("magicdns")?,
            0o755,
        ),
        (
            "usr/share/tailscale-standin/netmap",
            netmap.into_bytes(),
            0o644,
        ),
        (
            "usr/lib/systemd/network/10-tailscale-standin-underlay.network",
            underlay.into_bytes(),
            0o644,
        ),
    ])
}

/// networkd leaves the NICs a fleet test gives the nodes for their tunnel
/// alone (no DHCP there, so nothing for network-online to wait for); the
/// stand-in tailscaled takes the node's own one over as tailscale0.
fn underlay_network(netmap: &str) -> Result<String> {
    let macs: Vec<&str> = netmap
        .lines()
        .filter_map(|l| l.strip_prefix("underlay "))
        .filter_map(|l| l.split_whitespace().nth(1))
        .collect();
    // An empty MACAddress= would match every NIC, the node's LAN included.
    anyhow::ensure!(
        !macs.is_empty(),
        "the stand-in netmap names no underlay NIC"
    );
    Ok(format!(
        "# Tailscale stand-in (tests only): the fleet boot test's tunnel NICs.\n\
         [Match]\nMACAddress={}\n\n[Link]\nUnmanaged=yes\n",
        macs.join(" ")
    ))
}

/// The package's files by content, so an edit of a stand-in rebuilds it.
fn source_hash() -> Result<String> {
    let mut all = VERSION.as_bytes().to_vec();
    for (path, data, mode) in package_files()? {
        all.extend(format!("{path} {mode:o} {}\n", data.len()).as_bytes());
        all.extend(data);
    }
    Ok(sha256_bytes(&all))
}

fn write(repo: &Path) -> Result<()> {
    let pool = repo.join("pool/main/t/tailscale");
    fs::create_dir_all(&pool)?;
    let work = tempfile::tempdir()?;
    let mut indexes = Vec::new();
    for arch in ARCHES {
        let deb_name = format!("tailscale_{VERSION}_{arch}.deb");
        let deb = pool.join(&deb_name);
        build_deb(&work.path().join(arch), arch, &deb)?;
        let data = fs::read(&deb)?;
        let control = Cmd::new("dpkg-deb")
            .arg("--field")
            .arg(&deb)
            .stdout_text()?;
        let stanza = nodeforge::apt::local::stanza(
            control.trim_end(),
            &format!("pool/main/t/tailscale/{deb_name}"),
            data.len() as u64,
            &sha256_bytes(&data),
        )
        .replace("Filename: ./pool/", "Filename: pool/");
        let rel = format!("main/binary-{arch}/Packages");
        let path = repo.join("dists").join(SUITE).join(&rel);
        fs::create_dir_all(path.parent().expect("has a parent"))?;
        fs::write(&path, &stanza)?;
        indexes.push((rel, stanza));
    }
    let mut release = format!(
        "Origin: nodeforge-tests\nLabel: Tailscale stand-in (tests only)\nSuite: {SUITE}\n\
         Codename: {SUITE}\nDate: Thu, 01 Jan 2026 00:00:00 UTC\nArchitectures: {}\n\
         Components: main\nSHA256:\n",
        ARCHES.join(" ")
    );
    for (rel, text) in &indexes {
        release.push_str(&format!(
            " {} {} {rel}\n",
            sha256_bytes(text.as_bytes()),
            text.len()
        ));
    }
    let dists = repo.join("dists").join(SUITE);
    fs::write(dists.join("Release"), &release)?;
    sign(&dists.join("Release"), &dists.join("InRelease"))
}

/// The package tree for `arch` under `root`, built into `deb`.
fn build_deb(root: &Path, arch: &str, deb: &Path) -> Result<()> {
    let files = package_files()?;
    for (rel, data, mode) in files {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().expect("has a parent"))?;
        fs::write(&p, data)?;
        fs::set_permissions(&p, fs::Permissions::from_mode(mode))?;
    }
    fs::create_dir_all(root.join("var/lib/tailscale"))?;
    fs::create_dir_all(root.join("DEBIAN"))?;
    fs::write(
        root.join("DEBIAN/control"),
        format!(
            "Package: tailscale\nVersion: {VERSION}\nArchitecture: {arch}\nSection: net\n\
             Priority: extra\nDepends: iproute2, iptables\nMaintainer: nodeforge tests <test@nodeforge.invalid>\n\
             Description: stand-in for the Tailscale client (nodeforge tests only)\n"
        ),
    )?;
    fs::write(root.join("DEBIAN/conffiles"), "/etc/default/tailscaled\n")?;
    Cmd::new("dpkg-deb")
        .args(["--root-owner-group", "-Zxz", "--build"])
        .arg(root)
        .arg(deb)
        .run()?;
    Ok(())
}

/// Signs `release` inline into `inrelease` with the test key, in a
/// throwaway GnuPG home.
fn sign(release: &Path, inrelease: &Path) -> Result<()> {
    let fixtures = workspace_root().join("qemu-tests/fixtures");
    let home = tempfile::tempdir()?;
    fs::set_permissions(home.path(), fs::Permissions::from_mode(0o700))?;
    // The test key has no passphrase: nothing to type or pass.
    let gpg = || {
        Cmd::new("gpg")
            .env("GNUPGHOME", home.path())
            .args(["--batch", "--yes"])
    };
    gpg()
        .arg("--import")
        .arg(fixtures.join("test-apt-key.secret.asc"))
        .run()
        .context("importing the stand-in repository's test key")?;
    let fpr = fs::read_to_string(fixtures.join("test-apt-key.fpr"))?;
    gpg()
        .args(["--local-user", fpr.trim(), "--clearsign", "--output"])
        .arg(inrelease)
        .arg(release)
        .run()
        .context("signing the stand-in repository")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// apt itself (a private root on the host) accepts the repository
    /// with the fragment's key and finds the stand-in for both
    /// architectures; with another key it refuses it.
    #[test]
    fn apt_accepts_the_repository_with_its_key_only() {
        let repo = ensure().unwrap();
        for arch in ARCHES {
            let deb = repo.join(format!(
                "pool/main/t/tailscale/tailscale_{VERSION}_{arch}.deb"
            ));
            let contents = Cmd::new("dpkg-deb")
                .arg("--contents")
                .arg(&deb)
                .stdout_text()
                .unwrap();
            for path in [
                "./usr/bin/tailscale",
                "./usr/sbin/tailscaled",
                "./usr/lib/systemd/system/tailscaled.service",
                "./usr/lib/tailscale-standin/magicdns",
                "./usr/share/tailscale-standin/netmap",
                "./usr/lib/systemd/network/10-tailscale-standin-underlay.network",
                "./var/lib/tailscale/",
            ] {
                assert!(
                    contents.contains(path),
                    "{arch}: {path} missing:\n{contents}"
                );
            }
        }
        let fixtures = workspace_root().join("qemu-tests/fixtures");
        let good = fixtures.join("test-apt-key.asc");
        let other = workspace_root().join("builder/tests/fixtures/test-repo-key.asc");
        let (ok, policy) = apt_policy(&repo, &good);
        assert!(ok, "{policy}");
        assert!(policy.contains(VERSION), "{policy}");
        let (ok, out) = apt_policy(&repo, &other);
        assert!(
            !ok || !out.contains(VERSION),
            "accepted with another key:\n{out}"
        );
    }

    /// `apt-get update` and `apt-cache policy tailscale` for arm64 in a
    /// private apt root that trusts only `key`.
    fn apt_policy(repo: &Path, key: &Path) -> (bool, String) {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        for d in [
            "etc/apt/sources.list.d",
            "var/lib/apt/lists/partial",
            "var/cache/apt/archives/partial",
            "var/lib/dpkg",
        ] {
            fs::create_dir_all(r.join(d)).unwrap();
        }
        fs::write(r.join("var/lib/dpkg/status"), "").unwrap();
        let keyring = r.join("key.gpg");
        let armored = fs::read(key).unwrap();
        fs::write(
            &keyring,
            nodeforge::apt::openpgp::dearmor(&armored).unwrap(),
        )
        .unwrap();
        fs::write(
            r.join("etc/apt/sources.list"),
            format!(
                "deb [signed-by={}] file:{} {SUITE} main\n",
                keyring.display(),
                repo.display()
            ),
        )
        .unwrap();
        let apt = |args: &[&str]| {
            std::process::Command::new(args[0])
                .args([
                    "-o",
                    &format!("Dir={}", r.display()),
                    "-o",
                    "APT::Architecture=arm64",
                ])
                .args(["-o", "Dir::State::status=var/lib/dpkg/status"])
                .args(&args[1..])
                .output()
                .unwrap()
        };
        let up = apt(&["apt-get", "update"]);
        let policy = apt(&["apt-cache", "policy", "tailscale"]);
        let text = format!(
            "{}{}{}",
            String::from_utf8_lossy(&up.stdout),
            String::from_utf8_lossy(&up.stderr),
            String::from_utf8_lossy(&policy.stdout)
        );
        let refused = text.contains("NO_PUBKEY")
            || text.contains("not signed")
            || text.contains("W: GPG error")
            || text.contains("E: The repository");
        (up.status.success() && !refused, text)
    }
}

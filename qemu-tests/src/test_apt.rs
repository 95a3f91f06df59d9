//! The local signed apt repositories that stand in for third parties'
//! the build machines cannot reach, each a package of the real name,
//! version scheme and paths from a repository laid out like the real one:
//!
//! - Tailscale's (dists/trixie/main/binary-ARCH, pool/; amd64 and arm64):
//!   the test profiles point the `tailscale` entry of profiles/node.toml
//!   at it (qemu-tests/profiles/fragments/tailscale-test-repo.toml). The
//!   CLI is firstboot/testdata/tailscale-standin; the daemon, its MagicDNS
//!   resolver and the unit are in qemu-tests/standins/tailscale. The
//!   package also carries the stand-in control server's netmap
//!   ([`crate::control`]): the fleet's nodes, MagicDNS and packet filters.
//! - NVIDIA's container toolkit (a flat repository, suite "/", amd64, as
//!   NVIDIA's is): `nvidia-container-toolkit` and what it depends on, with
//!   the scripts of qemu-tests/standins/nvidia-container-toolkit at the
//!   real paths (qemu-tests/profiles/fragments/nvidia-test-repo.toml).
//!
//! Each Release is signed inline (InRelease) with the committed test key
//! qemu-tests/fixtures/test-apt-key.* (tests only).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{Context, Result};
use nodeforge::exec::Cmd;
use nodeforge::fsutil::sha256_bytes;

use crate::workspace_root;

/// The Tailscale stand-in's version: the real client's scheme, marked as ours.
pub const VERSION: &str = "1.90.0~nodeforge1";
/// The NVIDIA container toolkit stand-ins' version, likewise.
pub const NVIDIA_VERSION: &str = "1.17.3-1~nodeforge1";
const ARCHES: &[&str] = &["amd64", "arm64"];
const SUITE: &str = "trixie";

/// Where the repositories are written (the fragments' `url`s name them).
pub fn repos_dir() -> PathBuf {
    workspace_root().join("target/qemu-tests/test-apt")
}

/// The Tailscale stand-in repository.
pub fn repo_dir() -> PathBuf {
    repos_dir().join("tailscale")
}

/// The NVIDIA container toolkit stand-in repository (flat).
pub fn nvidia_repo_dir() -> PathBuf {
    repos_dir().join("nvidia-container-toolkit")
}

fn standins(dir: &str) -> PathBuf {
    workspace_root().join("qemu-tests/standins").join(dir)
}

/// Writes the repositories unless they are there from this same source.
/// Every boot test that builds an image calls it first.
pub fn ensure() -> Result<PathBuf> {
    static ONCE: Mutex<bool> = Mutex::new(false);
    let mut done = ONCE.lock().unwrap_or_else(|e| e.into_inner());
    let dir = repos_dir();
    if *done {
        return Ok(repo_dir());
    }
    let stamp = source_hash()?;
    let stamp_file = dir.join(".source");
    if fs::read_to_string(&stamp_file).ok().as_deref() != Some(stamp.as_str()) {
        let _ = fs::remove_dir_all(&dir);
        write_tailscale(&repo_dir())
            .with_context(|| format!("writing the stand-in repository {}", repo_dir().display()))?;
        write_nvidia(&nvidia_repo_dir()).with_context(|| {
            format!(
                "writing the stand-in repository {}",
                nvidia_repo_dir().display()
            )
        })?;
        fs::write(&stamp_file, &stamp)?;
    }
    *done = true;
    Ok(repo_dir())
}

/// One stand-in package: its control fields and files (path in the
/// package, content, mode).
struct Package {
    name: &'static str,
    version: &'static str,
    section: &'static str,
    depends: String,
    description: &'static str,
    files: Vec<(&'static str, Vec<u8>, u32)>,
    dirs: &'static [&'static str],
    conffiles: &'static [&'static str],
}

fn read_standin(dir: &str, name: &str) -> Result<Vec<u8>> {
    let p = standins(dir).join(name);
    fs::read(&p).with_context(|| format!("reading {}", p.display()))
}

fn tailscale_package() -> Result<Package> {
    let standin = |name: &str| read_standin("tailscale", name);
    let netmap = crate::control::netmap()?;
    let underlay = underlay_network(&netmap)?;
    Ok(Package {
        name: "tailscale",
        version: VERSION,
        section: "net",
        depends: "iproute2, iptables".into(),
        description: "stand-in for the Tailscale client (nodeforge tests only)",
        files: vec![
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
        ],
        dirs: &["var/lib/tailscale"],
        conffiles: &["/etc/default/tailscaled"],
    })
}

/// NVIDIA's toolkit as its repository splits it (checked against the
/// packages of libnvidia-container/stable/deb, v1.17): the toolkit
/// depends on its base (nvidia-ctk, the runtime) and on
/// libnvidia-container-tools (nvidia-container-cli), which depends on the
/// library package.
fn nvidia_packages() -> Result<Vec<Package>> {
    let standin = |name: &str| read_standin("nvidia-container-toolkit", name);
    let v = NVIDIA_VERSION;
    let readme = |what: &str| {
        format!(
            "Stand-in for NVIDIA's {what} (nodeforge tests only): NVIDIA's \
             repository cannot be reached on the build machines. See \
             qemu-tests/standins/nvidia-container-toolkit.\n"
        )
        .into_bytes()
    };
    Ok(vec![
        Package {
            name: "nvidia-container-toolkit",
            version: v,
            section: "utils",
            depends: format!(
                "nvidia-container-toolkit-base (= {v}), libnvidia-container-tools (>= {v}), \
                 libnvidia-container-tools (<< 2.0.0)"
            ),
            description: "stand-in for the NVIDIA Container Toolkit (nodeforge tests only)",
            files: vec![(
                "usr/bin/nvidia-container-runtime-hook",
                standin("nvidia-container-runtime-hook")?,
                0o755,
            )],
            dirs: &[],
            conffiles: &[],
        },
        Package {
            name: "nvidia-container-toolkit-base",
            version: v,
            section: "utils",
            depends: String::new(),
            description: "stand-in for the NVIDIA Container Toolkit base (nodeforge tests only)",
            files: vec![
                ("usr/bin/nvidia-ctk", standin("nvidia-ctk")?, 0o755),
                (
                    "usr/bin/nvidia-container-runtime",
                    standin("nvidia-container-runtime")?,
                    0o755,
                ),
            ],
            dirs: &["etc/nvidia-container-runtime"],
            conffiles: &[],
        },
        Package {
            name: "libnvidia-container-tools",
            version: v,
            section: "utils",
            depends: format!("libnvidia-container1 (>= {v})"),
            description: "stand-in for NVIDIA's container CLI (nodeforge tests only)",
            files: vec![(
                "usr/bin/nvidia-container-cli",
                standin("nvidia-container-cli")?,
                0o755,
            )],
            dirs: &[],
            conffiles: &[],
        },
        Package {
            name: "libnvidia-container1",
            version: v,
            section: "libs",
            depends: String::new(),
            description: "stand-in for NVIDIA's container library (nodeforge tests only)",
            // The real package holds libnvidia-container.so.1, which only
            // the real CLI loads; the stand-in CLI is a script.
            files: vec![(
                "usr/share/doc/libnvidia-container1/README.nodeforge-standin",
                readme("libnvidia-container1"),
                0o644,
            )],
            dirs: &[],
            conffiles: &[],
        },
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

/// Bumped whenever the writers below lay the repositories out
/// differently, so a repository written by an older test is replaced.
const LAYOUT: u32 = 2;

/// Every package whole (fields and files by content) and the layout, so
/// an edit of a stand-in rebuilds the repositories.
fn source_hash() -> Result<String> {
    let mut all = format!("layout {LAYOUT}\n").into_bytes();
    let mut packages = vec![tailscale_package()?];
    packages.extend(nvidia_packages()?);
    for p in packages {
        all.extend(
            format!(
                "{} {} {} {} {} {:?} {:?}\n",
                p.name, p.version, p.section, p.depends, p.description, p.dirs, p.conffiles
            )
            .as_bytes(),
        );
        for (path, data, mode) in p.files {
            all.extend(format!("{path} {mode:o} {}\n", data.len()).as_bytes());
            all.extend(data);
        }
    }
    Ok(sha256_bytes(&all))
}

/// The Packages stanza of `deb`, its Filename relative to the repository.
fn stanza(deb: &Path, filename: &str) -> Result<String> {
    let data = fs::read(deb)?;
    let control = Cmd::new("dpkg-deb").arg("--field").arg(deb).stdout_text()?;
    Ok(nodeforge::apt::local::stanza(
        control.trim_end(),
        filename,
        data.len() as u64,
        &sha256_bytes(&data),
    )
    .replace("Filename: ./", "Filename: "))
}

/// The Release text's SHA256 list for `indexes` (path, contents).
fn release_sums(indexes: &[(String, String)]) -> String {
    indexes
        .iter()
        .map(|(rel, text)| format!(" {} {} {rel}\n", sha256_bytes(text.as_bytes()), text.len()))
        .collect()
}

fn write_tailscale(repo: &Path) -> Result<()> {
    let pool = repo.join("pool/main/t/tailscale");
    fs::create_dir_all(&pool)?;
    let work = tempfile::tempdir()?;
    let mut indexes = Vec::new();
    for arch in ARCHES {
        let deb_name = format!("tailscale_{VERSION}_{arch}.deb");
        let deb = pool.join(&deb_name);
        build_deb(&tailscale_package()?, &work.path().join(arch), arch, &deb)?;
        let text = stanza(&deb, &format!("pool/main/t/tailscale/{deb_name}"))?;
        let rel = format!("main/binary-{arch}/Packages");
        let path = repo.join("dists").join(SUITE).join(&rel);
        fs::create_dir_all(path.parent().expect("has a parent"))?;
        fs::write(&path, &text)?;
        indexes.push((rel, text));
    }
    let release = format!(
        "Origin: nodeforge-tests\nLabel: Tailscale stand-in (tests only)\nSuite: {SUITE}\n\
         Codename: {SUITE}\nDate: Thu, 01 Jan 2026 00:00:00 UTC\nArchitectures: {}\n\
         Components: main\nSHA256:\n{}",
        ARCHES.join(" "),
        release_sums(&indexes)
    );
    let dists = repo.join("dists").join(SUITE);
    fs::write(dists.join("Release"), &release)?;
    sign(&dists.join("Release"), &dists.join("InRelease"))
}

/// A flat repository, as NVIDIA's: Packages, Release, InRelease and the
/// .debs side by side (`deb URL /`).
fn write_nvidia(repo: &Path) -> Result<()> {
    fs::create_dir_all(repo)?;
    let work = tempfile::tempdir()?;
    let mut packages = String::new();
    for p in nvidia_packages()? {
        let deb_name = format!("{}_{}_amd64.deb", p.name, p.version);
        let deb = repo.join(&deb_name);
        build_deb(&p, &work.path().join(p.name), "amd64", &deb)?;
        packages.push_str(&stanza(&deb, &format!("./{deb_name}"))?);
        packages.push('\n');
    }
    let packages = packages.trim_end().to_owned() + "\n";
    fs::write(repo.join("Packages"), &packages)?;
    let release = format!(
        "Origin: nodeforge-tests\nLabel: NVIDIA container toolkit stand-in (tests only)\n\
         Date: Thu, 01 Jan 2026 00:00:00 UTC\nArchitectures: amd64\nSHA256:\n{}",
        release_sums(&[("Packages".to_owned(), packages)])
    );
    fs::write(repo.join("Release"), &release)?;
    sign(&repo.join("Release"), &repo.join("InRelease"))
}

/// The package tree of `p` for `arch` under `root`, built into `deb`.
fn build_deb(p: &Package, root: &Path, arch: &str, deb: &Path) -> Result<()> {
    for (rel, data, mode) in &p.files {
        let path = root.join(rel);
        fs::create_dir_all(path.parent().expect("has a parent"))?;
        fs::write(&path, data)?;
        fs::set_permissions(&path, fs::Permissions::from_mode(*mode))?;
    }
    for d in p.dirs {
        fs::create_dir_all(root.join(d))?;
    }
    fs::create_dir_all(root.join("DEBIAN"))?;
    let depends = if p.depends.is_empty() {
        String::new()
    } else {
        format!("Depends: {}\n", p.depends)
    };
    fs::write(
        root.join("DEBIAN/control"),
        format!(
            "Package: {}\nVersion: {}\nArchitecture: {arch}\nSection: {}\n\
             Priority: optional\n{depends}Maintainer: nodeforge tests <test@nodeforge.invalid>\n\
             Description: {}\n",
            p.name, p.version, p.section, p.description
        ),
    )?;
    if !p.conffiles.is_empty() {
        fs::write(root.join("DEBIAN/conffiles"), p.conffiles.join("\n") + "\n")?;
    }
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

    /// apt itself (a private root on the host) accepts the repositories
    /// with the fragments' key and finds the stand-ins (Tailscale's for
    /// both architectures); with another key it refuses them.
    #[test]
    fn apt_accepts_the_repositories_with_their_key_only() {
        let repo = ensure().unwrap();
        for arch in ARCHES {
            let deb = repo.join(format!(
                "pool/main/t/tailscale/tailscale_{VERSION}_{arch}.deb"
            ));
            let contents = deb_contents(&deb);
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
        let nvidia = nvidia_repo_dir();
        for (package, path) in [
            (
                "nvidia-container-toolkit",
                "./usr/bin/nvidia-container-runtime-hook",
            ),
            ("nvidia-container-toolkit-base", "./usr/bin/nvidia-ctk"),
            (
                "nvidia-container-toolkit-base",
                "./usr/bin/nvidia-container-runtime",
            ),
            (
                "libnvidia-container-tools",
                "./usr/bin/nvidia-container-cli",
            ),
        ] {
            let deb = nvidia.join(format!("{package}_{NVIDIA_VERSION}_amd64.deb"));
            let contents = deb_contents(&deb);
            assert!(
                contents.contains(path),
                "{package}: {path} missing:\n{contents}"
            );
        }

        let fixtures = workspace_root().join("qemu-tests/fixtures");
        let good = fixtures.join("test-apt-key.asc");
        let other = workspace_root().join("builder/tests/fixtures/test-repo-key.asc");
        let tailscale = format!("file:{} {SUITE} main", repo.display());
        let flat = format!("file:{} /", nvidia.display());
        for (source, arch, package, version) in [
            (&tailscale, "arm64", "tailscale", VERSION),
            (&flat, "amd64", "nvidia-container-toolkit", NVIDIA_VERSION),
        ] {
            let (ok, policy) = apt_policy(source, arch, package, &good);
            assert!(ok, "{policy}");
            assert!(policy.contains(version), "{policy}");
            let (ok, out) = apt_policy(source, arch, package, &other);
            assert!(
                !ok || !out.contains(version),
                "accepted with another key:\n{out}"
            );
        }
        // The toolkit's dependencies resolve inside the repository.
        let (ok, out) = apt_simulate(&flat, "nvidia-container-toolkit", &good);
        assert!(ok, "{out}");
        for p in [
            "nvidia-container-toolkit-base",
            "libnvidia-container-tools",
            "libnvidia-container1",
        ] {
            assert!(
                out.contains(&format!("Inst {p} ")),
                "{p} not pulled in:\n{out}"
            );
        }
    }

    fn deb_contents(deb: &Path) -> String {
        Cmd::new("dpkg-deb")
            .arg("--contents")
            .arg(deb)
            .stdout_text()
            .unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// A private apt root on the host that trusts only `key` for `source`
    /// (`URI SUITE [COMPONENT]`), for `arch`.
    struct AptRoot {
        dir: tempfile::TempDir,
        arch: &'static str,
    }

    impl AptRoot {
        fn new(source: &str, arch: &'static str, key: &Path) -> AptRoot {
            let dir = tempfile::tempdir().unwrap();
            let r = dir.path();
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
                format!("deb [signed-by={}] {source}\n", keyring.display()),
            )
            .unwrap();
            AptRoot { dir, arch }
        }

        fn run(&self, args: &[&str]) -> std::process::Output {
            std::process::Command::new(args[0])
                .args([
                    "-o",
                    &format!("Dir={}", self.dir.path().display()),
                    "-o",
                    &format!("APT::Architecture={}", self.arch),
                ])
                .args(["-o", "Dir::State::status=var/lib/dpkg/status"])
                .args(&args[1..])
                .output()
                .unwrap()
        }
    }

    fn text(outputs: &[&std::process::Output]) -> String {
        outputs
            .iter()
            .map(|o| {
                format!(
                    "{}{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                )
            })
            .collect()
    }

    /// `apt-get update` and `apt-cache policy PACKAGE`; true when the
    /// update succeeded and apt refused nothing.
    fn apt_policy(source: &str, arch: &'static str, package: &str, key: &Path) -> (bool, String) {
        let root = AptRoot::new(source, arch, key);
        let up = root.run(&["apt-get", "update"]);
        let policy = root.run(&["apt-cache", "policy", package]);
        let text = text(&[&up, &policy]);
        let refused = text.contains("NO_PUBKEY")
            || text.contains("not signed")
            || text.contains("W: GPG error")
            || text.contains("E: The repository");
        (up.status.success() && !refused, text)
    }

    /// `apt-get install --simulate PACKAGE` from the repository alone.
    fn apt_simulate(source: &str, package: &str, key: &Path) -> (bool, String) {
        let root = AptRoot::new(source, "amd64", key);
        let up = root.run(&["apt-get", "update"]);
        let sim = root.run(&[
            "apt-get",
            "install",
            "--simulate",
            "--no-install-recommends",
            package,
        ]);
        (
            up.status.success() && sim.status.success(),
            text(&[&up, &sim]),
        )
    }
}

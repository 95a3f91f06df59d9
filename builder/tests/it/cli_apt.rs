//! `[[apt.repositories]]` and `[[apt.local]]` in profiles: key
//! fingerprints checked, unsigned or wrongly keyed repositories refused
//! with the profile line, repositories in the plan and the rootfs cache
//! key; and a local repository signed like Tailscale's, serving the
//! stand-in `tailscale` package, that apt itself verifies.

use std::fs;
use std::path::{Path, PathBuf};

use crate::support::{read_text, require_tool, Project, FIXTURE_FPR, FIXTURE_KEY};
use nodeforge::apt::{self, openpgp};
use nodeforge::exec::Cmd;

fn profile_with_repo(p: &Project, repo: &str) {
    p.write(
        "profiles/gpu.toml",
        &format!("name = \"gpu\"\nhardware = \"pc\"\npackages = [\"nvidia-container-toolkit\"]\n\n{repo}"),
    );
}

fn nvidia_repo(key: Option<&str>, fpr: Option<&str>) -> String {
    let mut s = "[[apt.repositories]]\nname = \"nvidia-container-toolkit\"\nurl = \"https://nvidia.github.io/libnvidia-container/stable/deb/amd64\"\nsuite = \"/\"\n".to_owned();
    if let Some(k) = key {
        s.push_str(&format!("key = \"{k}\"\n"));
    }
    if let Some(f) = fpr {
        s.push_str(&format!("fingerprint = \"{f}\"\n"));
    }
    s
}

fn plan_json(p: &Project, profile: &str) -> serde_json::Value {
    p.ok(&["plan", "--json", profile]).json()
}

/// `nodeforge check profiles/gpu.toml` fails naming each of `wants`.
fn gpu_fails_with(p: &Project, wants: &[&str]) {
    p.fails(&["check", "profiles/gpu.toml"]).stderr_has(wants);
}

#[test]
fn signed_repository_is_checked_and_planned() {
    let p = Project::new();
    p.write("keys/nvidia.asc", FIXTURE_KEY);
    profile_with_repo(&p, "");
    let without = plan_json(&p, "profiles/gpu.toml")["rootfs_key"].clone();

    // The fingerprint may be written with spaces, as gpg prints it.
    let spaced: String = FIXTURE_FPR
        .trim()
        .as_bytes()
        .chunks(4)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect::<Vec<_>>()
        .join(" ");
    profile_with_repo(&p, &nvidia_repo(Some("keys/nvidia.asc"), Some(&spaced)));
    p.ok(&["check", "profiles/gpu.toml"]);
    let plan = plan_json(&p, "profiles/gpu.toml");
    let repo = &plan["profile"]["apt"]["repositories"][0];
    assert_eq!(repo["name"], "nvidia-container-toolkit");
    assert_eq!(repo["fingerprint"], FIXTURE_FPR.trim());
    assert_ne!(
        plan["rootfs_key"], without,
        "the repository must change the rootfs key"
    );
    p.ok(&["plan", "profiles/gpu.toml"]).stdout_has(&[
        "apt repo   nvidia-container-toolkit https://nvidia.github.io/libnvidia-container/stable/deb/amd64 /",
        FIXTURE_FPR.trim(),
        "1 signed repositories",
    ]);
}

#[test]
fn unsigned_repository_is_refused_at_its_line() {
    let p = Project::new();
    profile_with_repo(&p, &nvidia_repo(None, None));
    gpu_fails_with(&p, &["profiles/gpu.toml:6:8:", "unsigned"]);
}

#[test]
fn wrong_fingerprint_is_refused_at_its_line() {
    let p = Project::new();
    p.write("keys/nvidia.asc", FIXTURE_KEY);
    profile_with_repo(
        &p,
        &nvidia_repo(
            Some("keys/nvidia.asc"),
            Some("C95B321B61E88C1809C4F759DDCAE044F796ECB0"),
        ),
    );
    gpu_fails_with(
        &p,
        &[
            "profiles/gpu.toml:10:15:",
            "wrong key",
            FIXTURE_FPR.trim(),
            "C95B321B",
        ],
    );
    // A missing fingerprint is refused too, and so is a file that is no key.
    profile_with_repo(&p, &nvidia_repo(Some("keys/nvidia.asc"), None));
    gpu_fails_with(&p, &["add fingerprint"]);
    p.write("keys/bad.asc", "not a key\n");
    profile_with_repo(
        &p,
        &nvidia_repo(Some("keys/bad.asc"), Some(FIXTURE_FPR.trim())),
    );
    gpu_fails_with(&p, &["profiles/gpu.toml:9:7:", "not an OpenPGP key"]);
}

/// A temporary GnuPG home with one new signing key: (home, fingerprint).
fn gpg_key(dir: &Path, uid: &str) -> (PathBuf, String) {
    gpg_key_algo(dir, uid, "ed25519")
}

fn gpg_key_algo(dir: &Path, uid: &str, algo: &str) -> (PathBuf, String) {
    let home = dir.join("gnupg");
    fs::create_dir_all(&home).unwrap();
    let gpg = |args: &[&str]| {
        Cmd::new("gpg")
            .env("GNUPGHOME", &home)
            .args([
                "--batch",
                "--quiet",
                "--pinentry-mode",
                "loopback",
                "--passphrase",
                "",
            ])
            .args(args)
            .stdout_text()
            .unwrap()
    };
    gpg(&["--quick-gen-key", uid, algo, "sign", "never"]);
    let colons = gpg(&["--with-colons", "--list-keys", uid]);
    let fpr = colons
        .lines()
        .find(|l| l.starts_with("fpr:"))
        .and_then(|l| l.split(':').nth(9))
        .unwrap()
        .to_owned();
    (home, fpr)
}

fn gpg_export(home: &Path, fpr: &str) -> String {
    Cmd::new("gpg")
        .env("GNUPGHOME", home)
        .args(["--batch", "--armor", "--export", fpr])
        .stdout_text()
        .unwrap()
}

#[test]
fn fingerprint_matches_gpg_for_a_new_key() {
    require_tool("gpg", "gnupg");
    let dir = tempfile::tempdir().unwrap();
    let (home, fpr) = gpg_key(dir.path(), "fingerprint test <fpr@nodeforge.invalid>");
    let armored = gpg_export(&home, &fpr);
    assert_eq!(
        openpgp::primary_fingerprints(armored.as_bytes()).unwrap(),
        vec![fpr.clone()]
    );
    let binary = Cmd::new("gpg")
        .env("GNUPGHOME", &home)
        .args(["--batch", "--export", &fpr])
        .run()
        .unwrap()
        .stdout;
    assert_eq!(
        openpgp::primary_fingerprints(&binary).unwrap(),
        vec![fpr.clone()]
    );

    // An RSA key: its packet is longer than 255 bytes (two-byte length).
    let (rsa_home, rsa_fpr) = {
        let d = dir.path().join("rsa");
        std::fs::create_dir_all(&d).unwrap();
        gpg_key_algo(&d, "rsa test <rsa@nodeforge.invalid>", "rsa2048")
    };
    let rsa = gpg_export(&rsa_home, &rsa_fpr);
    assert_eq!(
        openpgp::primary_fingerprints(rsa.as_bytes()).unwrap(),
        vec![rsa_fpr.clone()]
    );

    // In a profile: two keys in one file, or a secret key, are refused.
    let p = Project::new();
    p.write("keys/two.asc", &format!("{armored}{rsa}"));
    profile_with_repo(&p, &nvidia_repo(Some("keys/two.asc"), Some(&fpr)));
    gpu_fails_with(&p, &["holds 2 keys", &rsa_fpr]);
    let secret = Cmd::new("gpg")
        .env("GNUPGHOME", &home)
        .args(["--batch", "--pinentry-mode", "loopback", "--passphrase", ""])
        .args(["--armor", "--export-secret-keys", &fpr])
        .stdout_text()
        .unwrap();
    p.write("keys/secret.asc", &secret);
    profile_with_repo(&p, &nvidia_repo(Some("keys/secret.asc"), Some(&fpr)));
    gpu_fails_with(&p, &["secret key"]);
}

/// The stand-in `tailscale` package, built with dpkg-deb.
fn standin_deb(dir: &Path) -> PathBuf {
    let root = dir.join("pkg");
    fs::create_dir_all(root.join("DEBIAN")).unwrap();
    fs::create_dir_all(root.join("usr/bin")).unwrap();
    fs::write(
        root.join("DEBIAN/control"),
        "Package: tailscale\nVersion: 1.90.0~nodeforge1\nArchitecture: all\nMaintainer: nodeforge tests <test@nodeforge.invalid>\nDescription: stand-in for the Tailscale client (tests)\n",
    )
    .unwrap();
    let bin = root.join("usr/bin/tailscale");
    fs::write(&bin, nodeforge_firstboot::TAILSCALE_STANDIN).unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).unwrap();
    let deb = dir.join("tailscale_1.90.0~nodeforge1_all.deb");
    Cmd::new("dpkg-deb")
        .args(["--root-owner-group", "--build"])
        .arg(&root)
        .arg(&deb)
        .run()
        .unwrap();
    deb
}

/// A repository laid out like pkgs.tailscale.com/stable/debian (dists/
/// trixie/main), its Release signed inline (InRelease) by the key in `home`.
fn signed_repo(dir: &Path, home: &Path, fpr: &str, deb: &Path) -> PathBuf {
    let repo = dir.join("repo");
    let pool = repo.join("pool");
    fs::create_dir_all(&pool).unwrap();
    let flat = dir.join("flat");
    apt::local::build_repo(deb.parent().unwrap(), &flat).unwrap();
    let name = deb.file_name().unwrap().to_str().unwrap();
    fs::copy(deb, pool.join(name)).unwrap();
    let packages = read_text(&flat.join("Packages")).replace("Filename: ./", "Filename: pool/");
    let bin = repo.join("dists/trixie/main/binary-amd64");
    fs::create_dir_all(&bin).unwrap();
    fs::write(bin.join("Packages"), &packages).unwrap();
    let sha = nodeforge::fsutil::sha256_bytes(packages.as_bytes());
    let date = Cmd::new("date").args(["-u", "-R"]).stdout_text().unwrap();
    let release = format!(
        "Origin: nodeforge-tests\nLabel: tailscale stand-in\nSuite: trixie\nCodename: trixie\nDate: {}\nArchitectures: amd64 all\nComponents: main\nSHA256:\n {sha} {} main/binary-amd64/Packages\n",
        date.trim(),
        packages.len()
    );
    fs::write(repo.join("dists/trixie/Release"), release).unwrap();
    Cmd::new("gpg")
        .env("GNUPGHOME", home)
        .args([
            "--batch",
            "--yes",
            "--local-user",
            fpr,
            "--clearsign",
            "--output",
        ])
        .arg(repo.join("dists/trixie/InRelease"))
        .arg(repo.join("dists/trixie/Release"))
        .run()
        .unwrap();
    repo
}

/// `apt-get update` against `source_line` in a private apt root; returns
/// whether it succeeded and `apt-cache policy tailscale`'s output.
fn apt_update(dir: &Path, source_line: &str) -> (bool, String, String) {
    let root = dir.join("aptroot");
    let _ = fs::remove_dir_all(&root);
    for d in [
        "etc/apt/sources.list.d",
        "etc/apt/apt.conf.d",
        "etc/apt/preferences.d",
        "etc/apt/trusted.gpg.d",
        "var/lib/apt/lists/partial",
        "var/cache/apt/archives/partial",
        "var/lib/dpkg",
    ] {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    fs::write(root.join("var/lib/dpkg/status"), "").unwrap();
    fs::write(
        root.join("etc/apt/sources.list"),
        format!("{source_line}\n"),
    )
    .unwrap();
    let conf = root.join("apt.conf");
    fs::write(
        &conf,
        format!(
            "Dir \"{}/\";\nDir::State::status \"{}/var/lib/dpkg/status\";\nAPT::Architecture \"amd64\";\nAPT::Sandbox::User \"root\";\nDebug::NoLocking \"true\";\n",
            root.display(),
            root.display()
        ),
    )
    .unwrap();
    let update = Cmd::new("apt-get")
        .env("APT_CONFIG", &conf)
        .arg("update")
        .run();
    let ok = update.is_ok();
    let log = match update {
        Ok(o) => String::from_utf8_lossy(&o.stderr).into_owned(),
        Err(e) => format!("{e:#}"),
    };
    let policy = Cmd::new("apt-cache")
        .env("APT_CONFIG", &conf)
        .args(["policy", "tailscale"])
        .stdout_text()
        .unwrap_or_default();
    (ok, log, policy)
}

#[test]
fn local_signed_tailscale_repository_is_accepted_with_its_key_only() {
    for (tool, package) in [("gpg", "gnupg"), ("dpkg-deb", "dpkg"), ("apt-get", "apt")] {
        require_tool(tool, package);
    }
    let p = Project::new();
    let dir = tempfile::tempdir().unwrap();
    let (home, fpr) = gpg_key(
        dir.path(),
        "tailscale stand-in repo <repo@nodeforge.invalid>",
    );
    let debs = dir.path().join("debs");
    fs::create_dir_all(&debs).unwrap();
    let deb = standin_deb(&debs);
    let repo = signed_repo(dir.path(), &home, &fpr, &deb);
    p.write("keys/tailscale.asc", &gpg_export(&home, &fpr));
    let profile = |fingerprint: &str| {
        format!(
            "[[apt.repositories]]\nname = \"tailscale\"\nurl = \"file:{}\"\nsuite = \"trixie\"\ncomponents = [\"main\"]\nkey = \"keys/tailscale.asc\"\nfingerprint = \"{fingerprint}\"\n",
            repo.display()
        )
    };

    // The builder accepts the repository with its key's fingerprint …
    profile_with_repo(&p, &profile(&fpr));
    p.ok(&["check", "profiles/gpu.toml"]);
    // … and refuses it with Tailscale's real fingerprint (another key).
    profile_with_repo(&p, &profile("2596A99EAAB33821893C0A79458CA832957F5868"));
    gpu_fails_with(&p, &["wrong key"]);

    // apt verifies the signature with the keyring the build would give it.
    profile_with_repo(&p, &profile(&fpr));
    let plan = nodeforge::plan::Plan::load(&p.path("profiles/gpu.toml")).unwrap();
    let cache = dir.path().join("cache");
    let lines = apt::prepare(&cache, &plan.profile.apt).unwrap();
    assert_eq!(lines.len(), 1);
    assert!(
        lines[0].contains("/nodeforge-apt/keys/") && lines[0].ends_with("trixie main"),
        "{}",
        lines[0]
    );
    let (ok, log, policy) = apt_update(dir.path(), &lines[0]);
    assert!(ok, "apt-get update failed: {log}");
    assert!(policy.contains("1.90.0~nodeforge1"), "{policy}\n{log}");

    // With another key as signed-by, apt refuses the repository.
    let wrong = lines[0].replace(&format!("keys/{fpr}.gpg"), "keys/other.gpg");
    fs::write(
        cache.join("nodeforge-apt/keys/other.gpg"),
        openpgp::dearmor(FIXTURE_KEY.as_bytes()).unwrap(),
    )
    .unwrap();
    let (_, log, policy) = apt_update(dir.path(), &wrong);
    assert!(!policy.contains("1.90.0~nodeforge1"), "{policy}");
    assert!(
        log.contains("NO_PUBKEY") || log.contains("not signed"),
        "{log}"
    );
}

#[test]
fn local_deb_directory_becomes_an_indexed_source() {
    require_tool("dpkg-deb", "dpkg");
    let p = Project::new();
    let deb = standin_deb(&p.path("debs"));
    assert!(deb.is_file());
    p.write(
        "profiles/off.toml",
        "name = \"off\"\nhardware = \"pc\"\npackages = [\"tailscale\"]\n[[apt.local]]\npath = \"debs\"\n",
    );
    let plan = plan_json(&p, "profiles/off.toml");
    assert!(plan["profile"]["apt"]["local"][0]
        .as_str()
        .unwrap()
        .ends_with("debs"));
    let plan = nodeforge::plan::Plan::load(&p.path("profiles/off.toml")).unwrap();
    let cache = p.path("cache");
    let lines = apt::prepare(&cache, &plan.profile.apt).unwrap();
    assert!(
        lines[0].starts_with("deb [trusted=yes] copy:") && lines[0].ends_with(" ./"),
        "{}",
        lines[0]
    );
    let dir = lines[0]
        .split_whitespace()
        .nth(2)
        .unwrap()
        .trim_start_matches("copy:");
    let packages = read_text(&Path::new(dir).join("Packages"));
    assert!(
        packages.contains("Package: tailscale\n") && packages.contains("Filename: ./tailscale_"),
        "{packages}"
    );
    // An empty directory is refused at its line.
    fs::create_dir_all(p.path("empty")).unwrap();
    p.write(
        "profiles/off.toml",
        "name = \"off\"\nhardware = \"pc\"\n[[apt.local]]\npath = \"empty\"\n",
    );
    p.fails(&["check", "profiles/off.toml"])
        .stderr_has(&["profiles/off.toml:4:8:", "no .deb files"]);
}

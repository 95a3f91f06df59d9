//! The nvidia-gpu hardware: NVIDIA's container toolkit from its signed
//! apt repository (the key in keys/, its fingerprint checked), Docker's
//! nvidia runtime in /etc/docker/daemon.json from the hardware's overlay,
//! and hardware-declared repositories refused like a profile's when
//! unsigned or wrongly keyed.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{stderr, stdout, Project};
use nodeforge::apt::openpgp;
use nodeforge::plan::Plan;

const NVIDIA_FPR: &str = "C95B321B61E88C1809C4F759DDCAE044F796ECB0";
const FIXTURE_KEY: &str = include_str!("fixtures/test-repo-key.asc");
const FIXTURE_FPR: &str = include_str!("fixtures/test-repo-key.fpr");

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The fingerprint hardware/nvidia-gpu.toml declares for NVIDIA's repository.
fn declared() -> (String, String) {
    let text = std::fs::read_to_string(root().join("hardware/nvidia-gpu.toml")).unwrap();
    let hw: toml::Value = toml::from_str(&text).unwrap();
    let repo = &hw["apt"]["repositories"][0];
    (
        repo["key"].as_str().unwrap().to_owned(),
        openpgp::normalize_fingerprint(repo["fingerprint"].as_str().unwrap()).unwrap(),
    )
}

#[test]
fn key_file_has_the_declared_fingerprint() {
    let (key, fpr) = declared();
    assert_eq!(fpr, NVIDIA_FPR, "NVIDIA's published fingerprint");
    let data = std::fs::read(root().join(&key)).unwrap();
    assert_eq!(
        openpgp::primary_fingerprints(&data).unwrap(),
        vec![fpr.clone()],
        "computed from {key}"
    );
    // GnuPG agrees (it is on every machine that runs the apt tests).
    let out = Command::new("gpg")
        .args(["--show-keys", "--with-colons"])
        .arg(root().join(&key))
        .env("GNUPGHOME", tempfile::tempdir().unwrap().path())
        .output();
    match out {
        Ok(o) if o.status.success() => {
            let text = String::from_utf8_lossy(&o.stdout);
            let first_fpr = text
                .lines()
                .find_map(|l| l.strip_prefix("fpr:"))
                .map(|l| l.trim_matches(':').to_owned());
            assert_eq!(first_fpr.as_deref(), Some(fpr.as_str()), "{text}");
        }
        Ok(o) => panic!(
            "gpg --show-keys failed: {}",
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => eprintln!("skipping the gpg cross-check: gpg not runnable ({e})"),
    }
}

#[test]
fn ai_profile_gets_the_repository_toolkit_and_gpu_runtime() {
    let out = Command::new(env!("CARGO_BIN_EXE_nodeforge"))
        .args(["check"])
        .arg(root().join("profiles/ai.toml"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let out = Command::new(env!("CARGO_BIN_EXE_nodeforge"))
        .args(["plan"])
        .arg(root().join("profiles/ai.toml"))
        .output()
        .unwrap();
    let text = stdout(&out);
    assert!(
        text.contains(&format!(
            "apt repo   nvidia-container-toolkit https://nvidia.github.io/libnvidia-container/stable/deb/amd64 / [] key {NVIDIA_FPR}"
        )),
        "{text}"
    );

    let plan = Plan::load(&root().join("profiles/ai.toml")).unwrap();
    assert!(plan
        .packages
        .iter()
        .any(|p| p == "nvidia-container-toolkit"));
    let repo = plan
        .profile
        .apt
        .repositories
        .iter()
        .find(|r| r.name == "nvidia-container-toolkit")
        .expect("ai installs NVIDIA's container toolkit repository");
    assert_eq!(repo.fingerprint, NVIDIA_FPR);
    assert!(
        matches!(&repo.key, nodeforge::profile::RepoKey::File(k) if k.ends_with("keys/nvidia-container-toolkit.asc"))
    );
    // What the image's apt gets: the deb822 file names the key's fingerprint.
    let deb822 = nodeforge::apt::deb822(repo);
    assert!(
        deb822.contains(NVIDIA_FPR) && deb822.contains("Suites: /"),
        "{deb822}"
    );

    let daemon = plan
        .overlay_files
        .iter()
        .find(|f| f.target == "/etc/docker/daemon.json")
        .expect("the hardware's overlay puts daemon.json in the image");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&daemon.source).unwrap()).unwrap();
    assert_eq!(
        json["runtimes"]["nvidia"]["path"],
        "nvidia-container-runtime"
    );
    assert_eq!(json["runtimes"]["nvidia"]["args"], serde_json::json!([]));
}

fn hardware_with_repo(p: &Project, repo: &str) {
    p.write(
        "hardware/gpu.toml",
        &format!("arch = \"amd64\"\nfirmware = \"uefi\"\npackages = [\"linux-image-amd64\"]\n\n[[apt.repositories]]\nname = \"toolkit\"\nurl = \"https://example.invalid/deb\"\nsuite = \"/\"\n{repo}"),
    );
    p.write("profiles/x.toml", "name = \"x\"\nhardware = \"gpu\"\n");
}

#[test]
fn hardware_repository_unsigned_or_wrongly_keyed_is_refused_by_name() {
    let p = Project::new();
    hardware_with_repo(&p, "");
    let out = p.nodeforge(&["check", "profiles/x.toml"]);
    let err = stderr(&out);
    assert!(!out.status.success());
    assert!(
        err.contains("hardware/gpu.toml:6:8:") && err.contains("repository `toolkit` is unsigned"),
        "{err}"
    );

    p.write("keys/toolkit.asc", FIXTURE_KEY);
    hardware_with_repo(
        &p,
        &format!("key = \"keys/toolkit.asc\"\nfingerprint = \"{NVIDIA_FPR}\"\n"),
    );
    let out = p.nodeforge(&["check", "profiles/x.toml"]);
    let err = stderr(&out);
    assert!(!out.status.success());
    assert!(
        err.contains("hardware/gpu.toml:10:15:")
            && err.contains("repository `toolkit`: wrong key")
            && err.contains(NVIDIA_FPR),
        "{err}"
    );
}

#[test]
fn profile_repository_of_the_same_name_replaces_the_hardwares() {
    let p = Project::new();
    p.write("keys/toolkit.asc", FIXTURE_KEY);
    let fpr = FIXTURE_FPR;
    hardware_with_repo(
        &p,
        &format!(
            "key = \"keys/toolkit.asc\"\nfingerprint = \"{}\"\n",
            fpr.trim()
        ),
    );
    p.write(
        "profiles/x.toml",
        &format!("name = \"x\"\nhardware = \"gpu\"\n[[apt.repositories]]\nname = \"toolkit\"\nurl = \"https://mirror.example.invalid/deb\"\nsuite = \"/\"\nkey = \"keys/toolkit.asc\"\nfingerprint = \"{}\"\n", fpr.trim()),
    );
    let out = p.nodeforge(&["plan", "--json", "profiles/x.toml"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let repos = plan["profile"]["apt"]["repositories"].as_array().unwrap();
    assert_eq!(repos.len(), 1, "{repos:?}");
    assert_eq!(repos[0]["url"], "https://mirror.example.invalid/deb");
}

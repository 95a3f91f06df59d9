//! The nvidia-gpu hardware: NVIDIA's container toolkit from its signed
//! apt repository (the key in keys/, its fingerprint checked), Docker's
//! nvidia runtime in /etc/docker/daemon.json from the hardware's overlay,
//! and hardware-declared repositories refused like a profile's when
//! unsigned or wrongly keyed.

use std::path::PathBuf;
use std::process::Command;

use crate::support::{read_text, repo_root, require_tool, Project, FIXTURE_FPR, FIXTURE_KEY};
use nodeforge::apt::openpgp;
use nodeforge::plan::Plan;

const NVIDIA_FPR: &str = "C95B321B61E88C1809C4F759DDCAE044F796ECB0";

fn root() -> PathBuf {
    repo_root()
}

/// The fingerprint hardware/nvidia-gpu.toml declares for NVIDIA's repository.
fn declared() -> (String, String) {
    let text = read_text(&root().join("hardware/nvidia-gpu.toml"));
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
    let data = crate::support::read_bytes(&root().join(&key));
    assert_eq!(
        openpgp::primary_fingerprints(&data).unwrap(),
        vec![fpr.clone()],
        "computed from {key}"
    );
    // GnuPG agrees.
    require_tool("gpg", "gnupg");
    let home = tempfile::tempdir().unwrap();
    let o = Command::new("gpg")
        .args(["--show-keys", "--with-colons"])
        .arg(root().join(&key))
        .env("GNUPGHOME", home.path())
        .output()
        .unwrap_or_else(|e| panic!("running gpg: {e}"));
    assert!(
        o.status.success(),
        "gpg --show-keys {key} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let text = String::from_utf8_lossy(&o.stdout);
    let first_fpr = text
        .lines()
        .find_map(|l| l.strip_prefix("fpr:"))
        .map(|l| l.trim_matches(':').to_owned());
    assert_eq!(first_fpr.as_deref(), Some(fpr.as_str()), "{text}");
}

#[test]
fn ai_profile_gets_the_repository_toolkit_and_gpu_runtime() {
    let repo = Project::repo();
    repo.ok(&["check", "profiles/ai.toml"]);
    repo.ok(&["plan", "profiles/ai.toml"]).stdout_has(&[&format!(
        "apt repo   nvidia-container-toolkit https://nvidia.github.io/libnvidia-container/stable/deb/amd64 / [] key {NVIDIA_FPR}"
    )]);

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
    let json: serde_json::Value = serde_json::from_str(&read_text(&daemon.source)).unwrap();
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
    p.fails(&["check", "profiles/x.toml"])
        .stderr_has(&["hardware/gpu.toml:6:8:", "repository `toolkit` is unsigned"]);

    p.write("keys/toolkit.asc", FIXTURE_KEY);
    hardware_with_repo(
        &p,
        &format!("key = \"keys/toolkit.asc\"\nfingerprint = \"{NVIDIA_FPR}\"\n"),
    );
    p.fails(&["check", "profiles/x.toml"]).stderr_has(&[
        "hardware/gpu.toml:10:15:",
        "repository `toolkit`: wrong key",
        NVIDIA_FPR,
    ]);
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
    let plan = p.ok(&["plan", "--json", "profiles/x.toml"]).json();
    let repos = plan["profile"]["apt"]["repositories"].as_array().unwrap();
    assert_eq!(repos.len(), 1, "{repos:?}");
    assert_eq!(repos[0]["url"], "https://mirror.example.invalid/deb");
}

/// overlays/nvidia-gpu's GPU count, run on fake PCI trees: only an
/// NVIDIA (0x10de) display controller (class 0x03xxxx, VGA or 3D) counts;
/// its audio function or another vendor's VGA does not.
#[test]
fn nvidia_gpus_counts_nvidia_display_controllers_only() {
    const NONE: &str = "NVIDIA_GPUS=0\nNVIDIA_VISIBLE_DEVICES=void\n";
    const ALL: &str = "NVIDIA_GPUS=all\nNVIDIA_VISIBLE_DEVICES=all\n";
    let script = root().join("overlays/nvidia-gpu/usr/libexec/nodeforge/nvidia-gpus");
    let run = |devices: &[(&str, &str)]| {
        let dir = tempfile::tempdir().unwrap();
        for (i, (vendor, class)) in devices.iter().enumerate() {
            let dev = dir.path().join(format!("bus/pci/devices/0000:0{i}:00.0"));
            std::fs::create_dir_all(&dev).unwrap();
            std::fs::write(dev.join("vendor"), format!("{vendor}\n")).unwrap();
            std::fs::write(dev.join("class"), format!("{class}\n")).unwrap();
        }
        let env = dir.path().join("run/nodeforge/nvidia-gpus.env");
        let o = Command::new("sh")
            .arg(&script)
            .arg(dir.path())
            .arg(&env)
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
        assert!(
            o.status.success(),
            "{}: {}",
            script.display(),
            String::from_utf8_lossy(&o.stderr)
        );
        read_text(&env)
    };
    assert_eq!(run(&[]), NONE);
    assert_eq!(run(&[("0x10de", "0x040300"), ("0x8086", "0x030000")]), NONE);
    assert_eq!(run(&[("0x10de", "0x030000"), ("0x10de", "0x040300")]), ALL);
    assert_eq!(run(&[("0x10de", "0x030200")]), ALL);
}

/// The agent gets the count: the hardware's drop-in runs the script
/// before it and reads its file; the ai stack reserves that many GPUs.
#[test]
fn the_agent_and_the_ai_stack_take_the_gpu_count() {
    let plan = Plan::load(&root().join("profiles/ai.toml")).unwrap();
    let dropin = plan
        .overlay_files
        .iter()
        .find(|f| f.target == "/etc/systemd/system/nodeforge-firstboot.service.d/nvidia-gpus.conf")
        .expect("the hardware's overlay adds the agent's drop-in");
    let text = read_text(&dropin.source);
    assert!(
        text.lines()
            .any(|l| l == "ExecStartPre=-/usr/libexec/nodeforge/nvidia-gpus"),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l == "EnvironmentFile=-/run/nodeforge/nvidia-gpus.env"),
        "{text}"
    );
    assert!(plan
        .overlay_files
        .iter()
        .any(|f| f.target == "/usr/libexec/nodeforge/nvidia-gpus" && f.executable));
    let compose = read_text(&root().join("stacks/ai/compose.yaml.tera"));
    assert!(
        compose.contains("count: ${NVIDIA_GPUS:-all}"),
        "the ai stack reserves NVIDIA_GPUS devices"
    );
    assert!(
        compose.contains("NVIDIA_VISIBLE_DEVICES: ${NVIDIA_VISIBLE_DEVICES:-all}"),
        "Ollama's own NVIDIA_VISIBLE_DEVICES=all is overridden"
    );
}

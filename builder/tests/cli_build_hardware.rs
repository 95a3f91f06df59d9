//! Offline build (fake base rootfs, every later step real) of a profile
//! on a hardware class with an overlay: the repository's own
//! overlays/nvidia-gpu/etc/docker/daemon.json lands in the image, and the
//! profile's storage rules reach the agent's baked config. Needs root.

mod common;

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Command, Stdio};

use common::{install_fake_rootfs, is_root, offline_build, stderr, Project};

fn repo_root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// Reads `path` from the root filesystem (partition 2) of `img` with debugfs.
fn root_file(img: &Path, scratch: &Path, path: &str) -> String {
    let parts = nodeforge::disk::gpt_table::read(img).unwrap();
    let root = scratch.join("root.ext4");
    if !root.exists() {
        let mut b = vec![0u8; parts[1].size as usize];
        fs::File::open(img)
            .unwrap()
            .read_exact_at(&mut b, parts[1].offset)
            .unwrap();
        fs::write(&root, b).unwrap();
    }
    let o = Command::new("debugfs")
        .args(["-R", &format!("cat {path}")])
        .arg(&root)
        .stderr(Stdio::null())
        .output()
        .expect("debugfs (e2fsprogs)");
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn hardware_overlay_and_storage_rules_reach_the_image() {
    if !is_root() {
        eprintln!("SKIPPED: builds need root");
        return;
    }
    let p = Project::new();
    let daemon =
        fs::read_to_string(repo_root().join("overlays/nvidia-gpu/etc/docker/daemon.json")).unwrap();
    p.write("overlays/nvidia-gpu/etc/docker/daemon.json", &daemon);
    p.write(
        "hardware/gpu.toml",
        "arch = \"amd64\"\nfirmware = \"uefi\"\npackages = [\"linux-image-amd64\", \"e2fsprogs\", \"fdisk\", \"util-linux\"]\noverlays = [\"nvidia-gpu\"]\n",
    );
    p.write(
        "profiles/x.toml",
        "name = \"x\"\nrole = \"test\"\nhardware = \"gpu\"\noverlays = [\"base\"]\n[disk]\nsize = \"800MiB\"\nesp_size = \"64MiB\"\n[[storage]]\nlabel = \"media\"\nmount = \"/srv/media\"\n[storage.match]\nlargest = true\n",
    );
    p.write("agent", "#!/bin/sh\necho fake agent\n");
    install_fake_rootfs(&p, "profiles/x.toml");
    let out = offline_build(&p, "profiles/x.toml", &[]);
    assert!(out.status.success(), "{}", stderr(&out));

    let img = p.path("out/x.img");
    let in_image = root_file(&img, p.dir.path(), "/etc/docker/daemon.json");
    assert_eq!(in_image, daemon);
    let json: serde_json::Value = serde_json::from_str(&in_image).unwrap();
    assert_eq!(
        json["runtimes"]["nvidia"]["path"],
        "nvidia-container-runtime"
    );
    // The hardware's overlay comes first; the profile's still applies.
    assert_eq!(root_file(&img, p.dir.path(), "/etc/role"), "test\n");

    let baked = root_file(&img, p.dir.path(), "/etc/nodeforge/firstboot.toml");
    let cfg = nodeforge_firstboot::config::BakedConfig::from_toml(&baked).unwrap();
    assert_eq!(cfg.storage.len(), 1, "{baked}");
    assert_eq!(cfg.storage[0].label, "media");
    assert_eq!(cfg.storage[0].mount, "/srv/media");
    assert!(cfg.storage[0].matcher.largest);
}

/// A node that joins a tailnet: tailscaled (from the `tailscale` package)
/// is enabled and gets the identity check before it starts; an image
/// without the package's unit is refused, naming it.
#[test]
fn a_tailnet_node_enables_tailscaled_with_the_identity_check() {
    assert!(
        is_root(),
        "builds need root: run the suite as root (.ci/run does)"
    );
    let p = Project::new();
    p.write("keys/ts.asc", include_str!("fixtures/test-repo-key.asc"));
    let fpr = include_str!("fixtures/test-repo-key.fpr").trim();
    p.write(
        "profiles/x.toml",
        &format!("name = \"x\"\nrole = \"test\"\nhardware = \"pc\"\npackages = [\"tailscale\"]\n[disk]\nsize = \"800MiB\"\nesp_size = \"64MiB\"\n[[apt.repositories]]\nname = \"tailscale\"\nurl = \"https://pkgs.tailscale.com/stable/debian\"\nsuite = \"trixie\"\ncomponents = [\"main\"]\nkey = \"../keys/ts.asc\"\nfingerprint = \"{fpr}\"\n[tailscale]\ntags = [\"tag:x\"]\n"),
    );
    p.write("agent", "#!/bin/sh\necho fake agent\n");
    install_fake_rootfs(&p, "profiles/x.toml");
    let out = offline_build(&p, "profiles/x.toml", &[]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("no tailscaled.service")
            && stderr(&out).contains("`tailscale` package"),
        "{}",
        stderr(&out)
    );

    // The package's unit in the base tree, as the real package installs it.
    p.write(
        "fake-rootfs/usr/lib/systemd/system/tailscaled.service",
        "[Service]\nExecStart=/usr/sbin/tailscaled\n[Install]\nWantedBy=multi-user.target\n",
    );
    common::store_rootfs_tree(&p, &p.path("fake-rootfs"), "profiles/x.toml");
    let out = offline_build(&p, "profiles/x.toml", &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let img = p.path("out/x.img");
    assert_eq!(
        root_file(
            &img,
            p.dir.path(),
            nodeforge_firstboot::TAILSCALED_DROPIN_PATH
        ),
        nodeforge_firstboot::TAILSCALED_DROPIN
    );
    let link = Command::new("debugfs")
        .args([
            "-R",
            "stat /etc/systemd/system/multi-user.target.wants/tailscaled.service",
        ])
        .arg(p.dir.path().join("root.ext4"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&link.stdout);
    assert!(
        text.contains("Type: symlink"),
        "tailscaled.service not enabled:\n{text}"
    );
    // The repository the node keeps updating from.
    let sources = root_file(
        &img,
        p.dir.path(),
        "/etc/apt/sources.list.d/tailscale.sources",
    );
    assert!(
        sources.contains("URIs: https://pkgs.tailscale.com/stable/debian"),
        "{sources}"
    );
}

//! Offline build (fake base rootfs, every later step real) of a profile
//! on a hardware class with an overlay: the repository's own
//! overlays/nvidia-gpu/etc/docker/daemon.json lands in the image, and the
//! profile's storage rules reach the agent's baked config. Needs root.

use crate::support::fake::{install_fake_rootfs, offline_build, store_rootfs_tree, write_agent};
use crate::support::image::Ext4;
use crate::support::{require_root, Project, FIXTURE_FPR, FIXTURE_KEY};

/// The root filesystem of the built out/x.img.
fn root_fs(p: &Project) -> Ext4 {
    Ext4::root_of(&p.path("out/x.img"), p.root())
}

#[test]
fn hardware_overlay_and_storage_rules_reach_the_image() {
    require_root();
    let p = Project::new();
    let daemon = p.copy_from_repo("overlays/nvidia-gpu/etc/docker/daemon.json");
    p.write(
        "hardware/gpu.toml",
        "arch = \"amd64\"\nfirmware = \"uefi\"\npackages = [\"linux-image-amd64\", \"e2fsprogs\", \"fdisk\", \"util-linux\"]\noverlays = [\"nvidia-gpu\"]\n",
    );
    p.write(
        "profiles/x.toml",
        "name = \"x\"\nrole = \"test\"\nhardware = \"gpu\"\noverlays = [\"base\"]\n[disk]\nsize = \"800MiB\"\nesp_size = \"64MiB\"\n[[storage]]\nlabel = \"media\"\nmount = \"/srv/media\"\n[storage.match]\nlargest = true\n",
    );
    write_agent(&p);
    install_fake_rootfs(&p, "profiles/x.toml");
    offline_build(&p, "profiles/x.toml", &[]);

    let root = root_fs(&p);
    let in_image = root.text("/etc/docker/daemon.json");
    assert_eq!(in_image, daemon);
    let json: serde_json::Value = serde_json::from_str(&in_image).unwrap();
    assert_eq!(
        json["runtimes"]["nvidia"]["path"],
        "nvidia-container-runtime"
    );
    // The hardware's overlay comes first; the profile's still applies.
    assert_eq!(root.text("/etc/role"), "test\n");

    let baked = root.text("/etc/nodeforge/firstboot.toml");
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
    require_root();
    let p = Project::new();
    p.write("keys/ts.asc", FIXTURE_KEY);
    let fpr = FIXTURE_FPR.trim();
    p.write(
        "profiles/x.toml",
        &format!("name = \"x\"\nrole = \"test\"\nhardware = \"pc\"\npackages = [\"tailscale\"]\n[disk]\nsize = \"800MiB\"\nesp_size = \"64MiB\"\n[[apt.repositories]]\nname = \"tailscale\"\nurl = \"https://pkgs.tailscale.com/stable/debian\"\nsuite = \"trixie\"\ncomponents = [\"main\"]\nkey = \"../keys/ts.asc\"\nfingerprint = \"{fpr}\"\n[tailscale]\ntags = [\"tag:x\"]\n"),
    );
    write_agent(&p);
    install_fake_rootfs(&p, "profiles/x.toml");
    p.fails(&crate::support::fake::build_args("profiles/x.toml", &[]))
        .stderr_has(&["no tailscaled.service", "`tailscale` package"]);

    // The package's unit in the base tree, as the real package installs it.
    p.write(
        "fake-rootfs/usr/lib/systemd/system/tailscaled.service",
        "[Service]\nExecStart=/usr/sbin/tailscaled\n[Install]\nWantedBy=multi-user.target\n",
    );
    store_rootfs_tree(&p, &p.path("fake-rootfs"), "profiles/x.toml");
    offline_build(&p, "profiles/x.toml", &[]);
    let root = root_fs(&p);
    assert_eq!(
        root.text(nodeforge_firstboot::TAILSCALED_DROPIN_PATH),
        nodeforge_firstboot::TAILSCALED_DROPIN
    );
    let text = root.debugfs("stat /etc/systemd/system/multi-user.target.wants/tailscaled.service");
    assert!(
        text.contains("Type: symlink"),
        "tailscaled.service not enabled:\n{text}"
    );
    // The repository the node keeps updating from.
    let sources = root.text("/etc/apt/sources.list.d/tailscale.sources");
    assert!(
        sources.contains("URIs: https://pkgs.tailscale.com/stable/debian"),
        "{sources}"
    );
}

//! A throwaway project tree (profiles/, hardware/, overlays/) for CLI tests.

#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const HARDWARE: &str =
    "arch = \"amd64\"\nfirmware = \"uefi\"\npackages = [\"linux-image-amd64\"]\n";
/// What a profile that joins a tailnet needs (profiles/node.toml has the
/// same): the client and Tailscale's repository, its key by URL (nothing
/// is fetched unless a build runs).
pub const TAILSCALE_CLIENT: &str = "packages = [\"tailscale\"]\n\
[[apt.repositories]]\nname = \"tailscale\"\nurl = \"https://pkgs.tailscale.com/stable/debian\"\n\
suite = \"trixie\"\ncomponents = [\"main\"]\n\
key_url = \"https://pkgs.tailscale.com/stable/debian/trixie.noarmor.gpg\"\n\
fingerprint = \"2596A99EAAB33821893C0A79458CA832957F5868\"\n";

pub const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHyGOnXmwtm0ELRLdSgkTCO3FxNX3S5ITSp8lQgldASP test@nodeforge";

pub struct Project {
    pub dir: tempfile::TempDir,
}

impl Project {
    pub fn new() -> Self {
        let p = Project {
            dir: tempfile::tempdir().unwrap(),
        };
        p.write("hardware/pc.toml", HARDWARE);
        fs::create_dir_all(p.path("overlays/base/etc")).unwrap();
        p.write("overlays/base/etc/role.tera", "{{ role }}\n");
        p
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn write(&self, rel: &str, text: &str) -> PathBuf {
        let p = self.path(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, text).unwrap();
        p
    }

    pub fn nodeforge(&self, args: &[&str]) -> Output {
        self.nodeforge_with_path(args, None)
    }

    /// Runs the CLI with extra environment variables.
    pub fn nodeforge_with_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_nodeforge"))
            .args(args)
            .current_dir(self.dir.path())
            .envs(env.iter().copied())
            .output()
            .unwrap()
    }

    /// Runs the CLI with `extra_path` in front of PATH (fake tools).
    pub fn nodeforge_with_path(&self, args: &[&str], extra_path: Option<&Path>) -> Output {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_nodeforge"));
        cmd.args(args).current_dir(self.dir.path());
        if let Some(extra) = extra_path {
            let path = std::env::var_os("PATH").unwrap_or_default();
            let mut paths = vec![extra.to_path_buf()];
            paths.extend(std::env::split_paths(&path));
            cmd.env("PATH", std::env::join_paths(paths).unwrap());
        }
        cmd.output().unwrap()
    }
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn is_root() -> bool {
    nix_is_root()
}

fn nix_is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc_geteuid() == 0 }
}

extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

const PASSWD: &str = "root:x:0:0:root:/root:/bin/bash\n";
const GROUP: &str = "root:x:0:\nsudo:x:27:\nshadow:x:42:\n";
const STATUS: &str =
    "Package: systemd\nStatus: install ok installed\nArchitecture: amd64\nVersion: 257.9-1\n\n";

/// A project with `profiles/x.toml` (one sudo user, an overlay), a fake
/// agent file `agent` and the fake rootfs in its cache: what [`BUILD_X`]
/// builds.
pub fn x_project() -> Project {
    let p = Project::new();
    p.write(
        "profiles/x.toml",
        &format!("name = \"x\"\nrole = \"test\"\nhardware = \"pc\"\noverlays = [\"base\"]\n[[users]]\nname = \"admin\"\nsudo = true\nauthorized_keys = [\"{KEY}\"]\n[disk]\nsize = \"800MiB\"\nesp_size = \"64MiB\"\n"),
    );
    p.write("agent", "#!/bin/sh\necho fake agent\n");
    install_fake_rootfs(&p, "profiles/x.toml");
    p
}

/// Puts a small fake base rootfs into `p`'s cache/ under the key the plan
/// of `profile` computes, so a build runs every later step for real
/// without mmdebstrap or a network.
pub fn install_fake_rootfs(p: &Project, profile: &str) {
    // The fake base rootfs, stored where the plan says its cache entry is.
    let tree = p.path("fake-rootfs");
    for (rel, text) in [
        ("etc/passwd", PASSWD),
        ("etc/group", GROUP),
        ("etc/shadow", "root:*:19000:0:99999:7:::\n"),
        ("etc/gshadow", "root:*::\nsudo:*::\n"),
        ("etc/skel/.profile", "# profile\n"),
        ("var/lib/dpkg/status", STATUS),
        ("boot/vmlinuz-6.1.0-test", "kernel"),
        ("boot/initrd.img-6.1.0-test", "initrd"),
        ("usr/lib/systemd/boot/efi/systemd-bootx64.efi", "sd-boot"),
    ] {
        let f = tree.join(rel);
        fs::create_dir_all(f.parent().unwrap()).unwrap();
        fs::write(f, text).unwrap();
    }
    store_rootfs_tree(p, &tree, profile);
}

/// The SOURCE_DATE_EPOCH of the tests that fix one.
pub const TEST_EPOCH: &str = "1763600000";

/// Stores `tree` as the cached base rootfs of `profile` in `p`'s cache/,
/// under the keys the plan computes without an epoch and with
/// [`TEST_EPOCH`] (the epoch is part of the key).
pub fn store_rootfs_tree(p: &Project, tree: &Path, profile: &str) {
    fs::create_dir_all(p.path("cache/rootfs")).unwrap();
    for epoch in [None, Some(TEST_EPOCH)] {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_nodeforge"));
        cmd.args(["plan", "--json", profile])
            .current_dir(p.dir.path());
        match epoch {
            Some(e) => cmd.env("SOURCE_DATE_EPOCH", e),
            None => cmd.env_remove("SOURCE_DATE_EPOCH"),
        };
        let plan = cmd.output().unwrap();
        assert!(plan.status.success(), "{}", stderr(&plan));
        let plan: serde_json::Value = serde_json::from_slice(&plan.stdout).unwrap();
        let key = plan["rootfs_key"].as_str().unwrap();
        let tar = p.path(&format!("cache/rootfs/{key}.tar.zst"));
        let ok = Command::new("tar")
            .arg("--zstd")
            .arg("-cf")
            .arg(&tar)
            .arg("-C")
            .arg(tree)
            .arg(".")
            .status()
            .unwrap();
        assert!(
            ok.success(),
            "packing {} into {}",
            tree.display(),
            tar.display()
        );
    }
}

/// Runs a filesystem checker (`fsck.vfat -n`, `e2fsck -fn`) on `target`
/// and fails the test with its output unless it finds the filesystem clean.
pub fn assert_fsck_clean(program: &str, flag: &str, target: &Path) {
    let out = Command::new(program)
        .arg(flag)
        .arg(target)
        .output()
        .unwrap_or_else(|e| {
            panic!("running {program} (install it: nodeforge doctor --install): {e}")
        });
    assert!(
        out.status.success(),
        "{program} {flag} {}:\n{}",
        target.display(),
        String::from_utf8_lossy(&out.stdout)
    );
}

/// `nodeforge build profiles/x.toml` into out/ with cache/ and the fake
/// agent file `agent` (see [`install_fake_rootfs`]).
pub const BUILD_X: &[&str] = &[
    "build",
    "profiles/x.toml",
    "--output",
    "out",
    "--cache-dir",
    "cache",
    "--agent",
    "agent",
];

/// [`BUILD_X`] for `profile`, with `extra` arguments.
pub fn offline_build(p: &Project, profile: &str, extra: &[&str]) -> Output {
    let mut args = BUILD_X.to_vec();
    args[1] = profile;
    args.extend_from_slice(extra);
    p.nodeforge(&args)
}

//! `nodeforge doctor`: the host programs a build and a boot need, and
//! (`--install`) apt installing the missing ones.

use std::fs;
use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::exec::{find_program, Cmd};

#[derive(Debug, Clone, Copy)]
enum Probe {
    Program(&'static str),
    File(&'static str),
}

#[derive(Debug, Clone, Copy)]
pub struct Requirement {
    pub what: &'static str,
    probe: Probe,
    pub package: &'static str,
    /// On Debian bookworm this comes from bookworm-backports (QEMU must
    /// match the backported qemu-utils).
    pub backports: bool,
}

const fn req(
    what: &'static str,
    probe: Probe,
    package: &'static str,
    backports: bool,
) -> Requirement {
    Requirement {
        what,
        probe,
        package,
        backports,
    }
}

pub const REQUIREMENTS: &[Requirement] = &[
    req(
        "bootstrap Debian",
        Probe::Program("mmdebstrap"),
        "mmdebstrap",
        true,
    ),
    req(
        "ext4 root filesystem",
        Probe::Program("mkfs.ext4"),
        "e2fsprogs",
        true,
    ),
    req("unpack cached rootfs", Probe::Program("tar"), "tar", false),
    req(
        "boot x86-64 images",
        Probe::Program("qemu-system-x86_64"),
        "qemu-system-x86",
        true,
    ),
    req(
        "boot arm64 images",
        Probe::Program("qemu-system-aarch64"),
        "qemu-system-arm",
        true,
    ),
    req(
        "UEFI firmware for x86-64",
        Probe::File("/usr/share/OVMF/OVMF_CODE_4M.fd"),
        "ovmf",
        false,
    ),
    req(
        "qcow2 output",
        Probe::Program("qemu-img"),
        "qemu-utils",
        true,
    ),
    req(
        "check GPT (tests)",
        Probe::Program("sgdisk"),
        "gdisk",
        false,
    ),
    req(
        "check FAT (tests)",
        Probe::Program("fsck.vfat"),
        "dosfstools",
        false,
    ),
    req(
        "OCI registry (tests)",
        Probe::Program("docker-registry"),
        "docker-registry",
        false,
    ),
    req(
        "busybox for test images (tests)",
        Probe::File("/bin/busybox"),
        "busybox-static",
        false,
    ),
];

impl Requirement {
    pub fn present(&self) -> bool {
        match self.probe {
            Probe::Program(p) => find_program(p).is_some(),
            Probe::File(f) => Path::new(f).is_file(),
        }
    }

    pub fn probe_name(&self) -> &'static str {
        match self.probe {
            Probe::Program(p) | Probe::File(p) => p,
        }
    }
}

/// One line per requirement; returns the missing ones.
pub fn report() -> (String, Vec<Requirement>) {
    let mut text = String::new();
    let mut missing = Vec::new();
    for r in REQUIREMENTS {
        let ok = r.present();
        text.push_str(&format!(
            "{} {:<26} {:<32} (package {})\n",
            if ok { "ok     " } else { "MISSING" },
            r.what,
            r.probe_name(),
            r.package
        ));
        if !ok {
            missing.push(*r);
        }
    }
    (text, missing)
}

const BACKPORTS_SOURCE: &str = "/etc/apt/sources.list.d/nodeforge-bookworm-backports.sources";

/// Installs the missing requirements with apt.
pub fn install(missing: &[Requirement]) -> Result<()> {
    if missing.is_empty() {
        return Ok(());
    }
    if !nix::unistd::geteuid().is_root() {
        bail!("installing packages needs root: run `sudo nodeforge doctor --install`");
    }
    let bookworm = debian_codename().as_deref() == Some("bookworm");
    if bookworm && missing.iter().any(|r| r.backports) {
        ensure_backports()?;
    }
    let apt = |args: &[&str]| {
        Cmd::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(args)
            .inherit_output()
            .run()
    };
    apt(&["update"]).context("updating apt's package lists")?;
    let (bpo, plain): (Vec<&Requirement>, Vec<&Requirement>) =
        missing.iter().partition(|r| bookworm && r.backports);
    if !plain.is_empty() {
        let mut args = vec!["install", "-y", "--no-install-recommends"];
        args.extend(plain.iter().map(|r| r.package));
        apt(&args).context("installing host packages")?;
    }
    if !bpo.is_empty() {
        let mut args = vec![
            "install",
            "-y",
            "--no-install-recommends",
            "-t",
            "bookworm-backports",
        ];
        args.extend(bpo.iter().map(|r| r.package));
        apt(&args).context("installing host packages from bookworm-backports")?;
    }
    Ok(())
}

fn debian_codename() -> Option<String> {
    let text = fs::read_to_string("/etc/os-release").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
        .map(|v| v.trim_matches('"').to_owned())
}

fn ensure_backports() -> Result<()> {
    let has = |dir: &str| {
        fs::read_dir(dir)
            .map(|entries| {
                entries.filter_map(|e| e.ok()).any(|e| {
                    fs::read_to_string(e.path())
                        .map(|t| t.contains("bookworm-backports"))
                        .unwrap_or(false)
                })
            })
            .unwrap_or(false)
    };
    let in_main = fs::read_to_string("/etc/apt/sources.list")
        .map(|t| t.contains("bookworm-backports"))
        .unwrap_or(false);
    if in_main || has("/etc/apt/sources.list.d") {
        return Ok(());
    }
    fs::write(
        BACKPORTS_SOURCE,
        "Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n",
    )
    .with_context(|| format!("writing {BACKPORTS_SOURCE}"))
}

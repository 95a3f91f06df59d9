//! `nodeforge doctor`: the host programs a build and a boot need, and
//! (`--install`) apt installing the missing ones.

use std::fs;
use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::binfmt;
use crate::exec::{find_program, Cmd};
use crate::profile::Arch;

#[derive(Debug, Clone, Copy)]
enum Probe {
    Program(&'static str),
    File(&'static str),
    /// qemu-user registered with binfmt_misc for this architecture.
    Binfmt(Arch),
    /// The Rust standard library for this target is installed.
    RustTarget(&'static str),
}

/// How `--install` provides a missing requirement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fix {
    Apt {
        package: &'static str,
        /// On Debian bookworm this comes from bookworm-backports (QEMU
        /// must match the backported qemu-utils).
        backports: bool,
    },
    /// Mount binfmt_misc and run systemd-binfmt (after the apt packages).
    Binfmt,
    /// `rustup target add`.
    Rustup(&'static str),
}

#[derive(Debug, Clone, Copy)]
pub struct Requirement {
    pub what: &'static str,
    probe: Probe,
    pub fix: Fix,
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
        fix: Fix::Apt { package, backports },
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
        "check MBR (tests)",
        Probe::Program("sfdisk"),
        "fdisk",
        false,
    ),
    req(
        "decompress kernel modules",
        Probe::Program("xz"),
        "xz-utils",
        false,
    ),
    req(
        "module index for arm64 images",
        Probe::Program("depmod"),
        "kmod",
        false,
    ),
    req(
        "CA links for arm64 images",
        Probe::Program("openssl"),
        "openssl",
        false,
    ),
    req(
        "run arm64 programs",
        Probe::Program("qemu-aarch64-static"),
        "qemu-user-static",
        true,
    ),
    Requirement {
        what: "arm64 emulation in chroots",
        probe: Probe::Binfmt(Arch::Arm64),
        fix: Fix::Binfmt,
    },
    req(
        "UEFI firmware for arm64",
        Probe::File("/usr/share/AAVMF/AAVMF_CODE.fd"),
        "qemu-efi-aarch64",
        false,
    ),
    req(
        "link the arm64 agent",
        Probe::Program("aarch64-linux-gnu-gcc"),
        "gcc-aarch64-linux-gnu",
        false,
    ),
    req(
        "arm64 C library for linking",
        Probe::File("/usr/aarch64-linux-gnu/lib/crt1.o"),
        "libc6-dev-arm64-cross",
        false,
    ),
    Requirement {
        what: "build the arm64 agent",
        probe: Probe::RustTarget("aarch64-unknown-linux-gnu"),
        fix: Fix::Rustup("aarch64-unknown-linux-gnu"),
    },
    req(
        "OCI registry (tests)",
        Probe::Program("docker-registry"),
        "docker-registry",
        false,
    ),
    req(
        "netboot root filesystem",
        Probe::Program("mksquashfs"),
        "squashfs-tools",
        false,
    ),
    req(
        "iPXE for TFTP clients (serve --tftp)",
        Probe::File("/usr/lib/ipxe/undionly.kpxe"),
        "ipxe",
        false,
    ),
    req(
        "iPXE ROMs for netboot guests",
        Probe::File("/usr/lib/ipxe/qemu/efi-virtio.rom"),
        "ipxe-qemu",
        false,
    ),
    req(
        "fetch over HTTP and TFTP (tests, benches)",
        Probe::Program("curl"),
        "curl",
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
            Probe::Binfmt(arch) => binfmt::problem(arch).is_none(),
            Probe::RustTarget(t) => rust_target_installed(t),
        }
    }

    pub fn probe_name(&self) -> &'static str {
        match self.probe {
            Probe::Program(p) | Probe::File(p) | Probe::RustTarget(p) => p,
            Probe::Binfmt(arch) => binfmt::entry_name(arch),
        }
    }

    /// How to get it, for the report.
    pub fn remedy(&self) -> String {
        match self.fix {
            Fix::Apt { package, .. } => format!("package {package}"),
            Fix::Binfmt => "systemd-binfmt".into(),
            Fix::Rustup(t) => format!("rustup target add {t}"),
        }
    }
}

/// Whether rustc has the standard library for `target`.
fn rust_target_installed(target: &str) -> bool {
    Cmd::new("rustc")
        .args(["--print", "sysroot"])
        .stdout_text()
        .map(|root| {
            Path::new(root.trim())
                .join("lib/rustlib")
                .join(target)
                .join("lib")
                .is_dir()
        })
        .unwrap_or(false)
}

/// One line per requirement; returns the missing ones.
pub fn report() -> (String, Vec<Requirement>) {
    let mut text = String::new();
    let mut missing = Vec::new();
    for r in REQUIREMENTS {
        let ok = r.present();
        text.push_str(&format!(
            "{} {:<27} {:<32} ({})\n",
            if ok { "ok     " } else { "MISSING" },
            r.what,
            r.probe_name(),
            r.remedy()
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
    let apt_missing: Vec<(&'static str, bool)> = missing
        .iter()
        .filter_map(|r| match r.fix {
            Fix::Apt { package, backports } => Some((package, backports)),
            _ => None,
        })
        .collect();
    if !apt_missing.is_empty() {
        install_apt(&apt_missing, bookworm)?;
    }
    if missing.iter().any(|r| r.fix == Fix::Binfmt) {
        binfmt::enable()?;
    }
    for r in missing {
        if let Fix::Rustup(target) = r.fix {
            Cmd::new("rustup")
                .args(["target", "add", target])
                .inherit_output()
                .run()
                .with_context(|| format!("adding the Rust target {target}"))?;
        }
    }
    Ok(())
}

fn install_apt(missing: &[(&'static str, bool)], bookworm: bool) -> Result<()> {
    if bookworm && missing.iter().any(|(_, bpo)| *bpo) {
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
    let (bpo, plain): (Vec<_>, Vec<_>) = missing.iter().partition(|(_, b)| bookworm && *b);
    if !plain.is_empty() {
        let mut args = vec!["install", "-y", "--no-install-recommends"];
        args.extend(plain.iter().map(|(p, _)| *p));
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
        args.extend(bpo.iter().map(|(p, _)| *p));
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

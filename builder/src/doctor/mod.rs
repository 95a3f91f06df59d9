//! `nodeforge doctor`: the host programs a build and a boot need (the one
//! list is in table.rs), and (`--install`) installing the missing ones.

use std::fs;
use std::path::Path;

use anyhow::{bail, Context, Result};

mod compose;
mod table;
#[cfg(test)]
mod table_tests;

pub use compose::COMPOSE_BIN;
pub use table::REQUIREMENTS;

use crate::binfmt;
use crate::exec::{find_program, Cmd};
use crate::profile::Arch;

/// Debian's CA bundle (ca-certificates).
const CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

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
    /// trixie's docker-compose v2 at [`COMPOSE_BIN`] (bookworm's is the
    /// old Python one).
    TrixieCompose,
}

#[derive(Debug, Clone, Copy)]
pub struct Requirement {
    pub what: &'static str,
    probe: Probe,
    pub fix: Fix,
}

impl Requirement {
    pub fn present(&self) -> bool {
        let found = match self.probe {
            Probe::Program(p) => find_program(p).is_some(),
            Probe::File(f) => Path::new(f).is_file(),
            Probe::Binfmt(arch) => binfmt::problem(arch).is_none(),
            Probe::RustTarget(t) => rust_target_installed(t),
        };
        match self.fix {
            // bookworm's own version is there on a fresh machine, but too old.
            Fix::Apt {
                package,
                backports: true,
            } if found && is_bookworm() => installed_version(package).contains("~bpo"),
            _ => found,
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
            Fix::Apt {
                package,
                backports: true,
            } if is_bookworm() => format!("package {package} from bookworm-backports"),
            Fix::Apt { package, .. } => format!("package {package}"),
            Fix::Binfmt => "systemd-binfmt".into(),
            Fix::Rustup(t) => format!("rustup target add {t}"),
            Fix::TrixieCompose => "docker-compose from trixie".into(),
        }
    }
}

/// The apt packages of the table, each once, in table order; `backports`
/// selects those that come from bookworm-backports on bookworm.
pub fn apt_packages(backports: bool) -> Vec<&'static str> {
    let mut out: Vec<&'static str> = Vec::new();
    for r in REQUIREMENTS {
        if let Fix::Apt {
            package,
            backports: b,
        } = r.fix
        {
            if b == backports && !out.contains(&package) {
                out.push(package);
            }
        }
    }
    out
}

/// Fails unless `program` is on this host, naming the package that has it
/// and what needs it, before a step that would fail obscurely without it.
pub fn require_program(program: &str, needed_for: &str) -> Result<()> {
    match find_program(program) {
        Some(_) => Ok(()),
        None => Err(missing_program(program, needed_for)),
    }
}

fn missing_program(program: &str, needed_for: &str) -> anyhow::Error {
    let package = REQUIREMENTS
        .iter()
        .find(|r| matches!(r.probe, Probe::Program(p) if p == program))
        .map(|r| r.remedy())
        .unwrap_or_else(|| format!("the package that has {program}"));
    anyhow::anyhow!(
        "{needed_for} needs {program}, which is not installed on this host: install {package} \
         (`nodeforge doctor --install` or scripts/host-packages.sh does)"
    )
}

/// The installed version of a Debian package, empty when not installed.
pub fn installed_version(package: &str) -> String {
    Cmd::new("dpkg-query")
        .args(["--show", "--showformat=${Version}", package])
        .stdout_text()
        .unwrap_or_default()
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
/// One requirement as `doctor --json` reports it.
#[derive(Debug, serde::Serialize)]
pub struct Checked {
    pub what: &'static str,
    /// The program or file looked for.
    pub probe: String,
    pub present: bool,
    /// How to get it (the package, and its suite when a backport).
    pub remedy: String,
}

/// Every requirement, checked.
pub fn checks() -> Vec<Checked> {
    REQUIREMENTS
        .iter()
        .map(|r| Checked {
            what: r.what,
            probe: r.probe_name().to_owned(),
            present: r.present(),
            remedy: r.remedy(),
        })
        .collect()
}

pub fn report() -> (String, Vec<Requirement>) {
    let mut text = String::new();
    let mut missing = Vec::new();
    for r in REQUIREMENTS {
        let ok = r.present();
        text.push_str(&format!(
            "{} {:<34} {:<40} ({})\n",
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
    let bookworm = is_bookworm();
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
    if missing.iter().any(|r| r.fix == Fix::TrixieCompose) {
        compose::install()?;
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

fn is_bookworm() -> bool {
    debian_codename().as_deref() == Some("bookworm")
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

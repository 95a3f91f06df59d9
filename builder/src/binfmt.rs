//! Running foreign-architecture programs during a build: mmdebstrap
//! chroots into an arm64 tree on an x86-64 host, and the kernel hands each
//! arm64 program to qemu-user through binfmt_misc. The registration must
//! carry the F flag (interpreter opened at registration) so it works
//! inside the chroot, which has no qemu of its own.

use std::fs;
use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::build::host_arch;
use crate::exec::Cmd;
use crate::profile::Arch;

const BINFMT_DIR: &str = "/proc/sys/fs/binfmt_misc";
const SYSTEMD_BINFMT: &str = "/usr/lib/systemd/systemd-binfmt";

/// The binfmt_misc entry qemu-user registers for `arch`.
pub fn entry_name(arch: Arch) -> &'static str {
    match arch {
        Arch::Amd64 => "qemu-x86_64",
        Arch::Arm64 => "qemu-aarch64",
    }
}

/// What is wrong with the registration for `arch`, if anything.
pub fn problem(arch: Arch) -> Option<String> {
    if arch == host_arch() {
        return None;
    }
    problem_in(Path::new(BINFMT_DIR), arch)
}

fn problem_in(dir: &Path, arch: Arch) -> Option<String> {
    if !dir.join("status").exists() {
        return Some(format!("binfmt_misc is not mounted at {}", dir.display()));
    }
    let name = entry_name(arch);
    let Ok(text) = fs::read_to_string(dir.join(name)) else {
        return Some(format!("no {name} binfmt_misc entry is registered"));
    };
    if text.lines().next() != Some("enabled") {
        return Some(format!("the {name} binfmt_misc entry is disabled"));
    }
    let flags = text
        .lines()
        .find_map(|l| l.strip_prefix("flags: "))
        .unwrap_or("");
    if !flags.contains('F') {
        return Some(format!(
            "the {name} binfmt_misc entry lacks the F flag, so it does not work inside a chroot \
             (register it from qemu-user-static's binfmt.d file)"
        ));
    }
    None
}

/// Fails with the exact commands that fix a missing registration.
pub fn require(arch: Arch) -> Result<()> {
    if let Some(why) = problem(arch) {
        bail!(
            "building an {} image on this {} host runs its programs through qemu-user, but {why}. \
             Enable it with `nodeforge doctor --install`, or by hand as root:\n  \
             apt-get install qemu-user-static\n  \
             mount -t binfmt_misc binfmt_misc {BINFMT_DIR}   # if not mounted\n  \
             {SYSTEMD_BINFMT}",
            arch.debian(),
            host_arch().debian()
        );
    }
    Ok(())
}

/// Mounts binfmt_misc if needed and registers the qemu-user interpreters
/// from /usr/lib/binfmt.d (installed by qemu-user-static).
pub fn enable() -> Result<()> {
    if !Path::new(BINFMT_DIR).join("status").exists() {
        Cmd::new("mount")
            .args(["-t", "binfmt_misc", "binfmt_misc", BINFMT_DIR])
            .run()
            .context("mounting binfmt_misc")?;
    }
    Cmd::new(SYSTEMD_BINFMT)
        .run()
        .context("registering the qemu-user interpreters with systemd-binfmt")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What an arm64 build finds wrong in a binfmt_misc folder holding
    /// `files` (name, contents).
    fn problem_with(files: &[(&str, &str)]) -> Option<String> {
        let d = tempfile::tempdir().unwrap();
        for (name, contents) in files {
            fs::write(d.path().join(name), contents).unwrap();
        }
        problem_in(d.path(), Arch::Arm64)
    }

    #[test]
    fn registration_states_are_told_apart() {
        let mounted = ("status", "enabled\n");
        let registered = |text| [mounted, ("qemu-aarch64", text)];
        assert!(problem_with(&[]).unwrap().contains("not mounted"));
        assert!(problem_with(&[mounted])
            .unwrap()
            .contains("no qemu-aarch64"));
        for (registration, says) in [
            (
                "disabled\ninterpreter /usr/bin/qemu-aarch64\nflags: POCF\n",
                "disabled",
            ),
            (
                "enabled\ninterpreter /usr/bin/qemu-aarch64\nflags: OC\n",
                "F flag",
            ),
        ] {
            let problem = problem_with(&registered(registration)).unwrap();
            assert!(problem.contains(says), "{problem}");
        }
        let good =
            "enabled\ninterpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P\nflags: POF\noffset 0\n";
        assert_eq!(problem_with(&registered(good)), None);
    }

    #[test]
    fn the_host_architecture_needs_no_emulator() {
        assert_eq!(problem(host_arch()), None);
    }
}

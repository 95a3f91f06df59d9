//! A throwaway project tree (profiles/, hardware/, overlays/) for CLI tests.

#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const HARDWARE: &str =
    "arch = \"amd64\"\nfirmware = \"uefi\"\npackages = [\"linux-image-amd64\"]\n";
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

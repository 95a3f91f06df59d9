//! What the integration tests share: a throwaway project tree and the CLI
//! run in it ([`cli`]), build step events ([`events`]), files read back
//! from built images ([`image`]), scratch disk images ([`scratch`]), the
//! fake base rootfs builds start from ([`fake`]), flash helpers
//! ([`flash`]), the roles and access matrix read from data ([`roles`]) and
//! the host requirements a test states before it starts ([`require`]).
//!
//! Every helper panics naming the file, command or object it failed on.

#![allow(dead_code)] // not every module uses every helper

pub mod cli;
pub mod events;
pub mod fake;
pub mod flash;
pub mod image;
pub mod overlay;
pub mod require;
pub mod roles;
pub mod scratch;
pub mod serve;

use std::fs;
use std::path::{Path, PathBuf};

pub use cli::{Project, Run};
pub use require::{require_loop, require_root, require_tool};

/// An SSH public key for test users.
pub const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHyGOnXmwtm0ELRLdSgkTCO3FxNX3S5ITSp8lQgldASP test@nodeforge";

/// A test-only OpenPGP key and its fingerprint (tests/fixtures/).
pub const FIXTURE_KEY: &str = include_str!("../../fixtures/test-repo-key.asc");
pub const FIXTURE_FPR: &str = include_str!("../../fixtures/test-repo-key.fpr");

/// The fingerprint of [`FIXTURE_KEY`], without the file's newline.
pub fn fixture_fpr() -> &'static str {
    FIXTURE_FPR.trim()
}

/// The workspace: profiles/, hardware/, overlays/, stacks/, keys/.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("builder/ has a parent")
        .to_path_buf()
}

/// builder/tests/fixtures/`rel`.
pub fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel)
}

pub fn read_text(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

pub fn read_bytes(path: &Path) -> Vec<u8> {
    fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// Writes `data` to `path`, creating its directory.
pub fn write_file(path: &Path, data: impl AsRef<[u8]>) {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
    }
    fs::write(path, data).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}

/// Copies the tree at `from` to `to` (files and directories; links are
/// followed).
pub fn copy_tree(from: &Path, to: &Path) {
    let meta = fs::metadata(from).unwrap_or_else(|e| panic!("reading {}: {e}", from.display()));
    if meta.is_dir() {
        fs::create_dir_all(to).unwrap_or_else(|e| panic!("creating {}: {e}", to.display()));
        let entries =
            fs::read_dir(from).unwrap_or_else(|e| panic!("listing {}: {e}", from.display()));
        for e in entries {
            let e = e.unwrap_or_else(|e| panic!("listing {}: {e}", from.display()));
            copy_tree(&e.path(), &to.join(e.file_name()));
        }
    } else {
        fs::copy(from, to)
            .unwrap_or_else(|e| panic!("copying {} to {}: {e}", from.display(), to.display()));
    }
}

/// Marks `path` executable (scripts standing in for host tools).
pub fn make_executable(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(0o755))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}

//! Scratch files for the unit tests: most of them want one file in a
//! directory of its own that goes away when the test ends.

use std::path::PathBuf;

use tempfile::TempDir;

/// A fresh directory and the path of `name` in it (not created yet). The
/// directory, and the file with it, is removed when the guard is dropped.
pub fn scratch_path(name: &str) -> (TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("creating a scratch directory");
    let path = dir.path().join(name);
    (dir, path)
}

/// [`scratch_path`] with the file written, holding `contents`.
pub fn scratch_file(name: &str, contents: impl AsRef<[u8]>) -> (TempDir, PathBuf) {
    let (dir, path) = scratch_path(name);
    std::fs::write(&path, contents).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    (dir, path)
}

/// `program` on PATH (or in the sbin folders), from Debian's `package`. A
/// test that needs it fails saying how to get it: one that passed without
/// running would hide the gap.
pub fn require_program(program: &str, package: &str) -> PathBuf {
    crate::exec::find_program(program).unwrap_or_else(|| {
        panic!("{program} is missing: apt-get install {package} (scripts/host-packages.sh)")
    })
}

/// Asserts that `message` (an error, say) holds each of `wants`.
pub fn assert_says(message: impl std::fmt::Display, wants: &[&str]) {
    let message = message.to_string();
    for want in wants {
        assert!(message.contains(want), "{want:?} is not in: {message}");
    }
}

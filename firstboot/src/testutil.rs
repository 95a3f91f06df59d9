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

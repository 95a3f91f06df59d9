//! Test helpers: blank files and small disk images with a partition table,
//! for the unit tests of the disk, bmap and boot code.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use tempfile::TempDir;

use super::{gpt_table, mbr, DiskLayout, TableKind};

/// A new empty file at `path` (truncated if it was there), open for
/// reading and writing.
pub fn blank_file(path: &Path) -> File {
    OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("creating {}: {e}", path.display()))
}

/// `path` made a sparse image of `layout`'s size holding its partition
/// table (GPT or MBR, as the layout says), and nothing else.
pub fn with_table(path: &Path, layout: &DiskLayout) -> File {
    let f = blank_file(path);
    f.set_len(layout.size).unwrap();
    match layout.table {
        TableKind::Gpt => gpt_table::write(&f, path, layout).unwrap(),
        TableKind::Mbr => mbr::write(&f, path, layout).unwrap(),
    }
    f
}

/// A scratch directory holding `d.img`, a disk of `layout` made by
/// [`with_table`]; dropping the guard removes it.
pub fn scratch_disk(layout: &DiskLayout) -> (TempDir, PathBuf) {
    let (dir, path) = crate::testutil::scratch_path("d.img");
    with_table(&path, layout);
    (dir, path)
}

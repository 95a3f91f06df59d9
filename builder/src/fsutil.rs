//! File helpers: atomic writes and hashing.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

/// The temporary name a file is written under before it is renamed into
/// place, so that an interrupted write never leaves a file under `path`.
pub fn partial_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.partial"))
}

/// A temp name for `path` of this writer's own (process and call), for
/// files that several processes may write at once.
pub fn private_partial_path(path: &Path) -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static WRITES: AtomicU64 = AtomicU64::new(0);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(
        ".{name}.{}-{}.partial",
        std::process::id(),
        WRITES.fetch_add(1, Ordering::Relaxed)
    ))
}

/// Writes `contents` to `path` atomically: temp file, fsync, rename, fsync
/// of the directory. The temp name is this writer's own (process and
/// call), so writers of the same file at once (builds sharing a cache)
/// never write into each other's temp file; the last rename wins.
pub fn atomic_write(path: &Path, contents: &[u8]) -> Result<()> {
    let tmp = private_partial_path(path);
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(contents)
        .and_then(|_| f.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    drop(f);
    commit_partial(&tmp, path)
}

/// Renames a finished temp file into place and makes the rename durable.
pub fn commit_partial(tmp: &Path, path: &Path) -> Result<()> {
    fs::rename(tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    sync_parent(path)
}

/// Opens (creating it and its directory) the file `path` to take an
/// flock on: the caches' entry and writer locks.
pub fn lock_file(path: &Path) -> Result<File> {
    if let Some(d) = path.parent() {
        fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .with_context(|| format!("opening lock {}", path.display()))
}

/// fsyncs the directory holding `path` so a rename in it survives a crash.
pub fn sync_parent(path: &Path) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing directory {}", dir.display()))
}

/// Bytes an unprivileged writer may still use on the filesystem holding
/// `dir`.
pub fn free_bytes(dir: &Path) -> Result<u64> {
    let vfs = nix::sys::statvfs::statvfs(dir)
        .with_context(|| format!("checking free space in {}", dir.display()))?;
    Ok(vfs.blocks_available() as u64 * vfs.fragment_size() as u64)
}

/// Fails, naming the directory and both sizes, when the filesystem holding
/// `dir` has less than `needed` bytes free: a build that would stop half
/// way with ENOSPC says so before it writes anything.
pub fn require_free_space(dir: &Path, needed: u64, what: &str) -> Result<()> {
    let free = free_bytes(dir)?;
    if free < needed {
        anyhow::bail!(
            "not enough free space in {}: {what} needs about {} MiB, {} MiB are free. \
             Free some space there (for example `nodeforge cache prune --max-size 5G`) \
             or choose another directory",
            dir.display(),
            needed.div_ceil(1 << 20),
            free / (1 << 20)
        );
    }
    Ok(())
}

/// Bytes the regular files under `root` take once written into a
/// filesystem with 4 KiB blocks (directories and symlinks count one block).
pub fn tree_bytes(root: &Path) -> Result<u64> {
    const BLOCK: u64 = 4096;
    let mut total = 0;
    walk_tree(root, |_, meta| {
        total += match meta.is_file() {
            true => meta.len().div_ceil(BLOCK) * BLOCK,
            false => BLOCK,
        };
    })?;
    Ok(total)
}

/// Calls `f` with every entry under `root`, by path relative to it (the
/// root itself as ""), without following symlinks.
pub fn walk_tree(root: &Path, mut f: impl FnMut(&Path, &fs::Metadata)) -> Result<()> {
    let meta = fs::symlink_metadata(root).with_context(|| format!("reading {}", root.display()))?;
    f(Path::new(""), &meta);
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let dir = root.join(&rel);
        for entry in fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
            let entry = entry.with_context(|| format!("reading {}", dir.display()))?;
            let child = rel.join(entry.file_name());
            let meta = entry
                .metadata()
                .with_context(|| format!("inspecting {}", entry.path().display()))?;
            f(&child, &meta);
            if meta.is_dir() {
                stack.push(child);
            }
        }
    }
    Ok(())
}

/// sha256 of a file's whole contents, as lowercase hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    sha256_reader(&mut f).with_context(|| format!("hashing {}", path.display()))
}

pub fn sha256_reader(r: &mut impl Read) -> io::Result<String> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

pub fn sha256_bytes(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Opens a file for read and write without truncating it.
pub fn open_rw(path: &Path) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .with_context(|| format!("opening {} for writing", path.display()))
}

/// Copies `image` to `out` keeping it sparse (zero blocks stay holes),
/// appearing under its name only when complete.
pub fn sparse_copy(image: &Path, out: &Path) -> Result<()> {
    use std::os::unix::fs::FileExt;
    let src = std::fs::File::open(image).with_context(|| format!("opening {}", image.display()))?;
    let len = src.metadata()?.len();
    let partial = partial_path(out);
    let dst = std::fs::File::create(&partial)
        .with_context(|| format!("creating {}", partial.display()))?;
    dst.set_len(len)
        .with_context(|| format!("sizing {}", partial.display()))?;
    let mut buf = vec![0u8; 4 << 20];
    let mut pos = 0u64;
    while pos < len {
        let n = (len - pos).min(buf.len() as u64) as usize;
        src.read_exact_at(&mut buf[..n], pos)?;
        // Zero blocks stay holes in the copy.
        if buf[..n].iter().any(|b| *b != 0) {
            dst.write_all_at(&buf[..n], pos)?;
        }
        pos += n as u64;
    }
    dst.sync_all()?;
    commit_partial(&partial, out)
}

/// `fs::create_dir_all` whose error names the directory.
pub fn create_dir_all(dir: impl AsRef<Path>) -> Result<()> {
    let dir = dir.as_ref();
    fs::create_dir_all(dir).with_context(|| format!("creating directory {}", dir.display()))
}

/// Sets `path`'s permission bits; the error names the file.
pub fn set_mode(path: impl AsRef<Path>, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let path = path.as_ref();
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting mode {mode:o} on {}", path.display()))
}

/// `n` bytes in binary units with one decimal (`8.0 GiB`); below a KiB,
/// `n` and `bytes_word`.
pub fn binary_size(n: u64, bytes_word: &str) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = None;
    while v >= 1024.0 && unit.is_none_or(|u| u + 1 < UNITS.len()) {
        v /= 1024.0;
        unit = Some(unit.map_or(0, |u| u + 1));
    }
    match unit {
        None => format!("{n} {bytes_word}"),
        Some(u) => format!("{v:.1} {}", UNITS[u]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_leaves_no_partial() {
        let (dir, p) = crate::testutil::scratch_path("out.json");
        atomic_write(&p, b"{}").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"{}");
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["out.json"]);
        assert_eq!(partial_path(&p).file_name().unwrap(), ".out.json.partial");
    }

    /// Regression: two builds sharing a cache wrote the same keyring at
    /// once through one temp name, and a rename could put a torn file in
    /// place.
    #[test]
    fn concurrent_atomic_writes_of_one_file_leave_one_whole_version() {
        let (dir, p) = crate::testutil::scratch_path("key.gpg");
        let versions: Vec<Vec<u8>> = (0..4u8).map(|i| vec![i; 4 << 20]).collect();
        std::thread::scope(|s| {
            for v in &versions {
                let p = &p;
                s.spawn(move || {
                    for _ in 0..5 {
                        atomic_write(p, v).unwrap();
                    }
                });
            }
        });
        let got = fs::read(&p).unwrap();
        assert!(
            versions.contains(&got),
            "a torn file of {} bytes",
            got.len()
        );
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn tree_bytes_counts_blocks_and_free_space_is_checked() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("sub")).unwrap();
        fs::write(dir.path().join("sub/a"), vec![1u8; 5000]).unwrap();
        fs::write(dir.path().join("b"), b"x").unwrap();
        // two directories, 8 KiB for `a`, 4 KiB for `b`
        assert_eq!(tree_bytes(dir.path()).unwrap(), 4 * 4096 + 4096);
        require_free_space(dir.path(), 1, "a test").unwrap();
        let err = require_free_space(dir.path(), u64::MAX / 2, "the root filesystem").unwrap_err();
        crate::testutil::assert_says(
            err,
            &[
                "not enough free space in",
                "the root filesystem needs about",
            ],
        );
    }

    #[test]
    fn sha256_of_known_input() {
        assert_eq!(
            sha256_bytes(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}

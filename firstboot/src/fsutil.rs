//! File helpers: atomic replacement, root-relative paths and overwriting
//! secrets in place before they are unlinked.

use std::fs::{self, File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// Joins an absolute in-image path (`/etc/hostname`) onto `root`, so the
/// agent can run against a temporary directory in tests.
pub fn under(root: &Path, abs: &str) -> PathBuf {
    root.join(abs.trim_start_matches('/'))
}

/// Writes `data` to `path` so that readers see either the old or the new
/// content, never a torn file, even across a power cut: temp file, fsync,
/// rename, fsync of the directory (which makes the rename durable).
pub fn atomic_write(path: &Path, data: &[u8], mode: u32) -> Result<()> {
    let dir = path
        .parent()
        .with_context(|| format!("{} has no parent directory", path.display()))?;
    fs::create_dir_all(dir).with_context(|| format!("creating directory {}", dir.display()))?;
    let name = path
        .file_name()
        .with_context(|| format!("{} has no file name", path.display()))?;
    let tmp = dir.join(format!(".{}.tmp", name.to_string_lossy()));
    let result = (|| -> Result<()> {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)
            .with_context(|| format!("creating {}", tmp.display()))?;
        // The mode given to open() is masked by the umask; be explicit.
        f.set_permissions(fs::Permissions::from_mode(mode))
            .with_context(|| format!("setting mode of {}", tmp.display()))?;
        f.write_all(data)
            .with_context(|| format!("writing {}", tmp.display()))?;
        f.sync_all()
            .with_context(|| format!("syncing {}", tmp.display()))?;
        fs::rename(&tmp, path)
            .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// fsyncs a directory so that entries created or renamed in it survive a
/// power cut.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing directory {}", dir.display()))
}

/// Replaces the content of an existing file in place (same inode, and on
/// FAT the same clusters), so the old bytes are overwritten on the medium
/// rather than left behind in freed blocks as a rename would.
pub fn rewrite_in_place(path: &Path, new: &[u8]) -> Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .open(path)
        .with_context(|| format!("opening {} to rewrite it", path.display()))?;
    let old_len = f
        .metadata()
        .with_context(|| format!("reading size of {}", path.display()))?
        .len() as usize;
    // Cover every old byte: the new text, then newlines over the rest.
    let mut buf = new.to_vec();
    if buf.len() < old_len {
        buf.resize(old_len, b'\n');
    }
    f.seek(SeekFrom::Start(0))
        .and_then(|_| f.write_all(&buf))
        .and_then(|_| f.sync_all())
        .with_context(|| format!("overwriting {}", path.display()))?;
    f.set_len(new.len() as u64)
        .and_then(|_| f.sync_all())
        .with_context(|| format!("truncating {}", path.display()))?;
    Ok(())
}

/// Overwrites a file's bytes with zeros, syncs, then unlinks it. Missing
/// files are fine: scrubbing is re-run after an interruption.
pub fn shred_and_remove(path: &Path) -> Result<bool> {
    let len = match fs::symlink_metadata(path) {
        Ok(m) if m.is_file() => m.len(),
        Ok(_) => anyhow::bail!("{} is not a regular file; not removing it", path.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e).with_context(|| format!("inspecting {}", path.display())),
    };
    let mut f = OpenOptions::new()
        .write(true)
        .open(path)
        .with_context(|| format!("opening {} to overwrite it", path.display()))?;
    f.write_all(&vec![0u8; len as usize])
        .and_then(|_| f.sync_all())
        .with_context(|| format!("overwriting {}", path.display()))?;
    drop(f);
    fs::remove_file(path).with_context(|| format!("removing {}", path.display()))?;
    if let Some(dir) = path.parent() {
        sync_dir(dir)?;
    }
    Ok(true)
}

/// Reads a file that may legitimately be absent.
pub fn read_optional(path: &Path) -> Result<Option<String>> {
    match fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Takes an exclusive lock on `path` (made if missing) without waiting;
/// held until the returned file is dropped. Another holder is an error
/// naming the file.
pub fn exclusive_lock(path: &Path, holder: &str) -> Result<fs::File> {
    use std::os::fd::AsRawFd;
    let f = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        anyhow::bail!("{holder} holds {}", path.display());
    }
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::scratch_path;

    #[test]
    fn atomic_write_replaces_and_sets_mode() {
        let (_dir, p) = scratch_path("a/b/file");
        atomic_write(&p, b"one", 0o600).unwrap();
        atomic_write(&p, b"two", 0o600).unwrap();
        assert_eq!(fs::read_to_string(&p).unwrap(), "two");
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let leftovers: Vec<_> = fs::read_dir(p.parent().unwrap()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temp file left behind");
    }

    #[test]
    fn rewrite_in_place_keeps_inode_and_drops_old_bytes() {
        use std::os::unix::fs::MetadataExt;
        let (_dir, p) = scratch_path("seed");
        fs::write(&p, "hostname = 'a'\nkey = 'tskey-secret-long'\n").unwrap();
        let ino = fs::metadata(&p).unwrap().ino();
        rewrite_in_place(&p, b"hostname = 'a'\n").unwrap();
        assert_eq!(fs::read_to_string(&p).unwrap(), "hostname = 'a'\n");
        assert_eq!(fs::metadata(&p).unwrap().ino(), ino);
    }

    #[test]
    fn shred_removes_and_tolerates_absence() {
        let (_dir, p) = scratch_path("k");
        fs::write(&p, "tskey-abc").unwrap();
        assert!(shred_and_remove(&p).unwrap());
        assert!(!p.exists());
        assert!(!shred_and_remove(&p).unwrap());
    }

    #[test]
    fn under_joins_absolute_paths() {
        assert_eq!(
            under(Path::new("/tmp/r"), "/etc/hostname"),
            PathBuf::from("/tmp/r/etc/hostname")
        );
        assert_eq!(under(Path::new("/"), "/etc"), PathBuf::from("/etc"));
    }
}

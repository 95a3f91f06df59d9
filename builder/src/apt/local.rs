//! Local .deb directories as an apt source: the .debs and a `Packages`
//! index (written here from each package's control fields) in a flat
//! repository that mmdebstrap reads through `file:`.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::exec::Cmd;
use crate::fsutil;

/// The .deb files directly in `dir`, sorted by name.
pub fn debs_in(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut debs: Vec<PathBuf> = fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "deb"))
        .collect();
    debs.sort();
    Ok(debs)
}

/// sha256 over the names and contents of the directory's .debs: the same
/// packages give the same repository (and rootfs cache key).
pub fn content_hash(dir: &Path) -> Result<String> {
    let mut all = String::new();
    for deb in debs_in(dir).with_context(|| format!("reading {}", dir.display()))? {
        let name = deb.file_name().unwrap_or_default().to_string_lossy();
        all.push_str(&format!("{name} {}\n", fsutil::sha256_file(&deb)?));
    }
    Ok(fsutil::sha256_bytes(all.as_bytes()))
}

/// One `Packages` stanza: the package's control fields, then where the
/// file is and its size and hash.
pub fn stanza(control: &str, file_name: &str, size: u64, sha256: &str) -> String {
    format!(
        "{}\nFilename: ./{file_name}\nSize: {size}\nSHA256: {sha256}\n",
        control.trim_end()
    )
}

/// Makes `dest` a flat repository of `src`'s .debs (once: `dest` is named
/// by content, so an existing one is reused).
pub fn build_repo(src: &Path, dest: &Path) -> Result<()> {
    if dest.join("Packages").is_file() {
        return Ok(());
    }
    // A private temporary name: two builds may index the same packages at once.
    let parent = dest.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let tmp = tempfile::Builder::new()
        .prefix(".local-")
        .tempdir_in(parent)
        .with_context(|| format!("creating a directory in {}", parent.display()))?;
    let partial = tmp.path();
    let mut index = String::new();
    for deb in debs_in(src).with_context(|| format!("reading {}", src.display()))? {
        let name = deb
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let control = Cmd::new("dpkg-deb")
            .arg("--field")
            .arg(&deb)
            .stdout_text()
            .with_context(|| format!("reading the control fields of {}", deb.display()))?;
        if !control.lines().any(|l| l.starts_with("Package:")) {
            anyhow::bail!(
                "{} has no Package field: not a Debian package",
                deb.display()
            );
        }
        let copy = partial.join(&name);
        fs::copy(&deb, &copy).with_context(|| format!("copying {}", deb.display()))?;
        let size = fs::metadata(&copy)
            .with_context(|| format!("reading {}", copy.display()))?
            .len();
        if !index.is_empty() {
            index.push('\n');
        }
        index.push_str(&stanza(&control, &name, size, &fsutil::sha256_file(&copy)?));
    }
    fs::write(partial.join("Packages"), index)
        .with_context(|| format!("writing {}/Packages", partial.display()))?;
    match fs::rename(partial, dest) {
        Ok(()) => Ok(()),
        // Another build finished the same repository first.
        Err(_) if dest.join("Packages").is_file() => Ok(()),
        Err(e) => {
            Err(e).with_context(|| format!("renaming {} to {}", partial.display(), dest.display()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stanza_adds_location_and_hash() {
        let s = stanza("Package: x\nVersion: 1\n", "x_1_all.deb", 10, "ab");
        assert_eq!(
            s,
            "Package: x\nVersion: 1\nFilename: ./x_1_all.deb\nSize: 10\nSHA256: ab\n"
        );
    }
}

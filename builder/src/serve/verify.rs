//! `serve --release-key`: hand out only what a trusted key released. At
//! start every build the fleet names must carry a release signed by that
//! key, and each file serve can hand out must have the size and sha256 the
//! release lists; a file that changes afterwards is refused until serve is
//! restarted and checks it again. A change is seen by the file's inode and
//! change time (ctime), which no one can set back as they can the mtime.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use ssh_key::PublicKey;

use crate::release::{self, Release};

/// What a file looked like when its sha256 was checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    ctime: (i64, i64),
}

fn stamp(path: &Path) -> Result<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(Stamp {
        dev: m.dev(),
        ino: m.ino(),
        len: m.len(),
        ctime: (m.ctime(), m.ctime_nsec()),
    })
}

/// The verified files of every build served, by file name.
#[derive(Debug)]
pub struct Releases {
    dir: PathBuf,
    checked: HashMap<String, Stamp>,
    /// Per build with a root slot: what a node's updater fetches under
    /// `/releases/<build>/` (the release, its signature, the chunk index
    /// and the image it takes ranges of).
    updates: HashMap<String, Vec<String>>,
}

impl Releases {
    /// Verifies each of `builds` (build name, files serve may hand out)
    /// in `dir` against `key`.
    pub fn verify(key: &PublicKey, dir: &Path, builds: &[(String, Vec<String>)]) -> Result<Self> {
        let mut checked = HashMap::new();
        let mut updates = HashMap::new();
        for (build, files) in builds {
            let rel: Release = release::read_verified(dir, build, key)
                .with_context(|| format!("the release of build `{build}`"))?;
            let rel_path = release::release_path(dir, build);
            let mut files = files.clone();
            if let Some(slot) = &rel.root_slot {
                let signed = [
                    nodeforge_release::release_file_name(build),
                    nodeforge_release::signature_file_name(build),
                ];
                // Checked by the signature just read: only their stamp.
                for f in &signed {
                    checked.insert(f.clone(), stamp(&dir.join(f))?);
                }
                let update = [slot.chunks.clone(), slot.file.clone()];
                for f in &update {
                    if !files.contains(f) {
                        files.push(f.clone());
                    }
                }
                updates.insert(build.clone(), signed.into_iter().chain(update).collect());
            }
            for file in &files {
                // Stamped before hashing and compared after: a file
                // written while it was hashed is not taken as checked.
                let before = stamp(&dir.join(file))?;
                release::check_file(&rel, dir, file, &rel_path)?;
                if stamp(&dir.join(file))? != before {
                    anyhow::bail!(
                        "{} changed while serve checked it; start serve again",
                        dir.join(file).display()
                    );
                }
                checked.insert(file.clone(), before);
            }
        }
        Ok(Releases {
            dir: dir.to_path_buf(),
            checked,
            updates,
        })
    }

    /// Whether `file` is one a node's updater fetches for `build`.
    pub fn offers_update(&self, build: &str, file: &str) -> bool {
        self.updates
            .get(build)
            .is_some_and(|files| files.iter().any(|f| f == file))
    }

    /// Whether `file` may be handed out: checked at start and unchanged
    /// since. The error says which, for the response and the log.
    pub fn allow(&self, file: &str) -> Result<(), String> {
        let path = self.dir.join(file);
        let Some(was) = self.checked.get(file) else {
            return Err(format!(
                "{}: not among the files checked against the signed release at start",
                path.display()
            ));
        };
        match stamp(&path) {
            Ok(now) if now == *was => Ok(()),
            Ok(_) => Err(format!(
                "{} changed after serve checked it against the signed release; refusing it \
                 (restart serve to check the new file)",
                path.display()
            )),
            Err(e) => Err(format!("{e:#}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn signed_build(dir: &Path) -> PublicKey {
        let (private, public) = release::generate_keys(&dir.join("keys"), "release").unwrap();
        let key = release::load_signing_key(&private).unwrap();
        std::fs::write(dir.join("web.squashfs"), b"the root").unwrap();
        let mut files = BTreeMap::new();
        files.insert(
            "web.squashfs".to_string(),
            release::file_digest(&dir.join("web.squashfs")).unwrap(),
        );
        let r = Release {
            format: release::FORMAT,
            name: "web".into(),
            role: "web".into(),
            arch: "amd64".into(),
            version: "v".into(),
            epoch: Some(1),
            files,
            root_slot: None,
        };
        release::write(dir, &r, Some(&key)).unwrap();
        release::load_public_key(&public).unwrap()
    }

    #[test]
    fn released_files_are_allowed_until_they_change() {
        let d = tempfile::tempdir().unwrap();
        let key = signed_build(d.path());
        let builds = [("web".to_string(), vec!["web.squashfs".to_string()])];
        let r = Releases::verify(&key, d.path(), &builds).unwrap();
        r.allow("web.squashfs").unwrap();
        assert!(r.allow("web.vmlinuz").unwrap_err().contains("not among"));
        // Rewritten in place with the same size and its old mtime put
        // back: the change time still moves.
        let path = d.path().join("web.squashfs");
        let mtime = std::fs::metadata(&path).unwrap().modified().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&path, b"THE ROOT").unwrap();
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        let err = r.allow("web.squashfs").unwrap_err();
        assert!(err.contains("changed after serve checked it"), "{err}");
        std::fs::write(&path, b"the root, longer").unwrap();
        // And a fresh start refuses the changed file by name.
        let err = Releases::verify(&key, d.path(), &builds).unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("web.squashfs: the size is 16"), "{msg}");
    }
}

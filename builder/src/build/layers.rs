//! Per-step layers: what one tree step changed in the root, cached under a
//! key that chains the base rootfs key with every step's own inputs, so a
//! later build with the same inputs up to a step restores that step's
//! changes instead of running it, and a changed input re-runs only the
//! steps from there on.
//!
//! A step's changes are found without hashing the tree: before it runs, a
//! marker file is written in the work directory and its ctime read; after
//! it, every path whose ctime is not older than the marker's, or that is
//! new or changed type, went into the layer, and every path that is gone
//! is listed for deletion. The kernel sets ctime on every write, chmod,
//! chown, rename and xattr change and it cannot be set back, so nothing a
//! step does escapes; a file written just before the marker may be taken
//! along, which costs a few bytes and changes nothing.

use std::collections::HashMap;
use std::fs;
use std::io::ErrorKind;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::cache::Cache;
use crate::exec::Cmd;
use crate::fsutil::{self, sha256_bytes, walk_tree};

/// A layer's key: the key of the tree it applies to, the step's name and
/// the step's inputs. The chain starts from the base rootfs key and the
/// nodeforge binary (which holds every step's code).
pub fn chain_key(previous: &str, step: &str, inputs: &serde_json::Value) -> String {
    let key = serde_json::json!({ "after": previous, "step": step, "inputs": inputs });
    sha256_bytes(key.to_string().as_bytes())
}

/// What the cache keeps beside a layer's tarball.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LayerMeta {
    pub step: String,
    pub summary: String,
    pub created: u64,
    pub last_used: u64,
    /// Paths (relative to the root) the step removed, deepest first.
    pub deleted: Vec<String>,
    /// Facts the step recorded for the manifest.
    pub facts: serde_json::Map<String, serde_json::Value>,
}

/// What a step changed: paths to archive and paths to delete.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct TreeDelta {
    /// Relative paths, sorted, parents before children; "." is the root.
    pub changed: Vec<String>,
    /// Relative paths, children before parents.
    pub deleted: Vec<String>,
}

/// A root's entries: relative path → file type bits.
pub type Snapshot = HashMap<PathBuf, u32>;

/// The entries of the root before a step and the time it started.
pub struct TreeWatch {
    before: Snapshot,
    started_ns: i128,
}

const S_IFMT: u32 = 0o170000;

pub fn snapshot(root: &Path) -> Result<Snapshot> {
    let mut entries = HashMap::new();
    walk_tree(root, |rel, meta| {
        entries.insert(rel.to_path_buf(), meta.mode() & S_IFMT);
    })?;
    Ok(entries)
}

impl TreeWatch {
    /// Takes the root's entries (`before`, from [`snapshot`] or the last
    /// step's [`TreeWatch::finish`]), then the time through `marker` (a
    /// file in the work directory, outside the root).
    pub fn start(before: Snapshot, marker: &Path) -> Result<TreeWatch> {
        fs::write(marker, b"layer marker")
            .with_context(|| format!("writing {}", marker.display()))?;
        let m = fs::metadata(marker).with_context(|| format!("reading {}", marker.display()))?;
        Ok(TreeWatch {
            before,
            started_ns: ctime_ns(&m),
        })
    }

    /// What changed in `root` since [`TreeWatch::start`], and the root's
    /// entries now.
    pub fn finish(mut self, root: &Path) -> Result<(TreeDelta, Snapshot)> {
        let mut delta = TreeDelta::default();
        let mut after = HashMap::with_capacity(self.before.len());
        walk_tree(root, |rel, meta| {
            let kind = meta.mode() & S_IFMT;
            after.insert(rel.to_path_buf(), kind);
            let earlier = self.before.remove(rel);
            if earlier.is_some_and(|k| k != kind) {
                // Another type at the same path: the old one goes first.
                delta.deleted.push(rel_string(rel));
            }
            if earlier != Some(kind) || ctime_ns(meta) >= self.started_ns {
                delta.changed.push(rel_string(rel));
            }
        })?;
        delta
            .deleted
            .extend(self.before.into_keys().map(|p| rel_string(&p)));
        delta.changed.sort();
        delta.deleted.sort_by(|a, b| b.cmp(a));
        Ok((delta, after))
    }
}

fn ctime_ns(m: &fs::Metadata) -> i128 {
    i128::from(m.ctime()) * 1_000_000_000 + i128::from(m.ctime_nsec())
}

fn rel_string(rel: &Path) -> String {
    match rel.as_os_str().is_empty() {
        true => ".".into(),
        false => rel.to_string_lossy().into_owned(),
    }
}

/// Paths a layer must never hold: a node's secrets are made on the node,
/// and a seed may carry an auth key.
pub fn secret_path(rel: &str) -> bool {
    let secrets = nodeforge_firstboot::stacks::SECRETS_DIR.trim_start_matches('/');
    rel == secrets
        || rel.starts_with(&format!("{secrets}/"))
        || Path::new(rel).file_name().map(|n| n.as_bytes())
            == Some(nodeforge_firstboot::seed::SEED_FILE_NAME.as_bytes())
}

/// The tar options both directions share: owners by number, modes,
/// extended attributes (file capabilities) and nanosecond times.
const TAR_FORMAT: &[&str] = &[
    "--format=posix",
    "--numeric-owner",
    "--xattrs",
    "--xattrs-include=*",
];

/// Why a step's changes were not stored: they touch a path that must
/// never be cached (see [`secret_path`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the step wrote /{path}, which never goes into the cache")]
pub struct Refused {
    /// The path, relative to the root.
    pub path: String,
}

/// Stores `delta` of `root` as layer `key`. Returns the layer's size, or
/// why it was not stored.
pub fn store(
    cache: &Cache,
    key: &str,
    root: &Path,
    delta: &TreeDelta,
    meta: &LayerMeta,
) -> Result<Result<u64, Refused>> {
    if let Some(secret) = delta
        .changed
        .iter()
        .chain(&delta.deleted)
        .find(|p| secret_path(p))
    {
        return Ok(Err(Refused {
            path: secret.clone(),
        }));
    }
    let dir = cache.layers_dir();
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let list = tempfile::Builder::new()
        .prefix(".list.partial.")
        .tempfile_in(&dir)
        .with_context(|| format!("creating a file list in {}", dir.display()))?;
    let mut names = Vec::new();
    for p in &delta.changed {
        names.extend_from_slice(p.as_bytes());
        names.push(0);
    }
    fs::write(list.path(), &names).with_context(|| format!("writing {}", list.path().display()))?;
    // Unique per writer: two builds making the same layer each rename a
    // whole file into place, and a killed one leaves only a hidden name.
    let partial = tempfile::Builder::new()
        .prefix(&format!(".{key}.partial."))
        .suffix(".tar.zst")
        .tempfile_in(&dir)
        .with_context(|| format!("creating a layer file in {}", dir.display()))?
        .into_temp_path();
    Cmd::new("tar")
        .args([
            "--create",
            "--no-recursion",
            "--null",
            "--use-compress-program=zstd -T0 -3 -q",
        ])
        .args(TAR_FORMAT)
        .arg("--directory")
        .arg(root)
        .arg("--files-from")
        .arg(list.path())
        .arg("--file")
        .arg(&partial)
        .run()
        .with_context(|| format!("archiving the {} step's changes", meta.step))?;
    let size = fs::metadata(&partial)
        .with_context(|| format!("reading {}", partial.display()))?
        .len();
    // The metadata first: a layer counts only once its tarball is there.
    fsutil::atomic_write(
        &cache.layer_meta_path(key),
        &serde_json::to_vec_pretty(meta)?,
    )?;
    let partial = partial
        .keep()
        .with_context(|| format!("keeping the layer file of {key}"))?;
    fsutil::commit_partial(&partial, &cache.layer_tar(key))?;
    Ok(Ok(size))
}

/// The layer `key`, when the cache holds all of it.
pub fn find(cache: &Cache, key: &str) -> Option<LayerMeta> {
    if !cache.layer_tar(key).is_file() {
        return None;
    }
    serde_json::from_slice(&fs::read(cache.layer_meta_path(key)).ok()?).ok()
}

/// Applies layer `key` to `root`: its deletions, then its files. Marks it
/// used.
pub fn apply(cache: &Cache, key: &str, meta: &LayerMeta, root: &Path) -> Result<()> {
    for rel in &meta.deleted {
        let path = root.join(rel);
        let removed = match fs::symlink_metadata(&path) {
            Ok(m) if m.is_dir() => fs::remove_dir_all(&path),
            Ok(_) => fs::remove_file(&path),
            Err(e) => Err(e),
        };
        match removed {
            Err(e) if e.kind() != ErrorKind::NotFound => {
                return Err(e).with_context(|| format!("removing {}", path.display()))
            }
            _ => {}
        }
    }
    let tar = cache.layer_tar(key);
    Cmd::new("tar")
        .args([
            "--extract",
            "--zstd",
            "--preserve-permissions",
            "--same-owner",
        ])
        .args(TAR_FORMAT)
        .arg("--directory")
        .arg(root)
        .arg("--file")
        .arg(&tar)
        .run()
        .with_context(|| format!("applying the cached layer {}", tar.display()))?;
    cache.touch_layer(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, PermissionsExt};

    /// Every entry with its type, mode, owner, mtime, link target and content.
    fn listing(root: &Path) -> Vec<String> {
        let mut out = Vec::new();
        walk_tree(root, |rel, m| {
            let path = root.join(rel);
            let what = if m.file_type().is_symlink() {
                fs::read_link(&path).unwrap().display().to_string()
            } else if m.is_file() {
                sha256_bytes(&fs::read(&path).unwrap())
            } else {
                String::new()
            };
            out.push(format!(
                "{} {:o} {}:{} {}.{} {what}",
                rel.display(),
                m.mode(),
                m.uid(),
                m.gid(),
                m.mtime(),
                m.mtime_nsec()
            ));
        })
        .unwrap();
        out.sort();
        out
    }

    fn tree(root: &Path) {
        fs::create_dir_all(root.join("etc/old")).unwrap();
        fs::write(root.join("etc/hostname"), "a\n").unwrap();
        fs::write(root.join("etc/old/file"), "gone\n").unwrap();
        fs::write(root.join("etc/mode"), "x\n").unwrap();
        fs::write(root.join("etc/kept"), "kept\n").unwrap();
        fs::write(root.join("becomes-dir"), "file\n").unwrap();
        symlink("hostname", root.join("etc/link")).unwrap();
    }

    /// What a step might do: write, add, chmod, delete a tree, replace a
    /// file by a directory, re-point a link.
    fn step(root: &Path) {
        fs::write(root.join("etc/hostname"), "b\n").unwrap();
        fs::create_dir_all(root.join("etc/new")).unwrap();
        fs::write(root.join("etc/new/file"), "new\n").unwrap();
        fs::set_permissions(root.join("etc/mode"), fs::Permissions::from_mode(0o600)).unwrap();
        fs::remove_dir_all(root.join("etc/old")).unwrap();
        fs::remove_file(root.join("becomes-dir")).unwrap();
        fs::create_dir(root.join("becomes-dir")).unwrap();
        fs::remove_file(root.join("etc/link")).unwrap();
        symlink("kept", root.join("etc/link")).unwrap();
    }

    #[test]
    fn delta_names_every_change_and_only_changes() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        tree(&root);
        // Let the coarse clock move on, as between two build steps.
        std::thread::sleep(std::time::Duration::from_millis(20));
        let before = snapshot(&root).unwrap();
        let watch = TreeWatch::start(before, &dir.path().join("marker")).unwrap();
        step(&root);
        let (delta, after) = watch.finish(&root).unwrap();
        assert_eq!(after, snapshot(&root).unwrap());
        assert_eq!(
            delta.changed,
            [
                ".",
                "becomes-dir",
                "etc",
                "etc/hostname",
                "etc/link",
                "etc/mode",
                "etc/new",
                "etc/new/file"
            ]
        );
        assert_eq!(delta.deleted, ["etc/old/file", "etc/old", "becomes-dir"]);
    }

    /// A preloaded Docker store holds what the engine's overlay2 driver
    /// needs from the filesystem: whiteouts (char devices 0:0), the
    /// opaque xattr (trusted.*) and hard links. The cached layer must give
    /// them back, or a build from the cache would boot a broken store.
    #[test]
    fn a_layer_keeps_whiteouts_trusted_xattrs_and_hard_links() {
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path().join("cache"));
        let (built, restored) = (dir.path().join("built"), dir.path().join("restored"));
        fs::create_dir_all(&built).unwrap();
        fs::create_dir_all(&restored).unwrap();
        let watch =
            TreeWatch::start(snapshot(&built).unwrap(), &dir.path().join("marker")).unwrap();
        let diff = built.join("var/lib/docker/overlay2/abc/diff");
        fs::create_dir_all(diff.join("etc")).unwrap();
        nix::sys::stat::mknod(
            &diff.join("etc/motd"),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::empty(),
            0,
        )
        .unwrap();
        let c = |p: &Path| std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
        let (etc, key) = (c(&diff.join("etc")), c(Path::new("trusted.overlay.opaque")));
        // SAFETY: NUL-terminated strings and a one-byte value, all live.
        let rc = unsafe { libc::lsetxattr(etc.as_ptr(), key.as_ptr(), b"y".as_ptr().cast(), 1, 0) };
        assert_eq!(rc, 0, "setting trusted.overlay.opaque (needs root)");
        fs::write(diff.join("su"), "x").unwrap();
        fs::hard_link(diff.join("su"), diff.join("su2")).unwrap();
        let (delta, _) = watch.finish(&built).unwrap();
        let meta = LayerMeta {
            step: "containers".into(),
            summary: "test".into(),
            created: 1,
            last_used: 1,
            deleted: delta.deleted.clone(),
            facts: Default::default(),
        };
        store(&cache, "k", &built, &delta, &meta).unwrap().unwrap();
        apply(&cache, "k", &find(&cache, "k").unwrap(), &restored).unwrap();

        let diff = restored.join("var/lib/docker/overlay2/abc/diff");
        let motd = fs::symlink_metadata(diff.join("etc/motd")).unwrap();
        assert!(motd.file_type().is_char_device() && motd.rdev() == 0);
        let mut v = [0u8; 4];
        let etc = c(&diff.join("etc"));
        // SAFETY: as above, with a 4-byte buffer.
        let n = unsafe { libc::lgetxattr(etc.as_ptr(), key.as_ptr(), v.as_mut_ptr().cast(), 4) };
        assert_eq!(n, 1, "the opaque xattr did not survive the layer");
        assert_eq!(&v[..1], b"y");
        assert_eq!(fs::metadata(diff.join("su")).unwrap().nlink(), 2);
    }

    #[test]
    fn a_stored_layer_applied_to_the_earlier_tree_gives_the_later_tree() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path().join("cache"));
        let (built, restored) = (dir.path().join("built"), dir.path().join("restored"));
        tree(&built);
        // The same earlier tree, times and all.
        let copied = std::process::Command::new("cp")
            .arg("-a")
            .arg(&built)
            .arg(&restored)
            .status()
            .unwrap();
        assert!(copied.success());
        let watch =
            TreeWatch::start(snapshot(&built).unwrap(), &dir.path().join("marker")).unwrap();
        step(&built);
        let (delta, _) = watch.finish(&built).unwrap();
        let mut facts = serde_json::Map::new();
        facts.insert("kernel".into(), "6.1".into());
        let meta = LayerMeta {
            step: "system".into(),
            summary: "test".into(),
            created: 1,
            last_used: 1,
            deleted: delta.deleted.clone(),
            facts,
        };
        let size = store(&cache, "k1", &built, &delta, &meta).unwrap().unwrap();
        assert!(size > 0);
        let found = find(&cache, "k1").expect("the layer is in the cache");
        assert_eq!(found.facts["kernel"], "6.1");
        apply(&cache, "k1", &found, &restored).unwrap();
        assert_eq!(listing(&restored), listing(&built));
        assert!(find(&cache, "k1").unwrap().last_used > 1);
        assert!(find(&cache, "other").is_none());
        // Nothing but the two files of the entry is left behind.
        let mut names: Vec<String> = fs::read_dir(cache.layers_dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["k1.json", "k1.tar.zst"]);
    }

    #[test]
    fn secrets_and_seeds_are_never_stored() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path().join("cache"));
        let root = dir.path().join("root");
        fs::create_dir_all(root.join("var/lib/nodeforge/secrets")).unwrap();
        fs::write(root.join("var/lib/nodeforge/secrets/web.env"), "PW=x\n").unwrap();
        for path in [
            "var/lib/nodeforge/secrets/web.env",
            "boot/nodeforge-seed.toml",
        ] {
            let delta = TreeDelta {
                changed: vec![path.into()],
                deleted: vec![],
            };
            let meta = LayerMeta {
                step: "stacks".into(),
                summary: String::new(),
                created: 0,
                last_used: 0,
                deleted: vec![],
                facts: Default::default(),
            };
            let why = store(&cache, "k", &root, &delta, &meta)
                .unwrap()
                .unwrap_err();
            assert_eq!(why.path, path);
            assert!(
                why.to_string().contains(&format!("wrote /{path},")),
                "{why}"
            );
        }
        assert!(!cache.layer_tar("k").exists());
        assert!(secret_path("var/lib/nodeforge/secrets"));
        assert!(!secret_path("var/lib/nodeforge/secrets-not"));
    }

    #[test]
    fn chain_keys_depend_on_the_tree_below_and_the_inputs() {
        let inputs = serde_json::json!({"hostname": "a"});
        let k = chain_key("base", "system", &inputs);
        assert_eq!(k, chain_key("base", "system", &inputs));
        assert_ne!(k, chain_key("base2", "system", &inputs));
        assert_ne!(k, chain_key("base", "users", &inputs));
        assert_ne!(
            k,
            chain_key("base", "system", &serde_json::json!({"hostname": "b"}))
        );
    }
}

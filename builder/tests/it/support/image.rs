//! Reading a built image back: a partition copied out to a file, files of
//! its ext4 root read with debugfs (e2fsprogs), filesystems checked with
//! their own checkers.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::{read_bytes, write_file};

/// Copies `size` bytes of `img` at `offset` (a partition) to `dest`.
pub fn copy_out(img: &Path, offset: u64, size: u64, dest: &Path) -> PathBuf {
    let mut b = vec![0u8; size as usize];
    File::open(img)
        .and_then(|f| f.read_exact_at(&mut b, offset))
        .unwrap_or_else(|e| panic!("reading {size} bytes of {} at {offset}: {e}", img.display()));
    write_file(dest, b);
    dest.to_path_buf()
}

/// The partitions of a GPT disk image, by our own reader.
pub fn gpt_partitions(img: &Path) -> Vec<nodeforge::disk::gpt_table::FoundPartition> {
    nodeforge::disk::gpt_table::read(img)
        .unwrap_or_else(|e| panic!("reading the GPT of {}: {e:#}", img.display()))
}

/// An ext4 filesystem in a file, read with debugfs.
pub struct Ext4 {
    pub path: PathBuf,
}

impl Ext4 {
    /// The root filesystem (GPT partition 2) of `img`, copied to
    /// `scratch/root.ext4` (replacing an earlier copy).
    pub fn root_of(img: &Path, scratch: &Path) -> Ext4 {
        let parts = gpt_partitions(img);
        let root = parts
            .get(1)
            .unwrap_or_else(|| panic!("{} has no partition 2: {parts:?}", img.display()));
        Ext4 {
            path: copy_out(img, root.offset, root.size, &scratch.join("root.ext4")),
        }
    }

    /// Runs `debugfs -R REQUEST` on the filesystem.
    fn run_debugfs(&self, request: &str) -> std::process::Output {
        Command::new("debugfs")
            .args(["-R", request])
            .arg(&self.path)
            .stderr(Stdio::null())
            .output()
            .unwrap_or_else(|e| {
                panic!(
                    "running debugfs (e2fsprogs) on {}: {e}",
                    self.path.display()
                )
            })
    }

    /// What `debugfs -R REQUEST` prints.
    pub fn debugfs(&self, request: &str) -> String {
        String::from_utf8_lossy(&self.run_debugfs(request).stdout).into_owned()
    }

    /// The bytes of `path` in the filesystem; panics if it is not there.
    pub fn file(&self, path: &str) -> Vec<u8> {
        let dest = self.path.with_extension("dumped");
        let _ = std::fs::remove_file(&dest);
        let ok = self
            .run_debugfs(&format!("dump {path} {}", dest.display()))
            .status;
        assert!(
            ok.success() && dest.exists(),
            "{path} is not in the image's root filesystem ({})",
            self.path.display()
        );
        read_bytes(&dest)
    }

    /// The text of `path` in the filesystem; panics if it is not there.
    pub fn text(&self, path: &str) -> String {
        String::from_utf8(self.file(path))
            .unwrap_or_else(|e| panic!("{path} in {} is not UTF-8: {e}", self.path.display()))
    }
}

/// Runs a filesystem checker (`fsck.vfat -n`, `e2fsck -fn`) on `target`
/// and fails the test with its output unless it finds the filesystem clean.
pub fn assert_fsck_clean(program: &str, flag: &str, target: &Path) {
    let out = Command::new(program)
        .arg(flag)
        .arg(target)
        .output()
        .unwrap_or_else(|e| {
            panic!("running {program} (install it: nodeforge doctor --install): {e}")
        });
    assert!(
        out.status.success(),
        "{program} {flag} {}:\n{}",
        target.display(),
        String::from_utf8_lossy(&out.stdout)
    );
}

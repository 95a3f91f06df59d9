//! What a test needs of the host, stated before it starts. A missing
//! requirement fails the test with what is missing and how to get it (the
//! qemu-tests' policy): a test that passed without running would hide it.

use std::path::Path;
use std::process::Command;

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Builds and loop devices need root.
pub fn require_root() {
    assert!(
        is_root(),
        "needs root: builds write images with files of other owners and loop devices \
         need root; run the suite as root (README: \"Run the whole test suite\")"
    );
}

/// `program` on PATH (or in the sbin folders), from Debian's `package`.
pub fn require_tool(program: &str, package: &str) {
    assert!(
        nodeforge::exec::find_program(program).is_some(),
        "{program} missing: apt-get install {package}, or scripts/host-packages.sh \
         (nodeforge doctor --install)"
    );
}

/// A file the set-up puts in place, e.g. trixie's docker-compose.
pub fn require_file(path: &Path, how: &str) {
    assert!(path.is_file(), "{} missing: {how}", path.display());
}

/// Root, /dev/loop-control and a free loop device.
pub fn require_loop() {
    require_root();
    require_tool("losetup", "mount");
    assert!(
        Path::new("/dev/loop-control").exists(),
        "no /dev/loop-control: load the loop module (modprobe loop), or run where the \
         container may create loop devices"
    );
    let out = Command::new("losetup")
        .arg("--find")
        .output()
        .unwrap_or_else(|e| panic!("running losetup --find: {e}"));
    assert!(
        out.status.success(),
        "no free loop device (losetup --find: {}): detach unused ones with losetup -D",
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

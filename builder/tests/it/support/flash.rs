//! Flashing through the library without a terminal: the arguments a test
//! starts from, a run with scripted input, byte-for-byte comparison of the
//! mapped ranges, external programs and loop devices.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use nodeforge::bmap::Bmap;
use nodeforge::flash::device::SafetyRefusal;
use nodeforge::flash::{self, Env, FlashOptions, FlashReport, Stamp};

use super::scratch::used_disk;

/// Runs an external program; the error carries the command line and stderr.
pub fn cmd(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program} {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "{program} {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Flashing `image` to `device`, confirmed (`--yes`) and quiet.
pub fn args(image: &Path, device: &Path) -> FlashOptions {
    FlashOptions {
        image: image.to_path_buf(),
        device: device.to_path_buf(),
        bmap: None,
        yes: true,
        force: false,
        no_verify: false,
        quiet: true,
        json: false,
        mirrors: Vec::new(),
    }
}

/// Runs a flash with `input` as the terminal's, returning the report and
/// what it printed.
pub fn flash_with(
    args: &FlashOptions,
    input: &str,
    stamp: Option<&dyn Stamp>,
) -> (Result<FlashReport>, String) {
    let mut input = input.as_bytes();
    let mut output = Vec::new();
    let env = Env {
        sys_root: Path::new("/"),
        stamp,
        input: &mut input,
        output: &mut output,
    };
    let r = flash::run_with(args, env);
    (r, String::from_utf8_lossy(&output).into_owned())
}

/// The report of a flash that must succeed.
pub fn flash_ok(args: &FlashOptions) -> FlashReport {
    let (r, out) = flash_with(args, "", None);
    r.unwrap_or_else(|e| {
        panic!(
            "flashing {} to {}: {e:#}\n{out}",
            args.image.display(),
            args.device.display()
        )
    })
}

/// The error of a flash that must fail, with its causes.
pub fn flash_err(args: &FlashOptions) -> anyhow::Error {
    match flash_with(args, "", None).0 {
        Ok(r) => panic!(
            "flashing {} to {} succeeded: {r:?}",
            args.image.display(),
            args.device.display()
        ),
        Err(e) => e,
    }
}

/// The safety refusal `err` is; panics with the error if it is another.
pub fn refusal(err: &anyhow::Error) -> &SafetyRefusal {
    err.downcast_ref::<SafetyRefusal>()
        .unwrap_or_else(|| panic!("not a safety refusal: {err:#}"))
}

/// Asserts that `target` holds the image's bytes in every mapped range.
pub fn assert_mapped_equal(image: &Path, target: &Path, bmap: &Bmap) {
    let open = |p: &Path| File::open(p).unwrap_or_else(|e| panic!("opening {}: {e}", p.display()));
    let (img, dst) = (open(image), open(target));
    for r in &bmap.ranges {
        let span = bmap.byte_range(r);
        let len = (span.end - span.start) as usize;
        let (mut a, mut b) = (vec![0u8; len], vec![0u8; len]);
        img.read_exact_at(&mut a, span.start)
            .unwrap_or_else(|e| panic!("reading {}: {e}", image.display()));
        dst.read_exact_at(&mut b, span.start)
            .unwrap_or_else(|e| panic!("reading {}: {e}", target.display()));
        assert!(
            a == b,
            "{} differs from {} in bytes {}..{}",
            target.display(),
            image.display(),
            span.start,
            span.end
        );
    }
}

/// A loop device over a file, detached on drop (also when a test fails).
pub struct LoopDev {
    pub path: PathBuf,
}

impl LoopDev {
    /// Attaches `backing`; the test must have called `require_loop`.
    pub fn attach(backing: &Path) -> LoopDev {
        let out = cmd(
            "losetup",
            &["--find", "--show", &backing.display().to_string()],
        )
        .unwrap_or_else(|e| panic!("attaching {} to a loop device: {e:#}", backing.display()));
        LoopDev {
            path: PathBuf::from(out.trim()),
        }
    }

    /// Attaches a new "used card" of `size` bytes in `dir` (see
    /// [`used_disk`]); the test must have called `require_loop`.
    pub fn over_used_disk(dir: &Path, size: u64) -> LoopDev {
        LoopDev::attach(&used_disk(&dir.join("disk"), size, 0xEE))
    }
}

impl Drop for LoopDev {
    fn drop(&mut self) {
        if let Err(e) = cmd("losetup", &["--detach", &self.path.display().to_string()]) {
            eprintln!("detaching {}: {e:#}", self.path.display());
        }
    }
}

//! Shared helpers for the flash_* integration tests.
#![allow(dead_code)] // each test crate uses a different subset

use anyhow::{bail, Context, Result};
use nodeforge::bmap::Bmap;
use nodeforge::flash::{self, Env, FlashArgs, FlashReport, Stamp};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

pub const MIB: u64 = 1 << 20;

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

/// Deterministic, incompressible-looking bytes.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

/// A sparse image of `size` bytes with data at `extents` (offset, length),
/// plus a GPT-like signature in its first and last sectors.
pub fn make_image(path: &Path, size: u64, extents: &[(u64, u64)]) -> PathBuf {
    let f = File::create(path).unwrap();
    f.set_len(size).unwrap();
    for (i, (off, len)) in extents.iter().enumerate() {
        f.write_all_at(&noise(i as u64 + 1, *len as usize), *off)
            .unwrap();
    }
    let mut mbr = noise(99, 512);
    mbr[510] = 0x55;
    mbr[511] = 0xAA;
    f.write_all_at(&mbr, 0).unwrap();
    f.write_all_at(b"EFI PART", 512).unwrap();
    f.write_all_at(b"EFI PART", size - 512).unwrap();
    f.sync_all().unwrap();
    path.to_path_buf()
}

/// The usual small test image: 64 MiB, data at the start, in the middle
/// (more than one 8 MiB chunk, not block-aligned) and at the end.
pub fn standard_image(dir: &Path) -> PathBuf {
    make_image(
        &dir.join("node.img"),
        64 * MIB,
        &[
            (4096, 60_000),
            (MIB, 3 * MIB),
            (20 * MIB + 100, 17 * MIB),
            (50 * MIB, 4096),
        ],
    )
}

pub fn args(image: &Path, device: &Path) -> FlashArgs {
    FlashArgs {
        image: image.to_path_buf(),
        device: device.to_path_buf(),
        bmap: None,
        yes: true,
        force: false,
        no_verify: false,
        quiet: true,
        seed: Default::default(),
    }
}

/// Runs a flash with no input, returning the report and what it printed.
pub fn flash_with(
    args: &FlashArgs,
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

/// Asserts that `target` holds the image's bytes in every mapped range.
pub fn assert_mapped_equal(image: &Path, target: &Path, bmap: &Bmap) {
    let img = File::open(image).unwrap();
    let dst = File::open(target).unwrap();
    for r in &bmap.ranges {
        let span = bmap.byte_range(r);
        let len = (span.end - span.start) as usize;
        let (mut a, mut b) = (vec![0u8; len], vec![0u8; len]);
        img.read_exact_at(&mut a, span.start).unwrap();
        dst.read_exact_at(&mut b, span.start).unwrap();
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

pub fn read_at(path: &Path, off: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    File::open(path)
        .unwrap()
        .read_exact_at(&mut v, off)
        .unwrap();
    v
}

/// Why loop-device tests cannot run here, if they cannot.
pub fn loop_unavailable() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root".into());
    }
    if !Path::new("/dev/loop-control").exists() {
        return Some("no /dev/loop-control".into());
    }
    match cmd("losetup", &["--find"]) {
        Ok(_) => None,
        Err(e) => Some(format!("no free loop device: {e:#}")),
    }
}

/// A loop device over a file, detached on drop (also when a test fails).
pub struct LoopDev {
    pub path: PathBuf,
}

impl LoopDev {
    pub fn attach(backing: &Path) -> Result<LoopDev> {
        let out = cmd(
            "losetup",
            &["--find", "--show", &backing.display().to_string()],
        )?;
        Ok(LoopDev {
            path: PathBuf::from(out.trim()),
        })
    }
}

impl Drop for LoopDev {
    fn drop(&mut self) {
        if let Err(e) = cmd("losetup", &["--detach", &self.path.display().to_string()]) {
            eprintln!("detaching {}: {e:#}", self.path.display());
        }
    }
}

/// A backing file of `size` bytes filled with a repeating byte, standing in
/// for a card that held something else before.
pub fn used_disk(path: &Path, size: u64, fill: u8) -> PathBuf {
    let f = File::create(path).unwrap();
    let block = vec![fill; MIB as usize];
    let mut off = 0;
    while off < size {
        let n = (size - off).min(MIB) as usize;
        f.write_all_at(&block[..n], off).unwrap();
        off += n as u64;
    }
    f.sync_all().unwrap();
    path.to_path_buf()
}

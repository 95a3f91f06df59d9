//! Writing images to SD cards and USB sticks, safely and verified.
//!
//! `run` is `nodeforge flash`: pick the bmap, inspect the target and refuse
//! the dangerous cases (`device`), ask, write the mapped ranges with the
//! partition tables last (`write`), read them back past the page cache
//! (`verify`), then optionally stamp a per-node seed and check again.

pub mod buf;
pub mod device;
pub mod json;
pub(crate) mod remote;
pub mod source;
pub mod verify;
pub mod write;

use crate::bmap::{self, Bmap};
use anyhow::{bail, Context, Result};
use device::{ImageFacts, TargetInfo, TargetKind};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use source::{Compression, ImageSource};
use std::fs::File;
use std::io::{BufRead, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;
use verify::VerifyReport;
use write::{Target, WriteReport};

/// What `nodeforge flash` writes where, and how carefully.
#[derive(Debug, Clone)]
pub struct FlashOptions {
    /// Image to write: .img, .img.zst or .img.xz.
    pub image: PathBuf,
    /// Disk to overwrite, or a regular file to write into.
    pub device: PathBuf,
    /// Block map to use (default: beside the image).
    pub bmap: Option<PathBuf>,
    /// Do not ask to type the device name first.
    pub yes: bool,
    /// Allow a disk that is not removable.
    pub force: bool,
    /// Do not read the written data back to check it.
    pub no_verify: bool,
    /// No progress bars or summary.
    pub quiet: bool,
    /// Progress and the result as JSON lines on stdout (no bars).
    pub json: bool,
    /// For an `oci://` image: the registries reached through another URL
    /// (a plain-HTTP address on the LAN, a closer mirror).
    pub mirrors: Vec<crate::oci::Mirror>,
}

/// A per-node change made to the target after the image is written and
/// verified (e.g. the customize module writing nodeforge-seed.toml into the
/// boot partition).
pub trait Stamp {
    /// For messages, e.g. "seed for sentinel-2".
    fn describe(&self) -> String;
    /// Makes the change through `target` (an ordinary, cached file handle on
    /// the whole disk) and returns the byte ranges it may have changed
    /// (e.g. the boot partition); re-verification skips bmap ranges there.
    fn apply(&self, target: &mut File) -> Result<Vec<Range<u64>>>;
    /// Reads the change back and checks it. Called with the page cache of
    /// the target dropped, so it sees what the device holds.
    fn check(&self, target: &mut File) -> Result<()>;
}

/// Where `run_with` looks and talks; `run` uses the real system.
pub struct Env<'a> {
    /// Root under which `sys/` and `proc/self/mountinfo` are read.
    pub sys_root: &'a Path,
    pub stamp: Option<&'a dyn Stamp>,
    /// Where the typed confirmation comes from.
    pub input: &'a mut dyn BufRead,
    /// Device description, prompts and the summary.
    pub output: &'a mut dyn Write,
}

#[derive(Debug)]
pub struct FlashReport {
    pub write: WriteReport,
    pub verify: Option<VerifyReport>,
    /// Re-verification after stamping, if a stamp ran with verification on.
    pub reverify: Option<VerifyReport>,
}

/// `nodeforge flash` on the running system, talking on stdin/stderr,
/// with `stamp` (e.g. the node's seed) applied after the write.
pub fn run(args: &FlashOptions, stamp: Option<&dyn Stamp>) -> Result<()> {
    let stdin = std::io::stdin();
    let mut input = stdin.lock();
    let mut output = std::io::stderr();
    let env = Env {
        sys_root: Path::new("/"),
        stamp,
        input: &mut input,
        output: &mut output,
    };
    run_with(args, env).map(|_| ())
}

/// `run` with its surroundings passed in (tests, and callers adding a seed
/// stamp).
pub fn run_with(args: &FlashOptions, env: Env<'_>) -> Result<FlashReport> {
    let out = env.output;
    let (bmap, bmap_from, mut src) = match args.image.to_str().filter(|s| s.starts_with("oci://")) {
        Some(uri) => remote::open(uri, &args.mirrors)?,
        None => {
            if !args.mirrors.is_empty() {
                bail!(
                    "--mirror applies to oci:// images only; {} is a file",
                    args.image.display()
                );
            }
            let (bmap, from) = load_bmap(args, out)?;
            (bmap, from, ImageSource::open(&args.image)?)
        }
    };
    let info = device::inspect(env.sys_root, &args.device)?;
    let facts = ImageFacts {
        size: bmap.image_size,
        mapped_bytes: bmap.mapped_bytes(),
        file_id: src.file_id,
    };
    let prompt = !args.yes;
    if !args.quiet || prompt {
        writeln!(out, "{}", info.describe())?;
        writeln!(
            out,
            "Image:     {} ({}, {} to write; bmap {})",
            args.image.display(),
            device::human(bmap.image_size),
            device::human(bmap.mapped_bytes()),
            bmap_from
        )?;
    }
    device::check(&info, &facts, args.force)?;
    if prompt {
        confirm(&info, env.input, out)?;
    }

    let mut target = Target::open(&args.device, info.kind, bmap.image_size)?;
    let bars = MultiProgress::with_draw_target(if args.quiet || args.json {
        ProgressDrawTarget::hidden()
    } else {
        ProgressDrawTarget::stderr()
    });
    let write_bar = bars.add(progress(bmap.mapped_bytes(), "writing"));
    let verify_bar =
        (!args.no_verify).then(|| bars.add(progress(bmap.mapped_bytes(), "verifying")));
    let reporter = args.json.then(|| {
        json::Reporter::start(
            std::iter::once(&write_bar)
                .chain(&verify_bar)
                .cloned()
                .collect(),
        )
    });
    let (write, verify) = match &verify_bar {
        None => (
            write::write_image(&mut src, &bmap, &mut target, &write_bar)?,
            None,
        ),
        Some(verify_bar) => {
            let (w, v) =
                verify::write_and_verify(&mut src, &bmap, &mut target, &write_bar, verify_bar)?;
            (w, Some(v))
        }
    };
    src.finish()?;
    // Before the bars finish: finishing sets a bar's position to its length.
    if let Some(r) = reporter {
        r.finish();
    }
    write_bar.finish_and_clear();
    if let Some(b) = &verify_bar {
        b.finish_and_clear();
    }
    let mut reverify = None;
    let mut stamped = None;
    if let Some(stamp) = env.stamp {
        let what = stamp.describe();
        let changed = stamp
            .apply(target.file()?)
            .with_context(|| format!("stamping {what} into {}", args.device.display()))?;
        target.sync()?;
        verify::drop_cache(target.file()?)
            .with_context(|| format!("dropping cached pages of {}", args.device.display()))?;
        stamp
            .check(target.file()?)
            .with_context(|| format!("checking {what} on {}", args.device.display()))?;
        if !args.no_verify {
            reverify = Some(verify_step(args, &bmap, &changed, "re-verify")?);
        }
        if !args.quiet && !args.json {
            writeln!(out, "Stamped {what}")?;
        }
        stamped = Some(what);
    }
    target.reread_partitions();
    let report = FlashReport {
        write,
        verify,
        reverify,
    };
    if args.json {
        json::line(&json::result(args, &report, stamped.as_deref()));
    } else if !args.quiet {
        let (write, verify) = (&report.write, &report.verify);
        writeln!(
            out,
            "Wrote {} in {} ({}/s)",
            device::human(write.bytes),
            secs(write.elapsed),
            device::human(rate(write.bytes, write.elapsed))
        )?;
        match &verify {
            Some(v) if v.unchecked_ranges > 0 => writeln!(
                out,
                "Read back {} (done {} after the start); {} ranges have no checksum in the bmap and were not checked",
                device::human(v.bytes),
                secs(v.elapsed),
                v.unchecked_ranges
            )?,
            Some(v) => writeln!(
                out,
                "Read back {} (done {} after the start): every mapped range matches the image",
                device::human(v.bytes),
                secs(v.elapsed)
            )?,
            None => writeln!(out, "Not verified (--no-verify)")?,
        }
    }
    Ok(report)
}

fn verify_step(
    args: &FlashOptions,
    bmap: &Bmap,
    skip: &[Range<u64>],
    msg: &'static str,
) -> Result<VerifyReport> {
    let bar = progress(bmap.mapped_bytes(), msg);
    if !args.quiet && !args.json {
        bar.set_draw_target(ProgressDrawTarget::stderr());
    }
    let reporter = args.json.then(|| json::Reporter::start(vec![bar.clone()]));
    let report = verify::verify(&args.device, bmap, skip, &bar)?;
    if let Some(r) = reporter {
        r.finish();
    }
    bar.finish_and_clear();
    Ok(report)
}

/// The bmap to use and where it came from: `--bmap`, the file next to the
/// image, or (raw images only) a scan of the image itself.
fn load_bmap(args: &FlashOptions, out: &mut dyn Write) -> Result<(Bmap, String)> {
    if let Some(p) = &args.bmap {
        return Ok((Bmap::load(p)?, p.display().to_string()));
    }
    if let Some(p) = bmap::bmap_path_for(&args.image) {
        return Ok((Bmap::load(&p)?, p.display().to_string()));
    }
    if Compression::of(&args.image) != Compression::None {
        bail!(
            "no bmap found next to {}; pass --bmap FILE (nodeforge build writes <image>.bmap), or decompress the image first",
            args.image.display()
        );
    }
    if !args.quiet {
        writeln!(
            out,
            "No bmap next to {}; scanning the image for its data ranges",
            args.image.display()
        )?;
    }
    Ok((
        Bmap::create(&args.image)?,
        "made by scanning the image".into(),
    ))
}

/// Asks the user to type the device's name (e.g. `sdb` or `/dev/sdb`).
pub fn confirm(info: &TargetInfo, input: &mut dyn BufRead, out: &mut dyn Write) -> Result<()> {
    let what = if info.kind == TargetKind::BlockDevice {
        "Everything on it will be lost."
    } else {
        "The file will be overwritten."
    };
    write!(out, "{what} Type {} to go on: ", info.name)?;
    out.flush()?;
    let mut line = String::new();
    if input
        .read_line(&mut line)
        .context("reading the confirmation")?
        == 0
    {
        bail!("no confirmation given (input closed); nothing was written. Pass --yes to skip the question");
    }
    let typed = line.trim();
    if typed == info.name || Path::new(typed) == info.path {
        Ok(())
    } else {
        bail!("typed {typed:?}, not {:?}; nothing was written", info.name)
    }
}

/// A styled bar that draws nowhere until it is added to a MultiProgress or
/// given a target (drawing earlier leaves a stale copy on the terminal).
fn progress(total: u64, msg: &'static str) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::hidden());
    if let Ok(style) = ProgressStyle::with_template(
        "{msg:>10} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(msg);
    bar
}

fn rate(bytes: u64, d: Duration) -> u64 {
    (bytes as f64 / d.as_secs_f64().max(1e-6)) as u64
}

fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

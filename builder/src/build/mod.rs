//! `nodeforge build`: one function that reads as the list of steps.

mod agent;
mod containers;
mod image;
mod outputs;
mod overlay;
pub mod progress;
pub mod reproducible;
mod rootfs;
mod system;
pub mod users;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::Serialize;

use progress::Reporter;
pub use progress::{Output, StepOutcome, StepReport};

use crate::cache::{BuildLock, Cache};
use crate::plan::Plan;

#[derive(Debug, Clone)]
pub struct BuildOptions {
    pub output_dir: PathBuf,
    pub cache_dir: PathBuf,
    pub output: Output,
    /// Build from scratch: do not reuse cached layers.
    pub no_cache: bool,
    /// The agent binary to install; built from the source tree when unset.
    pub agent: Option<PathBuf>,
    /// Take container image blobs from the cache only; a missing one is an
    /// error naming it.
    pub offline: bool,
}

/// What a finished build produced.
#[derive(Debug, Clone, Serialize)]
pub struct BuildResult {
    pub image: PathBuf,
    pub sha256: String,
    pub manifest: PathBuf,
    pub image_size: u64,
    /// Bytes of the image that hold data (the rest are holes).
    pub allocated: u64,
    pub steps: Vec<StepReport>,
}

/// State the steps share.
pub struct BuildContext<'a> {
    pub plan: &'a Plan,
    pub opts: &'a BuildOptions,
    /// The target's root directory being assembled.
    pub rootfs: PathBuf,
    /// The disk image under its temporary name.
    pub image: Option<image::PartialImage>,
    /// SOURCE_DATE_EPOCH: the time every file of the image carries.
    pub epoch: Option<i64>,
    /// Facts steps learn for the manifest (kernel version …).
    pub facts: serde_json::Map<String, serde_json::Value>,
    pub cache: Cache,
    _work: tempfile::TempDir,
    _lock: BuildLock,
}

/// Builds the image described by `plan`.
pub fn build(plan: &Plan, opts: &BuildOptions) -> Result<BuildResult> {
    check_privileges()?;
    let mut ctx = BuildContext::new(plan, opts)?;
    let mut steps = Steps::new(opts.output, 10);
    steps.run("rootfs", &mut ctx, rootfs::run)?;
    steps.run("system", &mut ctx, system::run)?;
    steps.run("overlays", &mut ctx, overlay::run)?;
    steps.run("users", &mut ctx, users::run)?;
    steps.run("agent", &mut ctx, agent::run)?;
    steps.run("containers", &mut ctx, containers::run)?;
    steps.run("esp", &mut ctx, image::write_esp)?;
    steps.run("root-fs", &mut ctx, image::write_root_fs)?;
    steps.run("partition-table", &mut ctx, image::write_partition_table)?;
    let mut result = None;
    steps.run("outputs", &mut ctx, |ctx, reports| {
        let (outcome, r) = outputs::run(ctx, reports)?;
        result = Some(r);
        Ok(outcome)
    })?;
    let mut result = result.expect("outputs step sets the result");
    result.steps = steps.reports;
    Ok(result)
}

impl<'a> BuildContext<'a> {
    fn new(plan: &'a Plan, opts: &'a BuildOptions) -> Result<Self> {
        let cache = Cache::new(&opts.cache_dir);
        let lock = cache.lock_for_build()?;
        let work_parent = cache.work_dir();
        fs::create_dir_all(&work_parent)
            .with_context(|| format!("creating {}", work_parent.display()))?;
        fs::create_dir_all(&opts.output_dir)
            .with_context(|| format!("creating output directory {}", opts.output_dir.display()))?;
        let work = tempfile::Builder::new()
            .prefix(&format!("{}-", plan.profile.name))
            .tempdir_in(&work_parent)
            .with_context(|| format!("creating a work directory in {}", work_parent.display()))?;
        let rootfs = work.path().join("rootfs");
        Ok(BuildContext {
            plan,
            opts,
            rootfs,
            epoch: reproducible::source_date_epoch(&plan.profile)?,
            image: None,
            facts: serde_json::Map::new(),
            cache,
            _work: work,
            _lock: lock,
        })
    }

    /// A path inside the target root (`/etc/fstab` → `<rootfs>/etc/fstab`).
    pub fn target(&self, path: &str) -> PathBuf {
        self.rootfs.join(path.trim_start_matches('/'))
    }
}

type StepFn<'f, 'a> = dyn FnMut(&mut BuildContext<'a>, &[StepReport]) -> Result<StepOutcome> + 'f;

/// Runs steps in order, timing each and reporting its outcome.
struct Steps {
    reporter: Reporter,
    total: usize,
    reports: Vec<StepReport>,
}

impl Steps {
    fn new(output: Output, total: usize) -> Self {
        Steps {
            reporter: Reporter::new(output),
            total,
            reports: Vec::new(),
        }
    }

    fn run<'a, F>(&mut self, name: &str, ctx: &mut BuildContext<'a>, mut step: F) -> Result<()>
    where
        F: FnMut(&mut BuildContext<'a>, &[StepReport]) -> Result<StepOutcome>,
    {
        let f: &mut StepFn<'_, 'a> = &mut step;
        self.reporter
            .start(self.reports.len() + 1, self.total, name);
        let started = Instant::now();
        match f(ctx, &self.reports) {
            Ok(outcome) => {
                let report = StepReport {
                    name: name.to_owned(),
                    outcome,
                    seconds: started.elapsed().as_secs_f64(),
                };
                self.reporter.finish(&report);
                self.reports.push(report);
                Ok(())
            }
            Err(e) => {
                self.reporter.fail(name, started.elapsed().as_secs_f64());
                Err(e.context(format!("build step `{name}` failed")))
            }
        }
    }
}

fn check_privileges() -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "building an image needs root: mmdebstrap installs packages as root and the root \
             filesystem holds files owned by other users. Run it with sudo."
        );
    }
    Ok(())
}

/// The default cache directory: $NODEFORGE_CACHE_DIR, else
/// $XDG_CACHE_HOME/nodeforge, else ~/.cache/nodeforge.
pub fn default_cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("NODEFORGE_CACHE_DIR") {
        return d.into();
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return Path::new(&d).join("nodeforge");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    Path::new(&home).join(".cache/nodeforge")
}

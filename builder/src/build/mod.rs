//! `nodeforge build`: one function that reads as the list of steps.

mod agent;
pub mod archive_epoch;
pub mod containers;
mod context;
mod cross;
mod image;
mod initrd;
pub mod layers;
mod models;
pub mod netboot;
mod outputs;
mod overlay;
pub mod progress;
mod qcow2;
pub mod remote_cache;
pub mod reproducible;
mod rootfs;
pub mod rpi;
pub mod steps;
mod system;
mod uptodate;
pub mod users;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::Serialize;

pub use agent::{cross_linker, host_arch};
pub use context::{BuildContext, BuildOptions, BuildResult};
use progress::Reporter;
pub use progress::{Output, StepOutcome, StepReport};
pub use rootfs::EMULATE_SCRIPTS;
use steps::{Caching, Step};

use crate::cache::Cache;
use crate::plan::Plan;

/// Builds the image described by `plan`.
pub fn build(plan: &Plan, opts: &BuildOptions) -> Result<BuildResult> {
    // First: a bad key should not wait for minutes of bootstrap.
    let signing_key = opts
        .signing_key
        .as_deref()
        .map(crate::release::load_signing_key)
        .transpose()?;
    check_privileges()?;
    // Before minutes of bootstrap: images are built from locked digests only.
    containers::check_locked(plan)?;
    let resolved = with_epoch(plan, opts)?;
    let plan = &resolved;
    let mut ctx = BuildContext::new(plan, opts, signing_key)?;
    if !opts.no_cache {
        if let Some(mut done) = uptodate::reusable_outputs(plan, &opts.output_dir, &ctx.image_key)?
        {
            let reason = format!(
                "{} was built from the same inputs (image key {}) and is unchanged",
                done.image.display(),
                &ctx.image_key[..12]
            );
            let mut runner = Runner::new(opts.output, 1);
            runner.run("outputs", &mut ctx, |ctx| {
                outputs::sign_reused_release(ctx)?;
                Ok(StepOutcome::Reused(reason.clone()))
            })?;
            done.steps = ctx.reports;
            return Ok(done);
        }
    }
    let steps = steps::for_plan(plan);
    let mut runner = Runner::new(opts.output, steps.len());
    for step in steps {
        runner.run_step(step, &mut ctx)?;
    }
    let mut result = ctx
        .result
        .take()
        .context("the outputs step made no result")?;
    result.steps = std::mem::take(&mut ctx.reports);
    Ok(result)
}

/// How two builds of the same inputs compared.
#[derive(Debug, Clone, Serialize)]
pub struct Reproducibility {
    pub identical: bool,
    pub first: String,
    pub second: String,
    /// Partitions (by label) whose bytes differ.
    pub differing_partitions: Vec<String>,
    /// The files written beside the image (netboot files, qcow2, bmap …)
    /// that differ, by name.
    pub differing_files: Vec<String>,
    /// How many of those files were compared.
    pub compared_files: usize,
}

/// Builds `plan` twice — the second time from scratch, with a fresh cache
/// — and compares the images byte for byte.
pub fn verify_reproducible(
    plan: &Plan,
    opts: &BuildOptions,
) -> Result<(BuildResult, Reproducibility)> {
    let resolved = with_epoch(plan, opts)?;
    let plan = &resolved;
    if plan.epoch.is_none() {
        bail!(
            "cannot verify reproducibility: {} (e.g. SOURCE_DATE_EPOCH=$(git log -1 --format=%ct))",
            plan.epoch_source
        );
    }
    let scratch = tempfile::Builder::new()
        .prefix("verify-")
        .tempdir_in(opts.cache_dir.parent().unwrap_or(Path::new("/var/tmp")))
        .context("creating a scratch directory for the second build")?;
    let second_opts = BuildOptions {
        output_dir: scratch.path().join("out"),
        cache_dir: scratch.path().join("cache"),
        no_cache: true,
        // Its progress would interleave with the first's.
        output: Output::Quiet,
        ..opts.clone()
    };
    // Side by side: they share nothing, and a bootstrap keeps about one
    // core busy, so on two cores the check takes about one build's time.
    let (first, second) = std::thread::scope(|s| {
        let second = s.spawn(|| build(plan, &second_opts));
        let first = build(plan, opts);
        let second = match second.join() {
            Ok(r) => r,
            Err(panic) => std::panic::resume_unwind(panic),
        };
        (first, second)
    });
    let first = first?;
    let second = second.context("the second build, from scratch")?;
    let mut differing = Vec::new();
    for part in &plan.layout.partitions {
        let a = hash_range(&first.image, part.offset, part.size)?;
        let b = hash_range(&second.image, part.offset, part.size)?;
        if a != b {
            differing.push(part.label.clone());
        }
    }
    let companions = uptodate::companion_names(plan);
    let mut differing_files = Vec::new();
    for name in &companions {
        let a = crate::fsutil::sha256_file(&opts.output_dir.join(name))?;
        let b = crate::fsutil::sha256_file(&second_opts.output_dir.join(name))?;
        if a != b {
            differing_files.push(name.clone());
        }
    }
    let report = Reproducibility {
        identical: first.sha256 == second.sha256 && differing_files.is_empty(),
        first: first.sha256.clone(),
        second: second.sha256.clone(),
        differing_partitions: differing,
        differing_files,
        compared_files: companions.len(),
    };
    Ok((first, report))
}

/// `plan` with its epoch resolved (the archive's date when nothing else
/// gives one), remembered in the build's cache.
fn with_epoch(plan: &Plan, opts: &BuildOptions) -> Result<Plan> {
    let mut plan = plan.clone();
    plan.resolve_epoch(&opts.cache_dir, opts.offline, true)?;
    Ok(plan)
}

fn hash_range(path: &Path, offset: u64, size: u64) -> Result<String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    f.seek(SeekFrom::Start(offset))?;
    crate::fsutil::sha256_reader(&mut f.take(size))
        .with_context(|| format!("hashing {}", path.display()))
}

impl<'a> BuildContext<'a> {
    fn new(
        plan: &'a Plan,
        opts: &'a BuildOptions,
        signing_key: Option<ssh_key::PrivateKey>,
    ) -> Result<Self> {
        let cache = Cache::new(&opts.cache_dir);
        let lock = cache.lock_for_build()?;
        let work_parent = cache.work_dir();
        crate::fsutil::create_dir_all(&work_parent)
            .with_context(|| format!("creating {}", work_parent.display()))?;
        crate::fsutil::create_dir_all(&opts.output_dir)
            .with_context(|| format!("creating output directory {}", opts.output_dir.display()))?;
        let work = tempfile::Builder::new()
            .prefix(&format!("{}-", plan.profile.name))
            .tempdir_in(&work_parent)
            .with_context(|| format!("creating a work directory in {}", work_parent.display()))?;
        let rootfs = work.path().join("rootfs");
        let epoch = plan.epoch;
        let agent_binary = agent::agent_binary(opts.agent.as_deref(), plan.profile.hardware.arch)?;
        let agent_sha256 = crate::fsutil::sha256_file(&agent_binary)?;
        let builder_sha256 = uptodate::builder_sha256()?;
        let image_key = uptodate::image_key(plan, &agent_sha256, &builder_sha256, epoch);
        // Every step's code is in the nodeforge binary.
        let layer_key = layers::chain_key(
            &plan.rootfs_key,
            "rootfs",
            &serde_json::json!({ "builder": builder_sha256 }),
        );
        Ok(BuildContext {
            plan,
            opts,
            rootfs,
            epoch,
            agent_binary,
            image_key,
            agent_sha256,
            layer_key,
            tree_snapshot: None,
            image: None,
            facts: serde_json::Map::new(),
            reports: Vec::new(),
            digests: Default::default(),
            signing_key,
            result: None,
            cache,
            remote: remote_cache::RemoteCache::new(&opts.remote_cache)?,
            work,
            _lock: lock,
        })
    }
}

/// Runs steps in order, timing each and reporting its outcome.
struct Runner {
    reporter: Reporter,
    total: usize,
}

impl Runner {
    fn new(output: Output, total: usize) -> Self {
        Runner {
            reporter: Reporter::new(output),
            total,
        }
    }

    fn run_step(&mut self, step: &Step, ctx: &mut BuildContext) -> Result<()> {
        match step.caching {
            Caching::Always => self.run(step.name, ctx, step.run),
            Caching::Layer(inputs) => {
                let inputs = inputs(ctx)
                    .with_context(|| format!("reading the inputs of build step `{}`", step.name))?;
                self.run_layered(step.name, ctx, inputs, step.run)
            }
        }
    }

    fn run<'a, F>(&mut self, name: &str, ctx: &mut BuildContext<'a>, mut step: F) -> Result<()>
    where
        F: FnMut(&mut BuildContext<'a>) -> Result<StepOutcome>,
    {
        self.reporter.start(ctx.reports.len() + 1, self.total, name);
        let started = Instant::now();
        match step(ctx) {
            Ok(outcome) => {
                let report = StepReport {
                    name: name.to_owned(),
                    outcome,
                    seconds: started.elapsed().as_secs_f64(),
                };
                self.reporter.finish(&report);
                ctx.reports.push(report);
                Ok(())
            }
            Err(e) => {
                self.reporter.fail(name, started.elapsed().as_secs_f64());
                Err(e.context(format!("build step `{name}` failed")))
            }
        }
    }

    /// Runs a step that changes only the tree, through the layer cache: a
    /// layer under the same chained key is applied instead of running the
    /// step; otherwise the step runs and what it changed is stored.
    fn run_layered(
        &mut self,
        name: &str,
        ctx: &mut BuildContext,
        inputs: serde_json::Value,
        step: fn(&mut BuildContext) -> Result<StepOutcome>,
    ) -> Result<()> {
        let key = layers::chain_key(&ctx.layer_key, name, &inputs);
        ctx.layer_key = key.clone();
        self.run(name, ctx, |ctx| {
            if !ctx.opts.no_cache {
                let mut from = "the cache".to_owned();
                if layers::find(&ctx.cache, &key).is_none() {
                    if let Some(remote) = &ctx.remote {
                        if remote.fetch("layer", &key, &layer_files(&ctx.cache, &key)) {
                            from = format!("the remote cache {}", remote.from_uri());
                        }
                    }
                }
                if let Some(meta) = layers::find(&ctx.cache, &key) {
                    layers::apply(&ctx.cache, &key, &meta, &ctx.rootfs)?;
                    ctx.tree_snapshot = None;
                    ctx.facts.extend(meta.facts);
                    if let Some(remote) = &ctx.remote {
                        remote.store("layer", &key, &layer_files(&ctx.cache, &key));
                    }
                    return Ok(StepOutcome::Reused(format!(
                        "layer {} from {from}",
                        &key[..12]
                    )));
                }
            }
            let before = match ctx.tree_snapshot.take() {
                Some(s) => s,
                None => layers::snapshot(&ctx.rootfs)?,
            };
            let marker = ctx.rootfs.with_file_name("layer-marker");
            let watch = layers::TreeWatch::start(before, &marker)?;
            let facts_before = ctx.facts.clone();
            let outcome = step(ctx)?;
            let (delta, after) = watch.finish(&ctx.rootfs)?;
            ctx.tree_snapshot = Some(after);
            if outcome != StepOutcome::Done {
                return Ok(outcome);
            }
            let facts = ctx
                .facts
                .iter()
                .filter(|(k, v)| facts_before.get(*k) != Some(*v))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            let now = crate::cache::now_secs();
            let meta = layers::LayerMeta {
                step: name.to_owned(),
                summary: format!(
                    "{name} of {}: {} paths, {} deleted",
                    ctx.plan.profile.name,
                    delta.changed.len(),
                    delta.deleted.len()
                ),
                created: now,
                last_used: now,
                deleted: delta.deleted.clone(),
                facts,
            };
            // Refused (a secret in the tree) means only: not cached.
            let stored = layers::store(&ctx.cache, &key, &ctx.rootfs, &delta, &meta)
                .with_context(|| format!("caching the {name} step's layer"))?;
            if let (Ok(_), Some(remote)) = (stored, &ctx.remote) {
                remote.store("layer", &key, &layer_files(&ctx.cache, &key));
            }
            Ok(outcome)
        })
    }
}

/// A step layer's files in the local cache, as the remote cache keeps them.
fn layer_files(cache: &crate::cache::Cache, key: &str) -> [remote_cache::EntryFile; 2] {
    [
        (cache.layer_tar(key), remote_cache::TARBALL),
        (cache.layer_meta_path(key), remote_cache::META),
    ]
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

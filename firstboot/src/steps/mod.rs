//! The first-boot steps. Each is one function taking the step context and
//! returning what it did or why it skipped; each must be idempotent, because
//! an interrupted boot re-runs the step that was in progress.
//!
//! Adding a step (e.g. `Containers`, which loads the baked images and runs
//! `docker compose up -d` per stack) means: one variant below, its place in
//! [`Step::ALL`], its name in [`Step::name`], and one function called from
//! [`Step::run`]; the compiler points at every match that needs it.

use std::path::Path;
use std::time::Duration;

use anyhow::Result;

use crate::config::BakedConfig;
use crate::runner::CommandRunner;
use crate::seed::load::SeedSource;
use crate::seed::Seed;

mod backup;
mod containers;
mod grow;
mod network;
mod ondisk;
mod scrub;
mod secrets;
mod storage;
pub(crate) mod system;
mod tailnet;

pub use containers::{missing_images, parse_ps, probe, retags, service_status, PsEntry};
pub use grow::{plan_grow, GrowPlan, NotGrowable};
pub use storage::{fstab_line, matches as disk_matches, Refusal, CLAIMS_PATH};
pub use tailnet::AUTHKEY_RUN_PATH;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Hostname,
    GrowRoot,
    Storage,
    SshHostKeys,
    AuthorizedKeys,
    StackSecrets,
    BackupRepository,
    Network,
    Tailscale,
    ScrubSecrets,
    Containers,
    Complete,
}

impl Step {
    /// Execution order.
    pub const ALL: &'static [Step] = &[
        Step::Hostname,
        Step::GrowRoot,
        Step::Storage,
        Step::SshHostKeys,
        Step::AuthorizedKeys,
        Step::StackSecrets,
        Step::BackupRepository,
        Step::Network,
        Step::Tailscale,
        Step::ScrubSecrets,
        Step::Containers,
        Step::Complete,
    ];

    /// The name used in the journal, status.json and on the console.
    pub fn name(self) -> &'static str {
        match self {
            Step::Hostname => "hostname",
            Step::GrowRoot => "grow-root",
            Step::Storage => "storage",
            Step::SshHostKeys => "ssh-host-keys",
            Step::AuthorizedKeys => "authorized-keys",
            Step::StackSecrets => "stack-secrets",
            Step::BackupRepository => "backup-repository",
            Step::Network => "network",
            Step::Tailscale => "tailscale",
            Step::ScrubSecrets => "scrub-secrets",
            Step::Containers => "containers",
            Step::Complete => "complete",
        }
    }

    pub fn run(self, ctx: &mut Ctx<'_>) -> Result<Outcome> {
        match self {
            Step::Hostname => system::hostname(ctx),
            Step::GrowRoot => grow::grow_root(ctx),
            Step::Storage => storage::storage(ctx),
            Step::SshHostKeys => system::ssh_host_keys(ctx),
            Step::AuthorizedKeys => system::authorized_keys(ctx),
            Step::StackSecrets => secrets::stack_secrets(ctx),
            Step::BackupRepository => backup::backup_repository(ctx),
            Step::Network => network::wait_for_network(ctx),
            Step::Tailscale => tailnet::join(ctx),
            Step::ScrubSecrets => scrub::scrub_secrets(ctx),
            Step::Containers => containers::containers(ctx),
            Step::Complete => Ok(Outcome::Done("first boot finished".into())),
        }
    }

    /// Must this step wait while `failed` stays failed? After a
    /// [`Refusal`] or a failure that [`Step::degrades`], the agent runs
    /// the steps that do not: the node joins the tailnet so it can be
    /// fixed, but no stack starts writing where its data disk should be
    /// mounted; without the tailnet the stacks start all the same.
    pub fn waits_for(self, failed: Step) -> bool {
        match self {
            Step::Complete => true,
            Step::Containers => failed == Step::Storage,
            // No join without a network.
            Step::Tailscale => failed == Step::Network,
            // The auth key stays until a join has used it: the retry needs it.
            Step::ScrubSecrets => matches!(failed, Step::Network | Step::Tailscale),
            Step::Hostname
            | Step::GrowRoot
            | Step::Storage
            | Step::SshHostKeys
            | Step::AuthorizedKeys
            | Step::StackSecrets
            | Step::BackupRepository
            | Step::Network => false,
        }
    }

    /// Does this step's work live in the root slot (the engine's
    /// containers, fstab lines for data disks, units), so that a boot from
    /// a newly written slot runs it again? The others' work is on the
    /// state partition or carried into the new slot by the updater
    /// (hostname, SSH host keys, authorized keys), and the seed they read
    /// is gone by then.
    pub fn per_slot(self) -> bool {
        match self {
            Step::Storage
            | Step::StackSecrets
            | Step::BackupRepository
            | Step::Containers
            | Step::Complete => true,
            Step::Hostname
            | Step::GrowRoot
            | Step::SshHostKeys
            | Step::AuthorizedKeys
            | Step::Network
            | Step::Tailscale
            | Step::ScrubSecrets => false,
        }
    }

    /// Does a failure here leave the node useful? Then the steps that do
    /// not wait for it run (the stacks start, SSH and the console work),
    /// the run ends degraded, and systemd retries it with backoff.
    pub fn degrades(self) -> bool {
        matches!(self, Step::Network | Step::Tailscale)
    }
}

/// What a successful step reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Done(String),
    Skipped(String),
}

/// Facts steps learn that status.json reports beside the step list.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Notes {
    pub tailscale_ip: Option<String>,
    pub secrets: Option<String>,
    /// Per-service state of the compose stacks.
    pub services: Option<Vec<crate::status::ServiceStatus>>,
}

/// Everything a step may use. Paths are in-image absolute paths resolved
/// against `root` with [`crate::fsutil::under`].
pub struct Ctx<'a> {
    pub root: &'a Path,
    /// True when `root` is the running system: only then does the agent
    /// touch kernel state (sethostname) or file ownership.
    pub live: bool,
    pub runner: &'a dyn CommandRunner,
    /// Injected so tests of bounded waits do not sleep.
    pub sleep: &'a dyn Fn(Duration),
    pub cfg: &'a BakedConfig,
    pub seed: &'a Seed,
    pub seed_source: Option<&'a SeedSource>,
    /// Program used for the Tailscale CLI (`tailscale`, or a stand-in).
    pub tailscale_bin: &'a str,
    /// Checks a service's HTTP/TCP probe; injected so tests need no server.
    pub probe: &'a dyn Fn(&crate::stacks::ProbeEntry) -> Result<()>,
    pub notes: Notes,
}

impl Ctx<'_> {
    /// Hostname this node should have: the seed's, else the baked one.
    pub fn hostname(&self) -> &str {
        self.seed.hostname.as_deref().unwrap_or(&self.cfg.hostname)
    }

    /// Baked role tags plus the seed's extra tags, without duplicates.
    pub fn tags(&self) -> Vec<String> {
        let mut tags: Vec<String> = Vec::new();
        let baked = self.cfg.tailscale.iter().flat_map(|t| t.tags.iter());
        for t in baked.chain(self.seed.tailscale_tags.iter()) {
            if !tags.contains(t) {
                tags.push(t.clone());
            }
        }
        tags
    }
}

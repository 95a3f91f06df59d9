//! The agent: load config and seed, walk the step journal, keep status.json
//! and systemd informed, and say how it went on the console.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;

use crate::config::BakedConfig;
use crate::fsutil::under;
use crate::journal::Journal;
use crate::notify::Notifier;
use crate::redact::redact;
use crate::runner::CommandRunner;
use crate::seed::load::{load_seed, SeedLoadError};
use crate::status::{now_rfc3339, RunState, Sample, Status, StepState, StepStatus};
use crate::steps::{Ctx, Notes, Outcome, Refusal, Step};
use crate::tailscale::TailscaleError;
use crate::READY_MARKER;

/// Where output goes. The console gets one summary line; progress goes to
/// the journal only (stderr, see the unit), so the console stays usable.
/// Tests hook the step boundaries to simulate a kill there.
pub trait Observer {
    fn summary(&self, line: &str);
    fn progress(&self, line: &str);
    fn before_step(&self, _step: Step) {}
    fn after_step(&self, _step: Step) {}
}

/// stdout (journal + console) for the summary, stderr for progress.
pub struct Console;

impl Observer for Console {
    fn summary(&self, line: &str) {
        println!("{line}");
    }
    fn progress(&self, line: &str) {
        eprintln!("{line}");
    }
}

/// How a run failed; the exit code tells systemd whether to retry.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Baked config missing or invalid: retrying cannot help.
    #[error("config: {0}")]
    Config(String),
    /// Seed present but invalid: retrying cannot help until it is fixed.
    #[error("seed: {0}")]
    BadSeed(String),
    /// A step failed; it is retried on the next start.
    #[error("step {step} failed: {message}")]
    Step { step: &'static str, message: String },
    /// A step refused to act (a disk holding data): the other steps ran,
    /// and only a person can fix it, so systemd does not retry.
    #[error("step {step} refused: {message}")]
    Refused { step: &'static str, message: String },
    /// A step the node can run without failed (the tailnet join): the
    /// others ran, and systemd retries the run with backoff.
    #[error("degraded: step {step} failed: {message}")]
    Degraded { step: &'static str, message: String },
    /// Anything else (seed server unreachable, state not writable, …).
    #[error("{0:#}")]
    Other(anyhow::Error),
}

impl RunError {
    /// 3 is listed in the unit's RestartPreventExitStatus.
    pub fn exit_code(&self) -> u8 {
        match self {
            RunError::Config(_) | RunError::BadSeed(_) | RunError::Refused { .. } => 3,
            RunError::Step { .. } | RunError::Degraded { .. } | RunError::Other(_) => 1,
        }
    }
}

impl From<anyhow::Error> for RunError {
    fn from(e: anyhow::Error) -> Self {
        RunError::Other(e)
    }
}

pub struct Agent<'a> {
    pub root: PathBuf,
    pub runner: &'a dyn CommandRunner,
    pub observer: &'a dyn Observer,
    pub sleep: &'a dyn Fn(Duration),
    pub notifier: Notifier,
    pub tailscale_bin: String,
    /// Service probes of the containers step (real network checks).
    pub probe: &'a dyn Fn(&crate::stacks::ProbeEntry) -> anyhow::Result<()>,
}

impl<'a> Agent<'a> {
    pub fn new(
        root: impl Into<PathBuf>,
        runner: &'a dyn CommandRunner,
        observer: &'a dyn Observer,
    ) -> Self {
        Agent {
            root: root.into(),
            runner,
            observer,
            sleep: &std::thread::sleep,
            notifier: Notifier::disabled(),
            tailscale_bin: "tailscale".into(),
            probe: &crate::steps::probe,
        }
    }

    /// A boot from another slot than the steps last ran on (an update,
    /// or the fallback after one failed): the steps whose work lives in
    /// the slot run again.
    fn note_slot(
        &self,
        root: &Path,
        slots: &crate::slots::SlotsConfig,
        journal: &mut Journal,
    ) -> anyhow::Result<()> {
        let Some(slot) = slots.running_slot(root).unwrap_or(None) else {
            return Ok(());
        };
        let partuuid = slots.partuuid(slot).to_owned();
        match &journal.slot {
            Some(last) if *last == partuuid => return Ok(()),
            Some(_) => {
                journal
                    .finished
                    .retain(|r| !Step::ALL.iter().any(|s| s.per_slot() && s.name() == r.name));
                self.observer.progress(&format!(
                    "nodeforge-firstboot: running from slot {} for the first time: its stacks \
                     start",
                    slot.letter()
                ));
            }
            None => {}
        }
        journal.slot = Some(partuuid);
        journal.save(root)
    }

    /// Runs (or resumes, or confirms) first boot.
    pub fn run(&self) -> Result<Status, RunError> {
        let t0 = Sample::now();
        let root = self.root.as_path();
        for d in ["/run/nodeforge", "/var/lib/nodeforge"] {
            let p = under(root, d);
            fs::create_dir_all(&p).with_context(|| format!("creating {}", p.display()))?;
        }
        let _lock = lock(root)?;

        let cfg = match BakedConfig::load(root) {
            Ok(c) => c,
            Err(e) => {
                let msg = format!("{e:#}");
                let mut st = Status::new("unknown", "unknown", &[]);
                st.state = RunState::Failed;
                st.error = Some(msg.clone());
                st.write(root, true)?;
                self.fail_line(&format!("FAILED: {msg}"));
                return Err(RunError::Config(msg));
            }
        };

        let mut journal = match Journal::load(root) {
            Ok(j) => j,
            Err(e) => {
                // Every step reads the machine's state before acting, so
                // starting over is safe; keep the bad file for a post-mortem.
                let path = Journal::path(root);
                let aside = path.with_extension("json.corrupt");
                fs::rename(&path, &aside)
                    .with_context(|| format!("moving {} aside", path.display()))?;
                self.observer.progress(&format!(
                    "nodeforge-firstboot: {e:#}; moved to {} and starting over",
                    aside.display()
                ));
                Journal::default()
            }
        };
        // A disk cloned from a joined node (identity-check moved its
        // tailnet state aside before tailscaled started): the join and
        // what followed it run again, as for a new node.
        if let Some(c) = crate::identity::cloned(root)? {
            let before = journal.finished.len();
            journal.finished.retain(|r| {
                ![Step::Tailscale, Step::ScrubSecrets, Step::Complete]
                    .iter()
                    .any(|s| s.name() == r.name)
            });
            if journal.finished.len() != before {
                journal.save(root)?;
                self.observer.progress(&format!(
                    "nodeforge-firstboot: this disk joined on {} and now runs on {}: joining anew",
                    c.joined_on.describe(),
                    c.now_on.describe()
                ));
            }
        }
        if let Some(slots) = &cfg.slots {
            self.note_slot(root, slots, &mut journal)?;
        }
        let names: Vec<&str> = Step::ALL.iter().map(|s| s.name()).collect();
        let mut status = Status::new(&cfg.role, &cfg.profile, &names);
        if let Ok(Some(prev)) = Status::read(root) {
            status.tailscale_ip = prev.tailscale_ip;
            status.secrets = prev.secrets;
            status.seed_source = prev.seed_source;
            status.hostname = prev.hostname;
            status.services = prev.services;
        }
        for rec in &journal.finished {
            if let Some(s) = status.step_mut(&rec.name) {
                *s = StepStatus {
                    earlier_run: true,
                    ..rec.clone()
                };
            }
        }

        status.runs = journal.runs;
        if journal.is_finished(Step::Complete.name()) {
            // Every later boot: confirm quickly, say ready again, write
            // nothing to disk.
            status.state = RunState::Complete;
            return self.finish(status, &t0, true);
        }
        journal.runs += 1;
        journal.save(root)?;
        status.runs = journal.runs;

        let (seed, source) = match load_seed(root, &cfg, self.sleep) {
            Ok(s) => s,
            Err(SeedLoadError::Bad(msg)) => {
                let msg = redact(&msg, None);
                status.state = RunState::Failed;
                status.seed_error = Some(msg.clone());
                status.error = Some(format!("bad seed: {msg}"));
                self.write_status(&mut status, &t0, true)?;
                self.fail_line(&format!(
                    "FAILED: bad seed: {msg} (fix or remove it and reboot; console login still works)"
                ));
                return Err(RunError::BadSeed(msg));
            }
            Err(SeedLoadError::Unreachable(msg)) => {
                status.state = RunState::Failed;
                status.seed_error = Some(msg.clone());
                status.error = Some(format!("seed not fetched: {msg}"));
                self.write_status(&mut status, &t0, true)?;
                self.fail_line(&format!("FAILED: seed not fetched: {msg}; will retry"));
                return Err(RunError::Other(anyhow::anyhow!(msg)));
            }
        };
        let key = seed
            .tailscale_auth_key
            .as_ref()
            .map(|k| k.expose().to_string());
        status.seed_source = source.as_ref().map(|s| s.to_string());
        let mut ctx = Ctx {
            root,
            live: root == Path::new("/"),
            runner: self.runner,
            sleep: self.sleep,
            cfg: &cfg,
            seed: &seed,
            seed_source: source.as_ref(),
            tailscale_bin: &self.tailscale_bin,
            probe: self.probe,
            notes: Notes::default(),
        };
        status.hostname = Some(ctx.hostname().to_string());

        let total = Step::ALL.len();
        // Steps that refused this run, and steps whose failure leaves the
        // node useful (see Step::degrades), with their messages.
        let mut refused: Vec<(Step, String)> = Vec::new();
        let mut degraded: Vec<(Step, String)> = Vec::new();
        let earlier_error = status_error_before(root);
        for (i, &step) in Step::ALL.iter().enumerate() {
            let name = step.name();
            if journal.is_finished(name) {
                continue;
            }
            if let Some((r, _)) = refused
                .iter()
                .chain(&degraded)
                .find(|(r, _)| step.waits_for(*r))
            {
                if let Some(s) = status.step_mut(name) {
                    s.detail = Some(format!("waits for step {}", r.name()));
                }
                continue;
            }
            self.observer.before_step(step);
            let started = now_rfc3339();
            if let Some(s) = status.step_mut(name) {
                *s = StepStatus::pending(name);
                s.state = StepState::Running;
                s.started_at = Some(started.clone());
            }
            self.write_status(&mut status, &t0, false)?;
            self.notifier
                .status(&format!("step {}/{total}: {name}", i + 1));

            let sample = Sample::now();
            let result = step.run(&mut ctx);
            let (wall, cpu, children) = sample.elapsed();
            if ctx.notes.tailscale_ip.is_some() {
                status.tailscale_ip = ctx.notes.tailscale_ip.clone();
            }
            if let Some(s) = ctx.notes.services.take() {
                status.services = s;
            }
            if let Some(s) = &ctx.notes.secrets {
                status.secrets = Some(redact(s, key.as_deref()));
            }
            let mut rec = StepStatus::pending(name);
            rec.started_at = Some(started);
            rec.ended_at = Some(now_rfc3339());
            rec.wall_ms = Some(round2(wall));
            rec.cpu_ms = Some(round2(cpu));
            rec.children_cpu_ms = Some(round2(children));
            match result {
                Ok(outcome) => {
                    let (state, detail) = match outcome {
                        Outcome::Done(d) => (StepState::Done, d),
                        Outcome::Skipped(d) => (StepState::Skipped, d),
                    };
                    rec.state = state;
                    rec.detail = Some(redact(&detail, key.as_deref()));
                    // Durable before anything that depends on it.
                    journal.record(root, rec.clone())?;
                    if let Some(s) = status.step_mut(name) {
                        *s = rec.clone();
                    }
                    // The journal is the durable record; the persistent
                    // status copy is written when the run ends (fsyncs
                    // cost more CPU than the steps themselves).
                    self.write_status(&mut status, &t0, false)?;
                    let verb = if state == StepState::Done {
                        "done"
                    } else {
                        "skipped"
                    };
                    self.observer.progress(&format!(
                        "nodeforge-firstboot: [{}/{total}] {name} {verb}: {} ({wall:.0} ms, cpu {cpu:.1} ms)",
                        i + 1,
                        rec.detail.as_deref().unwrap_or("")
                    ));
                    self.observer.after_step(step);
                }
                Err(e) => {
                    let message = redact(&format!("{e:#}"), key.as_deref());
                    rec.state = StepState::Failed;
                    rec.reason = Some(failure_reason(&e).to_string());
                    rec.error = Some(message.clone());
                    if let Some(s) = status.step_mut(name) {
                        *s = rec.clone();
                    }
                    status.state = RunState::Failed;
                    status.error = Some(format!("{name}: {message}"));
                    if refusal(&e).is_some() {
                        // Not journaled: the next boot looks again.
                        self.write_status(&mut status, &t0, false)?;
                        self.observer.progress(&format!(
                            "nodeforge-firstboot: [{}/{total}] {name} refused: {message}",
                            i + 1
                        ));
                        refused.push((step, message));
                        continue;
                    }
                    if step.degrades() {
                        // Not journaled: the retry runs it again.
                        self.write_status(&mut status, &t0, false)?;
                        self.observer.progress(&format!(
                            "nodeforge-firstboot: [{}/{total}] {name} failed ({}): {message}; \
                             going on with the steps that do not need it",
                            i + 1,
                            rec.reason.as_deref().unwrap_or("error")
                        ));
                        degraded.push((step, message));
                        continue;
                    }
                    self.write_status(&mut status, &t0, true)?;
                    self.fail_line(&format!(
                        "FAILED at {name} ({}): {message}; will retry; see `nodeforge-firstboot status`",
                        rec.reason.as_deref().unwrap_or("error")
                    ));
                    return Err(RunError::Step {
                        step: name,
                        message,
                    });
                }
            }
        }
        if let Some((step, message)) = refused.into_iter().next() {
            let name = step.name();
            status.state = RunState::Failed;
            status.error = Some(format!("{name}: {message}"));
            self.write_status(&mut status, &t0, true)?;
            self.fail_line(&format!(
                "FAILED at {name} ({}): {message}; the steps that do not need it ran; \
                 fix it and reboot; see `nodeforge-firstboot status`",
                status
                    .step_mut(name)
                    .and_then(|s| s.reason.clone())
                    .unwrap_or_default()
            ));
            return Err(RunError::Refused {
                step: name,
                message,
            });
        }
        if let Some((step, message)) = degraded.into_iter().next() {
            let name = step.name();
            let reason = status
                .step_mut(name)
                .and_then(|s| s.reason.clone())
                .unwrap_or_default();
            status.state = RunState::Degraded;
            status.error = Some(format!("{name}: {message}"));
            self.write_status(&mut status, &t0, true)?;
            let line = format!(
                "DEGRADED at {name} ({reason}): {message}; the services that do not need it run; \
                 retrying with backoff (a new seed on the boot partition is read at the next try)"
            );
            // Quiet while nothing changes: the console hears of a
            // failure once, not at every retry (the journal has each one).
            if earlier_error.as_deref() == status.error.as_deref() {
                self.observer
                    .progress(&format!("nodeforge-firstboot: still {line}"));
                self.notifier
                    .status(&format!("nodeforge-firstboot: {line}"));
            } else {
                self.fail_line(&line);
            }
            return Err(RunError::Degraded {
                step: name,
                message,
            });
        }
        status.state = RunState::Complete;
        self.finish(status, &t0, false)
    }

    fn write_status(
        &self,
        status: &mut Status,
        t0: &Sample,
        persist: bool,
    ) -> Result<(), RunError> {
        let (wall, cpu, _) = t0.elapsed();
        status.agent_wall_ms = round2(wall);
        status.agent_cpu_ms = round2(cpu);
        status.updated_at = now_rfc3339();
        status.write(&self.root, persist)?;
        Ok(())
    }

    fn fail_line(&self, msg: &str) {
        let line = format!("nodeforge-firstboot: {msg}");
        self.observer.summary(&line);
        self.notifier.status(&line);
    }

    fn finish(&self, mut status: Status, t0: &Sample, again: bool) -> Result<Status, RunError> {
        self.write_status(&mut status, t0, !again)?;
        let skipped = status
            .steps
            .iter()
            .filter(|s| s.state == StepState::Skipped)
            .count();
        let line = format!(
            "{READY_MARKER}: host {}, role {}, tailnet {}, {} steps ({skipped} skipped){}, agent {:.0} ms wall, {:.1} ms cpu",
            status.hostname.as_deref().unwrap_or("?"),
            status.role,
            status.tailscale_ip.as_deref().unwrap_or("none"),
            status.steps.len(),
            if again { ", first boot done earlier" } else { "" },
            status.agent_wall_ms,
            status.agent_cpu_ms,
        );
        self.observer.summary(&line);
        self.notifier.ready(&line);
        Ok(status)
    }
}

/// The error the last run ended with, if it ended degraded.
fn status_error_before(root: &Path) -> Option<String> {
    match Status::read(root) {
        Ok(Some(s)) if s.state == RunState::Degraded => s.error,
        _ => None,
    }
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// Machine-readable class of a failure for status.json.
fn failure_reason(e: &anyhow::Error) -> &'static str {
    e.chain()
        .find_map(|c| c.downcast_ref::<TailscaleError>())
        .map(TailscaleError::reason)
        .or_else(|| refusal(e).map(|r| r.reason))
        .unwrap_or("error")
}

fn refusal(e: &anyhow::Error) -> Option<&Refusal> {
    e.chain().find_map(|c| c.downcast_ref::<Refusal>())
}

/// One agent at a time (a manual run must not race the unit).
fn lock(root: &Path) -> anyhow::Result<fs::File> {
    crate::fsutil::exclusive_lock(
        &under(root, "/run/nodeforge/agent.lock"),
        "another nodeforge-firstboot",
    )
}

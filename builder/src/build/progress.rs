//! How build steps are shown: spinners for people, JSON lines for
//! machines, or nothing.

use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    Human,
    Json,
    Quiet,
}

/// How a step ended.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(tag = "status", content = "reason", rename_all = "lowercase")]
pub enum StepOutcome {
    Done,
    /// Its result came from the cache.
    Reused(String),
    Skipped(String),
}

#[derive(Debug, Clone, Serialize)]
pub struct StepReport {
    pub name: String,
    #[serde(flatten)]
    pub outcome: StepOutcome,
    pub seconds: f64,
}

pub struct Reporter {
    output: Output,
    current: Option<ProgressBar>,
    /// stderr is a terminal: spinners; otherwise plain lines (CI logs).
    live: bool,
}

impl Reporter {
    pub fn new(output: Output) -> Self {
        use std::io::IsTerminal;
        Reporter {
            output,
            current: None,
            live: std::io::stderr().is_terminal(),
        }
    }

    pub fn start(&mut self, index: usize, total: usize, name: &str) {
        match self.output {
            Output::Human if !self.live => eprintln!("[{index}/{total}] {name} …"),
            Output::Human => {
                let bar = ProgressBar::new_spinner();
                bar.set_style(
                    ProgressStyle::with_template("{spinner} [{prefix}] {msg} {elapsed}")
                        .expect("static template"),
                );
                bar.set_prefix(format!("{index}/{total}"));
                bar.set_message(name.to_owned());
                bar.enable_steady_tick(Duration::from_millis(120));
                self.current = Some(bar);
            }
            Output::Json => emit(&serde_json::json!({"event": "step-start", "step": name})),
            Output::Quiet => {}
        }
    }

    pub fn finish(&mut self, report: &StepReport) {
        match self.output {
            Output::Human => {
                let line = match &report.outcome {
                    StepOutcome::Done => format!("✓ {:<16} {:>7.1}s", report.name, report.seconds),
                    StepOutcome::Reused(why) => format!(
                        "✓ {:<16} {:>7.1}s  reused: {why}",
                        report.name, report.seconds
                    ),
                    StepOutcome::Skipped(why) => format!(
                        "- {:<16} {:>7.1}s  skipped: {why}",
                        report.name, report.seconds
                    ),
                };
                match self.current.take() {
                    Some(bar) => bar.finish_with_message(line),
                    None => eprintln!("{line}"),
                }
            }
            Output::Json => emit(&serde_json::json!({"event": "step-end", "report": report})),
            Output::Quiet => {}
        }
    }

    pub fn fail(&mut self, name: &str, seconds: f64) {
        match self.output {
            Output::Human => {
                let line = format!("✗ {name:<16} {seconds:>7.1}s");
                match self.current.take() {
                    Some(bar) => bar.abandon_with_message(line),
                    None => eprintln!("{line}"),
                }
            }
            Output::Json => {
                emit(&serde_json::json!({"event": "step-failed", "step": name, "seconds": seconds}))
            }
            Output::Quiet => {}
        }
    }
}

fn emit(v: &serde_json::Value) {
    println!("{v}");
}

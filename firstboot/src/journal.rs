//! The step journal (`/var/lib/nodeforge/journal.json`): which steps have
//! finished, recorded only after they succeeded and written atomically, so
//! a first boot interrupted at any point resumes where it stopped.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::fsutil::{atomic_write, read_optional, under};
use crate::status::{StepState, StepStatus};

pub const JOURNAL_PATH: &str = "/var/lib/nodeforge/journal.json";

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Journal {
    /// Finished steps (done or skipped), in the order they finished.
    /// Keyed by name, not enum, so a journal from an older or newer agent
    /// still loads.
    pub finished: Vec<StepStatus>,
    /// How many times the agent has started on this machine.
    #[serde(default)]
    pub runs: u32,
    /// With A/B slots: the PARTUUID of the slot the steps last ran on. A
    /// boot from the other slot runs the steps that belong to a slot
    /// again (see `Step::per_slot`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<String>,
}

impl Journal {
    pub fn path(root: &Path) -> PathBuf {
        under(root, JOURNAL_PATH)
    }

    /// Loads the journal; absent means a fresh machine.
    pub fn load(root: &Path) -> Result<Journal> {
        let path = Self::path(root);
        match read_optional(&path)? {
            None => Ok(Journal::default()),
            Some(text) => serde_json::from_str(&text)
                .with_context(|| format!("parsing journal {}", path.display())),
        }
    }

    pub fn save(&self, root: &Path) -> Result<()> {
        let path = Self::path(root);
        let json = serde_json::to_string_pretty(self).expect("Journal always serialises");
        atomic_write(&path, json.as_bytes(), 0o644)
            .with_context(|| format!("writing journal {}", path.display()))
    }

    pub fn get(&self, step: &str) -> Option<&StepStatus> {
        self.finished.iter().find(|s| s.name == step)
    }

    pub fn is_finished(&self, step: &str) -> bool {
        self.get(step).is_some()
    }

    /// Records a finished step and makes it durable before returning.
    pub fn record(&mut self, root: &Path, rec: StepStatus) -> Result<()> {
        debug_assert!(matches!(rec.state, StepState::Done | StepState::Skipped));
        self.finished.retain(|s| s.name != rec.name);
        self.finished.push(rec);
        self.save(root)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_survive_reload() {
        let root = tempfile::tempdir().unwrap();
        let mut j = Journal::load(root.path()).unwrap();
        assert_eq!(j, Journal::default());
        let mut rec = StepStatus::pending("hostname");
        rec.state = StepState::Done;
        j.record(root.path(), rec.clone()).unwrap();
        j.record(root.path(), rec).unwrap();
        let back = Journal::load(root.path()).unwrap();
        assert_eq!(back.finished.len(), 1);
        assert!(back.is_finished("hostname") && !back.is_finished("complete"));
    }

    #[test]
    fn corrupt_journal_names_the_file() {
        let root = tempfile::tempdir().unwrap();
        let p = Journal::path(root.path());
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, "{").unwrap();
        let e = format!("{:#}", Journal::load(root.path()).unwrap_err());
        assert!(e.contains("journal.json"), "{e}");
    }
}

//! `nodeforge-firstboot assess`, after the agent on every boot of an A/B
//! node: a slot on trial (its entry still counts tries) is blessed once
//! the agent finished with its stacks healthy, by renaming its entry
//! without the counter as systemd-bless-boot does; an unhealthy trial
//! (the agent failed, its stacks unhealthy after their health timeout)
//! has its remaining tries spent at once, as `+0-N`, and exits non-zero:
//! its unit's `FailureAction=reboot` boots the other slot. A trial that
//! never gets this far (a panic, a hang) spends one try per boot. A
//! trial whose tries ran out (the old slot booted again) is recorded as
//! failed, so the updater does not install that version again.

use std::fs;
use std::path::Path;

use anyhow::{Context, Result};

use super::switch::{entries, pending_path, FoundEntry, Pending, ESP_MOUNT};
use crate::fsutil::under;
use crate::slots::{self, SlotsConfig};
use crate::status::{RunState, Status};

/// What `assess` found and did, for its one console line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Assessment {
    /// The running slot's entry has no counter: nothing on trial.
    NotOnTrial,
    /// The running slot was on trial and is healthy: now it is the slot.
    Blessed { slot: char, generation: Option<u64> },
}

/// Why a trial boot is not blessed.
#[derive(Debug, thiserror::Error)]
pub enum Unhealthy {
    #[error(
        "slot {slot} is on trial and the agent has not finished this boot ({why}); its tries are \
         spent, the other slot boots next"
    )]
    NotFinished { slot: char, why: String },
}

/// Assesses this boot. `failed_note` gets a line for each earlier trial
/// recorded as failed.
pub fn assess(root: &Path, cfg: &SlotsConfig, say: &mut dyn FnMut(&str)) -> Result<Assessment> {
    let Some(running) = cfg.running_slot(root).context("reading /proc/cmdline")? else {
        return Ok(Assessment::NotOnTrial);
    };
    let esp = under(root, ESP_MOUNT);
    let found = entries(&esp)?;
    record_spent_trials(root, &esp, &found, running, say)?;
    let Some(FoundEntry {
        name,
        counter: Some((left, done)),
        text,
        ..
    }) = found.iter().find(|e| e.slot == running)
    else {
        return Ok(Assessment::NotOnTrial);
    };
    // The copy in /run: written by the agent during this boot only.
    let run_status = under(root, crate::status::RUN_STATUS_PATH);
    let status: Option<Status> = match crate::fsutil::read_optional(&run_status)? {
        None => None,
        Some(t) => Some(
            serde_json::from_str(&t)
                .with_context(|| format!("parsing {}", run_status.display()))?,
        ),
    };
    let why = match &status {
        None => Some("no status this boot".to_owned()),
        Some(s) if s.state != RunState::Complete => Some(format!("its state is {:?}", s.state)),
        Some(_) => None,
    };
    let dir = esp.join("loader/entries");
    if let Some(why) = why {
        // The agent gave its stacks their whole health timeout (or failed
        // outright): another try would end the same way, so the entry's
        // tries are spent now and the next boot is the other slot's.
        let spent = dir.join(slots::entry_file_name(running, Some((0, left + done))));
        fs::rename(dir.join(name), &spent)
            .with_context(|| format!("renaming {} to {}", name, spent.display()))?;
        crate::fsutil::sync_dir(&dir)?;
        return Err(Unhealthy::NotFinished {
            slot: running.letter(),
            why,
        }
        .into());
    }
    let blessed = dir.join(slots::entry_file_name(running, None));
    fs::rename(dir.join(name), &blessed)
        .with_context(|| format!("renaming {} to {}", name, blessed.display()))?;
    crate::fsutil::sync_dir(&dir)?;
    let _ = fs::remove_file(pending_path(root));
    Ok(Assessment::Blessed {
        slot: running.letter(),
        generation: slots::entry_version(text),
    })
}

/// The other slot's entry out of tries: its version is recorded as
/// failed (from the pending record), and the entry and its kernel go.
fn record_spent_trials(
    root: &Path,
    esp: &Path,
    found: &[FoundEntry],
    running: slots::Slot,
    say: &mut dyn FnMut(&str),
) -> Result<()> {
    for FoundEntry {
        name,
        slot,
        counter,
        ..
    } in found
    {
        let (Some((0, tries)), true) = (counter, *slot != running) else {
            continue;
        };
        let pending: Option<Pending> = fs::read(pending_path(root))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        let version = pending
            .filter(|p| p.slot == *slot)
            .map(|p| p.version)
            .unwrap_or_else(|| "unknown".into());
        let state = under(root, super::STATE_DIR);
        fs::create_dir_all(&state).with_context(|| format!("creating {}", state.display()))?;
        let failed = state.join("failed");
        let mut text = fs::read_to_string(&failed).unwrap_or_default();
        text.push_str(&format!("{version}\n"));
        crate::fsutil::atomic_write(&failed, text.as_bytes(), 0o644)?;
        let entry = esp.join("loader/entries").join(name);
        fs::remove_file(&entry).with_context(|| format!("removing {}", entry.display()))?;
        let _ = fs::remove_dir_all(esp.join(slots::esp_dir(*slot)));
        let _ = fs::remove_file(pending_path(root));
        say(&format!(
            "slot {} (version {version}) did not come up healthy in {tries} tries; back on slot {}; \
             that version is not installed again",
            slot.letter(),
            running.letter()
        ));
    }
    Ok(())
}

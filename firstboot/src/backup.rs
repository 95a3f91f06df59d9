//! The node's last backup, as overlays/backup's script records it in
//! /var/lib/nodeforge/backup/last.json, for `nodeforge-firstboot status`.
//! The agent does not run backups (a systemd timer does); it reads what
//! the last run left.

use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::fsutil::{read_optional, under};

pub const LAST_BACKUP_PATH: &str = "/var/lib/nodeforge/backup/last.json";
/// Present in an image that backs up (the overlay's settings).
pub const BACKUP_CONF_PATH: &str = "/etc/nodeforge/backup.env";
/// The repository the node's seed names (the agent's `backup-repository`
/// step writes it, one line); the backup script prefers it to the one in
/// [`BACKUP_CONF_PATH`].
pub const REPOSITORY_PATH: &str = "/var/lib/nodeforge/backup/repository";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastBackup {
    /// `ok` or `failed`.
    pub result: String,
    pub started: i64,
    pub finished: i64,
    /// When the last successful run finished (0: never).
    pub last_success: i64,
    pub stack: String,
    /// restic's snapshot ID ("" when the run failed before one).
    pub snapshot: String,
    pub detail: String,
}

/// What `status` says of backups: `None` when the image makes none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackupState {
    NotYet,
    Last(LastBackup),
}

pub fn read(root: &Path) -> Result<Option<BackupState>> {
    let path = under(root, LAST_BACKUP_PATH);
    if let Some(text) = read_optional(&path)? {
        let last = serde_json::from_str(&text).with_context(|| {
            format!("parsing {} (written by the backup script)", path.display())
        })?;
        return Ok(Some(BackupState::Last(last)));
    }
    Ok(under(root, BACKUP_CONF_PATH)
        .exists()
        .then_some(BackupState::NotYet))
}

impl BackupState {
    /// One line for `status`, times in UTC.
    pub fn render(&self) -> String {
        match self {
            BackupState::NotYet => "  last backup: none yet (nodeforge-backup.timer runs daily; \
                 `systemctl start nodeforge-backup` runs one now)\n"
                .into(),
            BackupState::Last(b) => {
                let when = crate::status::rfc3339(b.finished, 0);
                let mut line = if b.result == "ok" {
                    format!("  last backup: ok at {when}, {}", b.detail)
                } else {
                    format!("  last backup: FAILED at {when}: {}", b.detail)
                };
                if b.result != "ok" {
                    if b.last_success > 0 {
                        line.push_str(&format!(
                            " (last good: {})",
                            crate::status::rfc3339(b.last_success, 0)
                        ));
                    } else {
                        line.push_str(" (none has succeeded yet)");
                    }
                }
                line.push('\n');
                line
            }
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        match self {
            BackupState::NotYet => serde_json::json!({ "result": "none" }),
            BackupState::Last(b) => serde_json::to_value(b).unwrap_or_default(),
        }
    }
}

/// `nodeforge-firstboot status` (text or `--json`): the agent's record,
/// and the last backup beside it when the image makes backups; an
/// unreadable backup record is said, not fatal.
pub fn report(
    status: &crate::status::Status,
    backup: &Result<Option<BackupState>>,
    json: bool,
) -> String {
    if !json {
        let mut out = status.render();
        match backup {
            Ok(Some(b)) => out.push_str(&b.render()),
            Ok(None) => {}
            Err(e) => out.push_str(&format!("  last backup: unreadable: {e:#}\n")),
        }
        return out;
    }
    let last_backup = match backup {
        Ok(Some(b)) => b.to_json(),
        Ok(None) => return status.to_json(),
        Err(e) => serde_json::json!({ "error": format!("{e:#}") }),
    };
    let mut v = serde_json::to_value(status).unwrap_or_default();
    v["last_backup"] = last_backup;
    format!("{v:#}\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> tempfile::TempDir {
        tempfile::tempdir().unwrap()
    }

    fn write(root: &Path, path: &str, text: &str) {
        let p = under(root, path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    #[test]
    fn an_image_without_backups_says_nothing_and_one_with_them_says_none_yet() {
        let r = root();
        assert_eq!(read(r.path()).unwrap(), None);
        write(r.path(), BACKUP_CONF_PATH, "BACKUP_STACK='data'\n");
        let s = read(r.path()).unwrap().unwrap();
        assert_eq!(s, BackupState::NotYet);
        assert!(
            s.render().starts_with("  last backup: none yet"),
            "{}",
            s.render()
        );
        assert_eq!(s.to_json()["result"], "none");
    }

    #[test]
    fn the_scripts_record_is_shown_ok_or_failed_with_the_last_good_one() {
        let r = root();
        write(
            r.path(),
            LAST_BACKUP_PATH,
            r#"{"result":"ok","started":1795252000,"finished":1795252544,"last_success":1795252544,"stack":"data","snapshot":"0123456789abcdef","detail":"snapshot 01234567 of 4 paths (3 volumes and the dumps)"}"#,
        );
        let s = read(r.path()).unwrap().unwrap();
        assert_eq!(
            s.render(),
            "  last backup: ok at 2026-11-21T09:15:44.000Z, snapshot 01234567 of 4 paths (3 volumes and the dumps)\n"
        );
        write(
            r.path(),
            LAST_BACKUP_PATH,
            r#"{"result":"failed","started":1795339000,"finished":1795339044,"last_success":1795252544,"stack":"data","snapshot":"","detail":"restic cannot open the repository (exit 12)"}"#,
        );
        let s = read(r.path()).unwrap().unwrap();
        assert_eq!(
            s.render(),
            "  last backup: FAILED at 2026-11-22T09:17:24.000Z: restic cannot open the repository (exit 12) (last good: 2026-11-21T09:15:44.000Z)\n"
        );
        assert_eq!(s.to_json()["snapshot"], "");
    }

    #[test]
    fn a_broken_record_is_an_error_naming_the_file() {
        let r = root();
        write(r.path(), LAST_BACKUP_PATH, "{not json");
        let e = format!("{:#}", read(r.path()).unwrap_err());
        assert!(
            e.contains("last.json (written by the backup script)"),
            "{e}"
        );
    }
}

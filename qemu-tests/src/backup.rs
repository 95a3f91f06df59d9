//! A node's restic backup (overlays/backup) run as its timer runs it and
//! restored into a scratch directory, for the boot tests of the roles that
//! keep state (fleet.rs: data and core; single_hosts.rs: controlplane and
//! workspace).

use std::time::Instant;

use crate::stacks::Running;

/// Where [`backup_and_restore`] restores: the snapshot's paths below it.
pub const RESTORE_DIR: &str = "/var/tmp/restore";

/// What came back from the latest snapshot of a stack.
#[derive(Debug)]
pub struct Restored {
    /// The stack's volumes in it (`<stack>_<volume>`).
    pub volumes: Vec<String>,
    /// The database dumps in it (file names).
    pub dumps: Vec<String>,
    /// `nodeforge-firstboot status`'s line of the backup.
    pub status_line: String,
    pub backup_secs: f64,
    pub restore_secs: f64,
}

/// Starts nodeforge-backup.service on the node and waits for it, checks
/// that `nodeforge-firstboot status` and the node_exporter metrics say it
/// succeeded, then restores the latest snapshot of `stack` into
/// [`RESTORE_DIR`] and lists what it holds.
pub fn backup_and_restore(node: &Running, name: &str, stack: &str) -> Restored {
    let started = Instant::now();
    node.ssh
        .run("sudo systemctl start nodeforge-backup.service");
    let backup_secs = started.elapsed().as_secs_f64();
    let status = node.ssh.run("sudo nodeforge-firstboot status");
    let line = status
        .lines()
        .find(|l| l.trim_start().starts_with("last backup:"))
        .unwrap_or_else(|| panic!("{name}: status says nothing of backups:\n{status}"));
    assert!(line.contains("last backup: ok at "), "{name}: {line}");
    let prom = node
        .ssh
        .run("sudo cat /var/lib/prometheus/node-exporter/nodeforge-backup.prom");
    assert!(
        prom.contains(&format!(
            "nodeforge_backup_last_run_success{{stack=\"{stack}\"}} 1\n"
        )),
        "{name}: {prom}"
    );
    let snapshots = node.ssh.run("sudo nodeforge-backup snapshots");
    assert!(
        snapshots.contains(&format!("nodeforge-{stack}")),
        "{name}: {snapshots}"
    );

    let started = Instant::now();
    let out = node.ssh.run(&format!(
        "sudo rm -rf {RESTORE_DIR} && sudo nodeforge-backup restore latest {RESTORE_DIR}"
    ));
    let restore_secs = started.elapsed().as_secs_f64();
    eprintln!(
        "{name}: backup {backup_secs:.1} s, restore {restore_secs:.1} s ({}); {}",
        out.trim().lines().last().unwrap_or_default(),
        line.trim()
    );
    let list = |dir: &str| -> Vec<String> {
        node.ssh
            .run(&format!("sudo ls {RESTORE_DIR}{dir} 2>/dev/null || true"))
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    };
    Restored {
        volumes: list("/var/lib/docker/volumes"),
        dumps: list("/var/lib/nodeforge/backup/dumps"),
        status_line: line.trim().to_owned(),
        backup_secs,
        restore_secs,
    }
}

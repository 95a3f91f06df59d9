//! The fleet test's backup check: data's restic backup (overlays/backup,
//! Debian's restic on the node) run as its timer runs it, the agent's
//! status and the metrics saying so, and a restore into a scratch
//! directory whose PostgreSQL dump matches the live database.

use std::time::Instant;

use qemu_tests::stacks::Running;

/// Drops the per-dump random `\restrict` key lines PostgreSQL 17.6+
/// writes, then hashes what is left, on the node.
const WITHOUT_KEY_SHA: &str = "grep -v '^\\\\\\(un\\)\\?restrict ' | sha256sum";

/// The live database dumped as the backup dumps it.
const LIVE_DUMP: &str = "sudo docker exec \
     $(sudo docker ps -qf label=com.docker.compose.project=data -f label=com.docker.compose.service=postgres) \
     pg_dumpall --username=aerovista";

pub fn check_backup_and_restore(data: &Running) {
    let started = Instant::now();
    data.ssh
        .run("sudo systemctl start nodeforge-backup.service");
    let took = started.elapsed().as_secs_f64();
    let status = data.ssh.run("sudo nodeforge-firstboot status");
    let line = status
        .lines()
        .find(|l| l.trim_start().starts_with("last backup:"))
        .unwrap_or_else(|| panic!("status says nothing of backups:\n{status}"));
    assert!(line.contains("last backup: ok at "), "{line}");
    eprintln!(
        "fleet: datacore backup {took:.1} s; status: {}",
        line.trim()
    );
    let prom = data
        .ssh
        .run("sudo cat /var/lib/prometheus/node-exporter/nodeforge-backup.prom");
    assert!(
        prom.contains("nodeforge_backup_last_run_success{stack=\"data\"} 1\n"),
        "{prom}"
    );
    assert!(
        !prom.contains("nodeforge_backup_last_success_timestamp_seconds{stack=\"data\"} 0\n"),
        "{prom}"
    );

    let started = Instant::now();
    let out = data.ssh.run(
        "sudo rm -rf /var/tmp/restore && sudo nodeforge-backup restore latest /var/tmp/restore",
    );
    eprintln!(
        "fleet: datacore restore {:.1} s: {}",
        started.elapsed().as_secs_f64(),
        out.trim().lines().last().unwrap_or_default()
    );
    let dump = "/var/tmp/restore/var/lib/nodeforge/backup/dumps/postgres.sql";
    let restored = data
        .ssh
        .run(&format!("sudo cat {dump} | {WITHOUT_KEY_SHA}"));
    let live = data.ssh.run(&format!("{LIVE_DUMP} | {WITHOUT_KEY_SHA}"));
    assert_eq!(
        restored, live,
        "the restored dump differs from the live database"
    );
    // The dump holds the database's own objects: the activity API.
    let grep = data
        .ssh
        .run(&format!("sudo grep -c 'get_recent_activity' {dump}"));
    assert!(grep.trim().parse::<u32>().unwrap_or(0) > 0, "{grep}");
    // The stack's volumes are in it; PostgreSQL's live files are not.
    let volumes = data
        .ssh
        .run("sudo ls /var/tmp/restore/var/lib/docker/volumes/");
    for v in ["data_redis", "data_minio", "data_meilisearch"] {
        assert!(volumes.contains(v), "{v} not restored: {volumes}");
    }
    assert!(!volumes.contains("data_postgres"), "{volumes}");
    let snapshots = data.ssh.run("sudo nodeforge-backup snapshots");
    assert!(snapshots.contains("nodeforge-data"), "{snapshots}");
}

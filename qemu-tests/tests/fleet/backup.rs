//! The fleet test's backup checks (overlays/backup, Debian's restic on the
//! node, run as its timer runs it; qemu_tests::backup): data's restored
//! PostgreSQL dump matches the live database, and core's volumes come
//! back less the ones it leaves out.

use qemu_tests::backup::backup_and_restore;
use qemu_tests::stacks::Running;

/// Drops the per-dump random `\restrict` key lines PostgreSQL 17.6+
/// writes, then hashes what is left, on the node.
const WITHOUT_KEY_SHA: &str = "grep -v '^\\\\\\(un\\)\\?restrict ' | sha256sum";

/// The live database dumped as the backup dumps it.
const LIVE_DUMP: &str = "sudo docker exec \
     $(sudo docker ps -qf label=com.docker.compose.project=data -f label=com.docker.compose.service=postgres) \
     pg_dumpall --username=aerovista";

pub fn check_backup_and_restore(data: &Running) {
    let restored = backup_and_restore(data, "datacore", "data");
    assert_eq!(restored.dumps, ["postgres.sql"], "{restored:?}");
    let dump = "/var/tmp/restore/var/lib/nodeforge/backup/dumps/postgres.sql";
    let restored_sha = data
        .ssh
        .run(&format!("sudo cat {dump} | {WITHOUT_KEY_SHA}"));
    let live_sha = data.ssh.run(&format!("{LIVE_DUMP} | {WITHOUT_KEY_SHA}"));
    assert_eq!(
        restored_sha, live_sha,
        "the restored dump differs from the live database"
    );
    // The dump holds the database's own objects: the activity API.
    let grep = data
        .ssh
        .run(&format!("sudo grep -c 'get_recent_activity' {dump}"));
    assert!(grep.trim().parse::<u32>().unwrap_or(0) > 0, "{grep}");
    // The stack's volumes are in it; PostgreSQL's live files are not.
    let volumes = &restored.volumes;
    for v in ["data_redis", "data_minio", "data_meilisearch"] {
        assert!(
            volumes.iter().any(|x| x == v),
            "{v} not restored: {volumes:?}"
        );
    }
    assert!(!volumes.iter().any(|x| x == "data_postgres"), "{volumes:?}");
}

/// Core keeps no database (n8n's is data's): its volumes are backed up,
/// less Prometheus's and Loki's stores.
pub fn check_core_backup(core: &Running) {
    let restored = backup_and_restore(core, "nxcore", "core");
    assert!(restored.dumps.is_empty(), "{restored:?}");
    for v in [
        "core_grafana",
        "core_authelia",
        "core_uptime-kuma",
        "core_portainer",
        "core_syncthing",
        "core_mailpit",
    ] {
        assert!(
            restored.volumes.iter().any(|x| x == v),
            "{v} not restored: {restored:?}"
        );
    }
    for v in ["core_prometheus", "core_loki"] {
        assert!(
            !restored.volumes.iter().any(|x| x == v),
            "{v} was backed up: {restored:?}"
        );
    }
}

//! Backups (overlays/backup): the data role installs Debian's restic, the
//! script and its daily timer, and its settings render from the profile's
//! vars. The fleet boot test (qemu-tests) runs a backup on the node and
//! restores it.

use crate::support::overlay::{plan, render};
use crate::support::{read_text, repo_root};

#[test]
fn data_backs_up_daily_with_restic_as_its_vars_say() {
    let plan = plan("profiles/data.toml");
    assert!(
        plan.packages.iter().any(|p| p == "restic"),
        "{:?}",
        plan.packages
    );
    for t in [
        "/usr/libexec/nodeforge/backup",
        "/usr/sbin/nodeforge-backup",
        "/etc/systemd/system/nodeforge-backup.service",
        "/etc/systemd/system/timers.target.wants/nodeforge-backup.timer",
    ] {
        assert!(
            plan.overlay_files.iter().any(|f| f.target == t),
            "{t} is not in data's image"
        );
    }
    let data = plan
        .profile
        .stacks
        .iter()
        .find(|s| s.name == "data")
        .unwrap();
    assert!(data.secrets.iter().any(|s| s == "RESTIC_PASSWORD"));
    let env = render(&plan, "/etc/nodeforge/backup.env", |_| {}).unwrap();
    for line in [
        "BACKUP_STACK='data'\n",
        "BACKUP_REPOSITORY='/srv/backups/restic'\n",
        "BACKUP_EXCLUDE_VOLUMES='postgres'\n",
    ] {
        assert!(env.contains(line), "{line:?} not in:\n{env}");
    }
    let dumps = render(&plan, "/etc/nodeforge/backup-dumps", |_| {}).unwrap();
    assert!(
        dumps.ends_with("\npostgres|postgres.sql|pg_dumpall --username=aerovista\n")
            || dumps.ends_with("\npostgres|postgres.sql|pg_dumpall --username=aerovista"),
        "{dumps}"
    );
    // The script reads the password from the secrets file, never argv.
    let script = read_text(&repo_root().join("overlays/backup/usr/libexec/nodeforge/backup"));
    assert!(script.contains("RESTIC_PASSWORD=$(secret RESTIC_PASSWORD)"));
    assert!(
        !script.contains("--password"),
        "no password flag on a command line"
    );
}

#[test]
fn a_profile_that_names_no_repository_is_told_what_to_set() {
    let plan = plan("profiles/data.toml");
    let err = render(&plan, "/etc/nodeforge/backup.env", |v| {
        v.as_object_mut().unwrap().remove("backup_repository");
    })
    .unwrap_err();
    assert!(
        err.contains("overlays/backup needs vars.backup_repository"),
        "{err}"
    );
}

//! The `backup-repository` step on the fake machine: a seed's
//! `backup_repository` (a fleet file's, stamped by `customize`) is where
//! the backup script sends this machine's backups; without one, or in an
//! image that makes no backups, the step says so and writes nothing.

mod common;

use common::{seed_text, Machine, AUTH_KEY, ESP_SEED};
use nodeforge_firstboot::backup::REPOSITORY_PATH as BACKUP_REPOSITORY_PATH;
use nodeforge_firstboot::status::{RunState, StepState};

const BAKED_ENV: &str = "BACKUP_STACK='data'\nBACKUP_REPOSITORY='/srv/backups/restic'\n";
const FLEET_REPO: &str = "s3:http://datacore.tail79107c.ts.net:9000/backups";

/// Stamps the usual seed with `backup_repository = repo`.
fn stamp_seed_naming(m: &Machine, repo: &str) {
    m.write(
        ESP_SEED,
        &format!("{}backup_repository = \"{repo}\"\n", seed_text(AUTH_KEY)),
    );
}

fn boot_complete(m: &Machine) {
    let st = m.boot().expect("the agent ran").expect("the run ended");
    assert_eq!(st.state, RunState::Complete, "{st:?}");
}

#[test]
fn the_seeds_repository_is_where_backups_go() {
    let m = Machine::new();
    m.write("/etc/nodeforge/backup.env", BAKED_ENV);
    stamp_seed_naming(&m, FLEET_REPO);
    boot_complete(&m);
    assert_eq!(m.read(BACKUP_REPOSITORY_PATH), format!("{FLEET_REPO}\n"));
    m.assert_step(
        "backup-repository",
        StepState::Done,
        &format!("backups go to {FLEET_REPO} (the seed's), not the image's /srv/backups/restic"),
    );
}

#[test]
fn without_a_seed_repository_the_images_own_is_kept() {
    let m = Machine::new();
    m.write("/etc/nodeforge/backup.env", BAKED_ENV);
    boot_complete(&m);
    assert!(!m.path(BACKUP_REPOSITORY_PATH).exists());
    m.assert_step(
        "backup-repository",
        StepState::Skipped,
        "backups go to the image's repository /srv/backups/restic",
    );
}

#[test]
fn an_image_without_backups_says_the_seeds_repository_is_unused() {
    let m = Machine::new();
    stamp_seed_naming(&m, FLEET_REPO);
    boot_complete(&m);
    assert!(!m.path(BACKUP_REPOSITORY_PATH).exists());
    m.assert_step(
        "backup-repository",
        StepState::Skipped,
        "this image makes no backups (no overlays/backup): nothing uses it",
    );
}

#[test]
fn a_repository_with_a_password_in_it_is_refused_without_showing_it() {
    let m = Machine::new();
    m.write("/etc/nodeforge/backup.env", BAKED_ENV);
    stamp_seed_naming(&m, "rest:https://ops:hunter2@backup.lan:8000/");
    let _ = m.boot();
    let console = m.console();
    assert!(
        console.contains("backup_repository") && !console.contains("hunter2"),
        "{console}"
    );
    assert!(!m.path(BACKUP_REPOSITORY_PATH).exists());
}

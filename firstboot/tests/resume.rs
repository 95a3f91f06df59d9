//! Kill the agent at every step boundary and in the middle of steps, boot
//! again, and check the rerun finishes without repeating what must not be
//! repeated: the join (one-off key), the host key, partitioning.

mod common;

use common::*;
use nodeforge_firstboot::journal::Journal;
use nodeforge_firstboot::seed::Seed;
use nodeforge_firstboot::status::{RunState, StepState};
use nodeforge_firstboot::steps::Step;
use nodeforge_firstboot::READY_MARKER;

/// Boots after a kill and checks the end state of a fully provisioned node.
fn reboot_and_check(m: &Machine, what: &str, host_key_before: &str) {
    let st = m
        .boot()
        .unwrap_or_else(|| panic!("{what}: killed again"))
        .unwrap_or_else(|e| panic!("{what}: rerun failed: {e}"));
    assert_eq!(st.state, RunState::Complete, "{what}");
    assert!(
        m.summaries
            .borrow()
            .iter()
            .any(|l| l.starts_with(READY_MARKER)),
        "{what}"
    );
    let w = m.world.borrow().clone();
    assert_eq!(w.joins, 1, "{what}: joined {} times", w.joins);
    assert_eq!(
        w.fs_blocks,
        (DISK_SECTORS - 33 - PART_START) * 512 / 4096,
        "{what}"
    );
    assert_eq!(
        (w.partitionings, w.resizes),
        (1, 1),
        "{what}: partitioned and resized once"
    );
    let host_key = m.read("/etc/ssh/ssh_host_ed25519_key");
    if !host_key_before.is_empty() {
        assert_eq!(host_key, host_key_before, "{what}: host key regenerated");
    }
    let pubkey =
        ssh_key::PublicKey::from_openssh(m.read("/etc/ssh/ssh_host_ed25519_key.pub").trim())
            .unwrap();
    let private = ssh_key::PrivateKey::from_openssh(&host_key).unwrap();
    assert_eq!(private.public_key().key_data(), pubkey.key_data(), "{what}");
    assert_eq!(
        m.read("/home/admin/.ssh/authorized_keys"),
        format!("{SSH_KEY}\n"),
        "{what}"
    );
    assert_eq!(m.read("/etc/hostname"), "core-7\n", "{what}");
    let seed = Seed::from_toml(&m.read("/boot/efi/nodeforge-seed.toml")).unwrap();
    assert_eq!(seed.tailscale_auth_key, None, "{what}");
    assert!(
        !m.path("/run/nodeforge/tailscale-authkey").exists(),
        "{what}"
    );
    let j = Journal::load(m.root()).unwrap();
    let names: Vec<&str> = j.finished.iter().map(|s| s.name.as_str()).collect();
    let want: Vec<&str> = Step::ALL.iter().map(|s| s.name()).collect();
    assert_eq!(names, want, "{what}: each step journaled once, in order");
}

#[test]
fn killed_at_every_step_boundary() {
    for &step in Step::ALL {
        for kill in [Kill::BeforeStep(step.name()), Kill::AfterStep(step.name())] {
            let m = Machine::new();
            let what = format!("{kill:?}");
            assert!(m.boot_with_kill(kill), "{what}: the kill point was reached");
            let key_before = m.read("/etc/ssh/ssh_host_ed25519_key");
            reboot_and_check(&m, &what, &key_before);
        }
    }
}

/// Every command the agent runs on a fresh machine, in order.
const COMMANDS: &[&str] = &[
    "sfdisk --relocate",
    "sfdisk --no-reread",
    "partx -u",
    "resize2fs",
    "tailscale status --json",
    "tailscale up",
    "journalctl",
];

#[test]
fn killed_in_the_middle_of_steps() {
    for &cmd in COMMANDS {
        for kill in [Kill::BeforeCmd(cmd), Kill::AfterCmd(cmd)] {
            let m = Machine::new();
            let what = format!("{kill:?}");
            assert!(
                m.boot_with_kill(kill.clone()),
                "{what}: the kill point was reached"
            );
            let key_before = m.read("/etc/ssh/ssh_host_ed25519_key");
            reboot_and_check(&m, &what, &key_before);
            if kill == Kill::AfterCmd("tailscale up") {
                // Joined but not journaled: the rerun read the state first.
                assert_eq!(m.calls_starting("tailscale up"), 1, "{what}");
            }
        }
    }
}

#[test]
fn killed_twice_in_a_row() {
    let m = Machine::new();
    assert!(m.boot_with_kill(Kill::AfterCmd("sfdisk --no-reread")));
    assert!(m.boot_with_kill(Kill::AfterCmd("tailscale up")));
    reboot_and_check(&m, "two kills", "");
    assert_eq!(m.calls_starting("tailscale up"), 1);
}

#[test]
fn killed_between_host_key_and_its_pub() {
    // The step writes the private key first; a kill before the .pub leaves
    // exactly this state, which must keep the key, not make a new one.
    let m = Machine::new();
    assert!(m.boot_with_kill(Kill::BeforeStep("authorized-keys")));
    std::fs::remove_file(m.path("/etc/ssh/ssh_host_ed25519_key.pub")).unwrap();
    let mut j = Journal::load(m.root()).unwrap();
    j.finished.retain(|s| s.name != "ssh-host-keys");
    j.save(m.root()).unwrap();
    let key = m.read("/etc/ssh/ssh_host_ed25519_key");
    reboot_and_check(&m, "pub missing", &key);
    m.assert_step("ssh-host-keys", StepState::Done, "rewrote its .pub");
}

#[test]
fn killed_after_the_seed_was_scrubbed_but_before_journaling() {
    let m = Machine::new();
    assert!(m.boot_with_kill(Kill::AfterCmd("journalctl")));
    assert!(!m.read("/boot/efi/nodeforge-seed.toml").contains("tskey-"));
    reboot_and_check(&m, "scrubbed, not journaled", "");
    let st = m.status();
    assert!(st
        .secrets
        .unwrap()
        .contains("no copy of the auth key was on this node"));
}

#[test]
fn corrupt_journal_is_set_aside_and_the_steps_recheck_state() {
    let m = Machine::new();
    assert!(m.boot_with_kill(Kill::AfterCmd("tailscale up")));
    m.write("/var/lib/nodeforge/journal.json", "{ not json");
    let key = m.read("/etc/ssh/ssh_host_ed25519_key");
    reboot_and_check(&m, "corrupt journal", &key);
    assert_eq!(m.calls_starting("tailscale up"), 1);
    assert!(m.path("/var/lib/nodeforge/journal.json.corrupt").exists());
    let log = m.progress_log();
    assert!(log.contains("starting over"), "{log}");
}

#[test]
fn runs_are_counted_across_interruptions() {
    let m = Machine::new();
    assert!(m.boot_with_kill(Kill::BeforeStep("network")));
    assert!(m.boot_with_kill(Kill::BeforeStep("tailscale")));
    assert_eq!(m.boot().unwrap().unwrap().runs, 3);
}

#[test]
fn interrupted_atomic_write_leaves_old_state_readable() {
    // A kill during atomic_write leaves at most a temp file beside the
    // journal; the journal itself is old or new, and the next write reuses
    // the temp name.
    let m = Machine::new();
    assert!(m.boot_with_kill(Kill::BeforeStep("network")));
    m.write("/var/lib/nodeforge/.journal.json.tmp", "{ torn");
    reboot_and_check(&m, "torn temp file", "");
    assert!(!m.path("/var/lib/nodeforge/.journal.json.tmp").exists());
}

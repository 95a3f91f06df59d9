//! Clone-safe identity on the fake machine: a disk that joined on one
//! machine, booted in another (another SMBIOS UUID and NIC), has its
//! tailnet state moved aside before tailscaled starts, reports
//! `cloned-disk` until a new seed arrives, then joins as a new node.

mod common;

use common::{Machine, AUTH_KEY};
use nodeforge_firstboot::agent::RunError;
use nodeforge_firstboot::identity::{self, Identity, CLONED_PATH, IDENTITY_PATH};
use nodeforge_firstboot::status::{RunState, StepState};

const UUID_A: &str = "4c4c4544-0042-3510-8052-b4c04f564433";
const UUID_B: &str = "4c4c4544-0042-3510-8052-b4c04f56ffff";

/// Puts this machine's identity into the fake /sys.
fn machine_is(m: &Machine, uuid: &str, mac: &str) {
    m.write("/sys/class/dmi/id/product_uuid", &format!("{uuid}\n"));
    m.write("/sys/class/net/enp1s0/address", &format!("{mac}\n"));
    m.write("/sys/class/net/enp1s0/addr_assign_type", "0\n");
    m.write("/sys/class/net/enp1s0/device/vendor", "0x1af4\n");
    // Virtual links never count.
    m.write("/sys/class/net/docker0/address", "02:42:00:00:00:01\n");
    m.write("/sys/class/net/docker0/addr_assign_type", "3\n");
}

fn step_state(m: &Machine, name: &str) -> (StepState, Option<String>) {
    let s = m.step(name);
    (s.state, s.reason)
}

#[test]
fn identity_reads_the_uuid_and_physical_nics_only() {
    let m = Machine::new();
    machine_is(&m, UUID_A, "52:54:00:AA:BB:01");
    let id = Identity::current(m.root());
    assert_eq!(id.product_uuid.as_deref(), Some(UUID_A));
    assert_eq!(id.macs, ["52:54:00:aa:bb:01"]);
    // Firmware placeholders are no identity; then the NICs decide.
    m.write(
        "/sys/class/dmi/id/product_uuid",
        "03000200-0400-0500-0006-000700080009\n",
    );
    let mut other = Identity::current(m.root());
    assert_eq!(other.product_uuid, None);
    assert_eq!(id.same_machine(&other), Some(true));
    other.macs = vec!["52:54:00:cc:dd:02".into()];
    assert_eq!(id.same_machine(&other), Some(false));
    assert_eq!(Identity::default().same_machine(&Identity::default()), None);
}

/// The root filesystem on partition 1 of a virtio disk with `serial`.
fn root_disk_is(m: &Machine, serial: &str) {
    m.write(
        "/proc/self/mountinfo",
        "1 0 0:25 / /run rw - tmpfs tmpfs rw\n25 1 254:1 / / rw - ext4 /dev/vda1 rw\n",
    );
    let disk = "/sys/devices/pci0000:00/0000:00:04.0/virtio2/block/vda";
    m.write(&format!("{disk}/vda1/partition"), "1\n");
    m.write(&format!("{disk}/serial"), &format!("{serial}\n"));
    let link = m.path("/sys/dev/block/254:1");
    std::fs::create_dir_all(link.parent().unwrap()).unwrap();
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(m.path(&format!("{disk}/vda1")), &link).unwrap();
}

#[test]
fn without_a_uuid_the_nics_and_the_root_disk_decide() {
    let m = Machine::new();
    machine_is(
        &m,
        "00000000-0000-0000-0000-000000000000",
        "52:54:00:aa:bb:01",
    );
    root_disk_is(&m, "WD-1234");
    let joined = Identity::current(m.root());
    assert_eq!(joined.product_uuid, None);
    assert_eq!(joined.disk_serial.as_deref(), Some("WD-1234"));
    assert!(
        joined.describe().ends_with("root disk WD-1234"),
        "{}",
        joined.describe()
    );
    let now = |mac: &str, disk: Option<&str>| Identity {
        product_uuid: None,
        macs: vec![mac.into()],
        disk_serial: disk.map(Into::into),
    };
    // The disk copied onto a new one in the same machine.
    assert_eq!(
        joined.same_machine(&now("52:54:00:aa:bb:01", Some("NEW"))),
        Some(true)
    );
    // The disk moved into another machine.
    assert_eq!(
        joined.same_machine(&now("52:54:00:cc:dd:02", Some("WD-1234"))),
        Some(true)
    );
    // A copy in another machine.
    assert_eq!(
        joined.same_machine(&now("52:54:00:cc:dd:02", Some("NEW"))),
        Some(false)
    );
    assert_eq!(
        joined.same_machine(&now("52:54:00:cc:dd:02", None)),
        Some(false)
    );
    // Only the disk differs and no NIC can be read: no definite mismatch.
    let no_nics = Identity {
        product_uuid: None,
        macs: vec![],
        disk_serial: Some("NEW".into()),
    };
    assert_eq!(joined.same_machine(&no_nics), None);
}

#[test]
fn a_cloned_disk_does_not_pose_as_the_node_and_joins_anew_with_a_new_seed() {
    let m = Machine::new();
    machine_is(&m, UUID_A, "52:54:00:aa:bb:01");
    assert_eq!(m.boot().unwrap().unwrap().state, RunState::Complete);
    assert!(
        m.read(IDENTITY_PATH).contains(UUID_A),
        "identity recorded at the join"
    );
    assert!(
        !m.read("/boot/efi/nodeforge-seed.toml").contains("tskey-"),
        "key scrubbed"
    );
    // tailscaled's state of the joined node.
    m.write(
        "/var/lib/tailscale/tailscaled.state",
        "{\"nodekey\":\"nodekey:old\"}\n",
    );

    // The same machine again: nothing moves.
    assert!(identity::check(m.root()).unwrap().is_none());
    assert!(m.path("/var/lib/tailscale/tailscaled.state").exists());

    // The disk copied into another machine.
    machine_is(&m, UUID_B, "52:54:00:cc:dd:02");
    let c = identity::check(m.root())
        .unwrap()
        .expect("a clone is found");
    assert_eq!(c.joined_on.product_uuid.as_deref(), Some(UUID_A));
    assert_eq!(c.now_on.product_uuid.as_deref(), Some(UUID_B));
    assert!(
        !m.path("/var/lib/tailscale/tailscaled.state").exists(),
        "old state still in place"
    );
    assert!(
        m.read(&format!("{}/tailscaled.state", c.state_moved_to))
            .contains("nodekey:old"),
        "kept aside"
    );
    assert!(m.path(CLONED_PATH).exists());
    // tailscaled then starts without state: logged out.
    m.world.borrow_mut().ts_backend = "NeedsLogin".into();

    // No key left (the seed was scrubbed after the first join).
    let joins = m.world.borrow().joins;
    let err = m.boot().unwrap().unwrap_err();
    assert!(
        matches!(&err, RunError::Degraded { step: "tailscale", message }
            if message.contains("joined the tailnet on another machine")),
        "{err}"
    );
    assert_eq!(m.status().state, RunState::Degraded);
    assert_eq!(
        step_state(&m, "tailscale"),
        (StepState::Failed, Some("cloned-disk".into()))
    );
    let console = m.console();
    assert!(
        console.contains("cloned-disk") && console.contains("new seed"),
        "{console}"
    );
    assert_eq!(m.world.borrow().joins, joins, "no join without a new key");

    // A new seed: the node joins as a new node and records where.
    m.stamp_seed(AUTH_KEY);
    assert_eq!(m.boot().unwrap().unwrap().state, RunState::Complete);
    assert_eq!(m.world.borrow().joins, joins + 1);
    assert!(m.read(IDENTITY_PATH).contains(UUID_B));
    assert!(!m.path(CLONED_PATH).exists());
    assert!(identity::check(m.root()).unwrap().is_none());
}

#[test]
fn an_unknown_identity_never_moves_anything() {
    let m = Machine::new();
    assert_eq!(m.boot().unwrap().unwrap().state, RunState::Complete);
    m.write("/var/lib/tailscale/tailscaled.state", "{}\n");
    // No UUID, no NICs, recorded or now: cannot tell, so nothing happens.
    assert!(identity::check(m.root()).unwrap().is_none());
    assert!(m.path("/var/lib/tailscale/tailscaled.state").exists());
}

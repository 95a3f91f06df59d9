//! A/B updates in a real guest (UEFI, systemd-boot, TCG), one node through
//! its life: flashed with v1, it updates itself from a static HTTP server
//! holding v2 (one overlay file changed), reboots into slot B on trial,
//! and is blessed once the agent has run its slot's steps; its identity
//! (machine-id, SSH host key, hostname) and what it keeps on the state
//! partition are those of v1, and it fetched a small part of the slot.
//! Then it takes a v3 whose init dies (a kernel panic): systemd-boot
//! spends its three tries, boots B again by itself, and v3 is recorded as
//! failed and refused when offered again.

use std::path::Path;
use std::time::{Duration, Instant};

use qemu_tests::static_http::StaticServer;
use qemu_tests::{build_profile_into, release_keys, report_value, vm_slot, workspace_root};

/// The port the update-report overlay fetches from (10.0.2.2 in the guest).
const PORT: u16 = 18619;

/// A profile extending qemu-tests/profiles/update.toml with the test's
/// release key and `extra` lines.
fn profile(dir: &Path, name: &str, extra: &str) -> std::path::PathBuf {
    let path = dir.join(format!("{name}.toml"));
    let base = workspace_root().join("qemu-tests/profiles/update.toml");
    std::fs::write(
        &path,
        format!(
            "extends = \"{}\"\n{extra}\n[update]\nkey = \"{}\"\n",
            base.display(),
            release_keys().public.display()
        ),
    )
    .unwrap();
    path
}

/// Boots the node once (changes kept) until QEMU exits (the guest reboots
/// or powers off; QEMU runs with -no-reboot); with `report`, it must print
/// its report first. The console.
fn boot_once(image: &Path, log: &str, report: bool) -> String {
    let t = Instant::now();
    let mut vm = nodeforge::boot::Vm::start(&nodeforge::boot::VmOptions {
        persist: true,
        log: Some(qemu_tests::console_log(log)),
        ..nodeforge::boot::VmOptions::new(image)
    })
    .expect("starting QEMU");
    if report {
        if let Err(e) = vm.wait_for("=== report-end", Duration::from_secs(900)) {
            panic!("no report from the {log} boot: {e}");
        }
    }
    vm.wait_exit(Duration::from_secs(300))
        .unwrap_or_else(|e| panic!("the {log} boot did not end: {e}"));
    println!("{log} boot: {:.1} s", t.elapsed().as_secs_f64());
    vm.console()
}

fn boot(image: &Path, log: &str) -> String {
    boot_once(image, log, true)
}

/// A boot that never reaches its report (a panicking slot).
fn boot_until_exit(image: &Path, log: &str) -> String {
    boot_once(image, log, false)
}

fn value(console: &str, name: &str) -> String {
    report_value(console, name)
        .unwrap_or_else(|| panic!("no {name} on the console:\n{console}"))
        .trim()
        .to_owned()
}

/// The build of `name`'s profile with `/etc/nodeforge-test/version`
/// set to `version` and, for a broken build, init replaced by `init`.
fn build(d: &Path, name: &str, version: &str, init: Option<&str>) -> nodeforge::build::BuildResult {
    let overlay = d.join(format!("{name}-overlay"));
    std::fs::create_dir_all(overlay.join("etc/nodeforge-test")).unwrap();
    std::fs::write(
        overlay.join("etc/nodeforge-test/version"),
        format!("{version}\n"),
    )
    .unwrap();
    if let Some(script) = init {
        let sbin = overlay.join("usr/sbin");
        std::fs::create_dir_all(&sbin).unwrap();
        std::fs::write(sbin.join("init"), script).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(sbin.join("init"), std::fs::Permissions::from_mode(0o755))
            .unwrap();
    }
    let p = profile(d, name, &format!("overlays = [\"{}\"]", overlay.display()));
    build_profile_into(&p, Some(&d.join(format!("out-{name}"))))
}

#[test]
fn a_node_updates_into_slot_b_keeps_its_identity_and_falls_back_from_a_panicking_v3() {
    let t0 = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let v1 = build_profile_into(&profile(d, "v1", ""), Some(&d.join("out-v1")));
    let v2 = build(d, "v2", "2", None);
    // PID 1 exits at once: "Attempted to kill init", a kernel panic.
    let v3 = build(d, "v3", "3", Some("#!/bin/sh\nexit 1\n"));
    println!("builds: {:.1} s", t0.elapsed().as_secs_f64());
    let server = StaticServer::start(PORT);
    let image = d.join("node.img");
    qemu_tests::copy_image(&v1.image, &image);
    let _slot = vm_slot();

    // v1 on slot A takes v2.
    server.serve(v2.image.parent());
    let first = boot(&image, "update-v1");
    let slot_a = value(&first, "slot");
    assert_eq!(value(&first, "version"), "1");
    assert_eq!(value(&first, "entries"), "nodeforge-a.conf");
    assert_eq!(value(&first, "assess"), "active", "{first}");
    let exit = value(&first, "update-exit");
    assert!(
        exit.starts_with("0 "),
        "the update failed ({exit}):\n{first}"
    );
    assert_eq!(
        value(&first, "entries-after"),
        "nodeforge-a.conf nodeforge-b+3.conf"
    );
    let fetched = server.sent();
    let release: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(v2.image.with_file_name("update-test.release.json")).unwrap(),
    )
    .unwrap();
    let slot_size = release["root_slot"]["size"].as_u64().unwrap();
    println!(
        "fetched {fetched} bytes for a {slot_size}-byte slot ({:.2} %)",
        fetched as f64 * 100.0 / slot_size as f64
    );

    // Slot B on trial: blessed, the node's own files and state kept.
    server.serve(None);
    let second = boot(&image, "update-v2");
    let slot_b = value(&second, "slot");
    assert_ne!(slot_b, slot_a, "booted the same slot again:\n{second}");
    assert_eq!(value(&second, "version"), "2", "{second}");
    assert_eq!(value(&second, "assess"), "active", "{second}");
    assert_eq!(
        value(&second, "entries"),
        "nodeforge-a.conf nodeforge-b.conf",
        "slot B blessed:\n{second}"
    );
    for kept in ["machine-id", "host-key", "hostname"] {
        assert_eq!(value(&second, kept), value(&first, kept), "{kept}");
    }
    assert_eq!(
        value(&second, "boots"),
        "2",
        "the marker on the state partition"
    );
    let status: serde_json::Value = serde_json::from_str(&value(&second, "status")).unwrap();
    assert_eq!(status["state"], "complete", "{status:#}");

    // v2 takes v3 into slot A, whose init dies: three tries, then B.
    server.serve(v3.image.parent());
    let third = boot(&image, "update-v3");
    assert!(value(&third, "update-exit").starts_with("0 "), "{third}");
    assert_eq!(
        value(&third, "entries-after"),
        "nodeforge-a+3.conf nodeforge-b.conf"
    );
    for try_no in 1..=3 {
        let c = boot_until_exit(&image, &format!("update-v3-try{try_no}"));
        assert!(
            c.contains("Kernel panic"),
            "try {try_no} did not panic:\n{c}"
        );
    }
    let back = boot(&image, "update-v3-fallback");
    assert_eq!(value(&back, "slot"), slot_b, "{back}");
    assert_eq!(value(&back, "version"), "2");
    assert_eq!(value(&back, "entries"), "nodeforge-b.conf", "{back}");
    let v3_release: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(v3.image.with_file_name("update-test.release.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        value(&back, "failed"),
        v3_release["version"].as_str().unwrap(),
        "v3 recorded as failed"
    );
    // Offered again, v3 is refused.
    assert!(value(&back, "update-exit").starts_with("1 "), "{back}");
    assert!(
        value(&back, "update-last").contains("failed to boot on this node before"),
        "{back}"
    );
    println!("whole test: {:.1} s", t0.elapsed().as_secs_f64());
}

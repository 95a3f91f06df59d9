//! A/B updates in a real guest (UEFI, systemd-boot, TCG), one fleet node
//! (profiles/node.toml: Tailscale's client and Docker) with a
//! stateful stack `kv` (Redis, Debian's package, with a volume and a
//! secret) through its life, every step without input:
//! - flashed with v1 and joined, it refuses three bad releases (a flipped
//!   byte in a chunk it must fetch, another key's signature, an older
//!   epoch), each with its reason and nothing written to the inactive
//!   slot; then it takes v2, whose compose file was edited;
//! - slot B on trial is blessed; the stack runs v2's compose file on the
//!   volume, secret, Tailscale node key, SSH host key and machine-id of v1;
//! - it takes a v3 whose init dies (a kernel panic): systemd-boot spends
//!   the profile's two tries and boots B by itself, v3 is recorded as
//!   failed and refused when offered again;
//! - it takes a v4 whose stack never gets healthy: the agent's health
//!   timeout runs out, the trial's tries are spent at once, and B boots
//!   again;
//! - it stays on B across every boot after the blessing (three of them).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use qemu_tests::stacks::{lock_through, serve_stand_ins, ImageSizes, Node, GOOD_KEY};
use qemu_tests::static_http::StaticServer;
use qemu_tests::{build_profile_into, release_keys, report_value, vm_slot, workspace_root};

/// The port the update-report overlay fetches from (10.0.2.2 in the guest).
const PORT: u16 = 18619;
/// `[update] tries`: a panicking slot is behind the node after two boots.
const TRIES: u32 = 2;
/// The kv stack's `health_timeout_secs` (Redis is healthy in seconds).
const HEALTH_TIMEOUT_SECS: u64 = 40;
const BUILD: &str = "update-test";
const V1_COMPOSE: &str = include_str!("../stacks/update/kv/compose.yaml.tera");

/// One version of the node's build: its number (in
/// `/etc/nodeforge-test/version` and the compose file's label), its compose
/// file and, for a broken build, the init that replaces systemd.
struct Version {
    number: u32,
    compose: String,
    init: Option<&'static str>,
}

impl Version {
    fn new(number: u32) -> Version {
        Version {
            number,
            compose: V1_COMPOSE.replace(
                "nodeforge.test/compose: \"1\"",
                &format!("nodeforge.test/compose: \"{number}\""),
            ),
            init: None,
        }
    }

    /// Writes this version's profile, overlay and compose file under `d`
    /// (the profile in `d/profiles/`, so `d/stacks/` is its stacks folder).
    fn write(&self, d: &Path) -> PathBuf {
        let name = format!("v{}", self.number);
        let overlay = d.join(format!("overlays/{name}"));
        let etc = overlay.join("etc/nodeforge-test");
        std::fs::create_dir_all(&etc).unwrap();
        std::fs::write(etc.join("version"), format!("{}\n", self.number)).unwrap();
        if let Some(script) = self.init {
            use std::os::unix::fs::PermissionsExt;
            let sbin = overlay.join("usr/sbin");
            std::fs::create_dir_all(&sbin).unwrap();
            std::fs::write(sbin.join("init"), script).unwrap();
            std::fs::set_permissions(sbin.join("init"), std::fs::Permissions::from_mode(0o755))
                .unwrap();
        }
        let stack = d.join(format!("stacks/{name}"));
        std::fs::create_dir_all(&stack).unwrap();
        std::fs::write(stack.join("compose.yaml.tera"), &self.compose).unwrap();
        std::fs::create_dir_all(d.join("profiles")).unwrap();
        let path = d.join(format!("profiles/{name}.toml"));
        std::fs::write(
            &path,
            format!(
                "extends = \"{base}\"\noverlays = [\"{overlay}\"]\n\n\
                 [[stacks]]\nname = \"kv\"\ncompose = \"{name}/compose.yaml.tera\"\n\
                 images = [\"redis:7.4.1\"]\nsecrets = [\"KV_PASSWORD\"]\n\
                 health_timeout_secs = {HEALTH_TIMEOUT_SECS}\n\n\
                 [update]\nkey = \"{key}\"\ntries = {TRIES}\n",
                base = workspace_root()
                    .join("qemu-tests/profiles/update.toml")
                    .display(),
                overlay = overlay.display(),
                key = release_keys().public.display(),
            ),
        )
        .unwrap();
        path
    }
}

/// Boots the node once (changes kept) until QEMU exits (the guest reboots
/// or powers off; QEMU runs with -no-reboot); with `report`, it must print
/// its report first. The console, and the time from QEMU's start to the
/// report's first line (the node ready), if it printed one.
fn boot_once(image: &Path, log: &str, report: bool) -> (String, Option<Duration>) {
    let t = Instant::now();
    let mut vm = nodeforge::boot::Vm::start(&nodeforge::boot::VmOptions {
        persist: true,
        memory_mb: 2048,
        log: Some(qemu_tests::console_log(log)),
        ..nodeforge::boot::VmOptions::new(image)
    })
    .expect("starting QEMU");
    let mut ready = None;
    if report {
        let limit = Duration::from_secs(900);
        ready = Some(
            vm.wait_for("=== report-slot", limit)
                .and_then(|took| vm.wait_for("=== report-end", limit).map(|_| took))
                .unwrap_or_else(|e| panic!("no report from the {log} boot: {e}")),
        );
    }
    vm.wait_exit(Duration::from_secs(900))
        .unwrap_or_else(|e| panic!("the {log} boot did not end: {e}"));
    println!(
        "{log} boot: {:.1} s{}",
        t.elapsed().as_secs_f64(),
        ready.map_or(String::new(), |r| format!(
            " (ready, its report begun, at {:.1} s)",
            r.as_secs_f64()
        ))
    );
    (vm.console(), ready)
}

fn boot(image: &Path, log: &str) -> String {
    boot_once(image, log, true).0
}

/// A boot that need not reach its report (a panicking or unhealthy
/// slot); the time until QEMU exited.
fn boot_until_exit(image: &Path, log: &str) -> (String, Duration) {
    let t = Instant::now();
    let console = boot_once(image, log, false).0;
    (console, t.elapsed())
}

fn value(console: &str, name: &str) -> String {
    report_value(console, name)
        .unwrap_or_else(|| panic!("no {name} on the console:\n{console}"))
        .trim()
        .to_owned()
}

/// Offers `out`'s release (a build's output directory) at `offer`, by
/// links to its files.
fn offer(out: &Path, offer: &Path) {
    std::fs::create_dir_all(offer).unwrap();
    for e in std::fs::read_dir(out).unwrap() {
        let e = e.unwrap();
        let link = offer.join(e.file_name());
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(e.path(), link).unwrap();
    }
}

fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The release document of the build in `out`.
fn release_of(out: &Path) -> serde_json::Value {
    read_json(&nodeforge::release::release_path(out, BUILD))
}

/// The version (image key) of the build in `out`.
fn version_of(out: &Path) -> String {
    release_of(out)["version"].as_str().unwrap().to_owned()
}

/// `out`'s release re-signed with `key` after `edit`, offered at `dir`.
fn resigned(out: &Path, dir: &Path, key: &Path, edit: impl Fn(&mut nodeforge::release::Release)) {
    offer(out, dir);
    let doc = nodeforge::release::release_path(out, BUILD);
    let mut release = nodeforge::release::parse(&std::fs::read(&doc).unwrap(), &doc)
        .unwrap_or_else(|e| panic!("{e:#}"));
    edit(&mut release);
    for f in [
        nodeforge::release::release_path(dir, BUILD),
        nodeforge::release::signature_path(dir, BUILD),
    ] {
        std::fs::remove_file(f).unwrap();
    }
    let key = nodeforge::release::load_signing_key(key).unwrap();
    nodeforge::release::write(dir, &release, Some(&key)).unwrap();
}

/// `out`'s release with one byte flipped in the first chunk of its root
/// slot that the node, running `running`, lacks (so it must fetch it),
/// offered at `dir`.
fn flipped(out: &Path, running: &Path, dir: &Path) {
    offer(out, dir);
    let release = release_of(out);
    let chunks = |base: &Path| -> serde_json::Value {
        let r = release_of(base);
        let file = r["root_slot"]["chunks"].as_str().unwrap_or_else(|| {
            panic!("no root_slot.chunks in {r:#}");
        });
        read_json(&base.join(file))
    };
    let have: std::collections::HashSet<String> = chunks(running)["chunks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["sha256"].as_str().unwrap().to_owned())
        .collect();
    let fetched = chunks(out)["chunks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| !have.contains(c["sha256"].as_str().unwrap()))
        .expect("v2 has a chunk v1 lacks")
        .clone();
    let img = release["root_slot"]["file"].as_str().unwrap();
    let copy = dir.join(img);
    std::fs::remove_file(&copy).unwrap();
    qemu_tests::copy_image(&out.join(img), &copy);
    let at = release["root_slot"]["offset"].as_u64().unwrap()
        + fetched["offset"].as_u64().unwrap()
        + fetched["len"].as_u64().unwrap() / 2;
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&copy)
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at).unwrap();
    f.write_all_at(&[b[0] ^ 0x01], at).unwrap();
}

/// A case the report ran: its exit code, the inactive slot's written
/// sectors before and after, and its last line.
fn case(console: &str, name: &str) -> (String, String) {
    let line = value(console, &format!("case-{name}"));
    let f: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(f.len(), 3, "case {name}: {line}");
    assert_eq!(f[0], "1", "case {name} was not refused:\n{console}");
    assert_eq!(
        f[1], f[2],
        "case {name} wrote to the inactive slot (sectors before, after)"
    );
    (
        f[0].to_owned(),
        value(console, &format!("case-{name}-last")),
    )
}

#[test]
fn a_node_updates_its_stack_into_slot_b_and_falls_back_from_a_panicking_and_an_unhealthy_slot() {
    let t0 = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let v2 = Version::new(2);
    let v3 = Version {
        // PID 1 exits at once: "Attempted to kill init", a kernel panic.
        init: Some("#!/bin/sh\nexit 1\n"),
        ..Version::new(3)
    };
    let v4 = Version {
        // A healthcheck that never passes: the stack is never healthy.
        compose: Version::new(4).compose.replace(
            "test: [\"CMD-SHELL\", \"REDISCLI_AUTH=\\\"$$REDIS_PASSWORD\\\" redis-cli -h 127.0.0.1 ping | grep -q PONG\"]",
            "test: [\"CMD\", \"false\"]",
        ),
        ..Version::new(4)
    };
    assert!(v4.compose.contains("[\"CMD\", \"false\"]"), "v4's edit");
    let profiles: Vec<PathBuf> = [Version::new(1), v2, v3, v4]
        .iter()
        .map(|v| v.write(d))
        .collect();
    let loaded: Vec<_> = profiles
        .iter()
        .map(|p| nodeforge::profile::load(p).unwrap_or_else(|e| panic!("{e:#}")))
        .collect();
    let (registry, client) = serve_stand_ins(&loaded[0], ImageSizes::Small);
    for (path, p) in profiles.iter().zip(&loaded) {
        lock_through(path, p, &client, &registry);
    }
    let outs: Vec<PathBuf> = (1..=4).map(|n| d.join(format!("out-v{n}"))).collect();
    // On two lanes (the machine's two cores): v1 and v3 here, v2 and v4
    // beside them; the cache's locks let the second wait for a shared step.
    let build = |i: usize| build_profile_into(&profiles[i], Some(&outs[i]));
    let builds: Vec<_> = std::thread::scope(|s| {
        let lane = s.spawn(|| [build(1), build(3)]);
        let [v1, v3] = [build(0), build(2)];
        let [v2, v4] = lane.join().unwrap_or_else(|e| std::panic::resume_unwind(e));
        vec![v1, v2, v3, v4]
    });
    drop(registry);
    println!("builds: {:.1} s", t0.elapsed().as_secs_f64());

    // The bad releases, each a case directory the report tries first.
    let other_keys = nodeforge::release::generate_keys(d, "other").unwrap();
    let offers = d.join("offers");
    let first_offer = offers.join("first");
    offer(&outs[1], &first_offer);
    flipped(&outs[1], &outs[0], &first_offer.join("flipped"));
    resigned(
        &outs[1],
        &first_offer.join("other-key"),
        &other_keys.0,
        |_| {},
    );
    resigned(
        &outs[1],
        &first_offer.join("downgrade"),
        &release_keys().private,
        |r| r.epoch = r.epoch.map(|e| e - 86_400),
    );

    let node = Node::new(builds[0].clone(), &loaded[0], None);
    node.stamp(GOOD_KEY, &[]);
    let image = node.disk.clone();
    let server = StaticServer::start(PORT);
    let _slot = vm_slot();

    // v1 on slot A: joined, its stack up; refuses the bad ones, takes v2.
    server.serve(Some(&first_offer));
    let first = boot(&image, "update-v1");
    let slot_a = value(&first, "slot");
    assert_eq!(value(&first, "version"), "1");
    assert_eq!(value(&first, "entries"), "nodeforge-a.conf");
    assert_eq!(value(&first, "assess"), "active", "{first}");
    assert_eq!(value(&first, "kv-compose"), "1", "{first}");
    assert!(value(&first, "kv-value").starts_with("kept-"), "{first}");
    assert!(
        value(&first, "tailscale-state").contains("Running"),
        "joined:\n{first}"
    );
    let status: serde_json::Value = serde_json::from_str(&value(&first, "status")).unwrap();
    assert_eq!(status["state"], "complete", "{status:#}");
    for (name, reason) in [
        ("flipped", "the server's copy is damaged"),
        ("other-key", "not by the trusted release key"),
        ("downgrade", "is a downgrade"),
    ] {
        let (_, last) = case(&first, name);
        assert!(last.contains(reason), "case {name}: {last}");
        println!("refused ({name}): {last}");
    }
    let exit = value(&first, "update-exit");
    assert!(
        exit.starts_with("0 "),
        "the update failed ({exit}):\n{first}"
    );
    assert_eq!(
        value(&first, "entries-after"),
        format!("nodeforge-a.conf nodeforge-b+{TRIES}.conf")
    );
    let fetched = server.sent_at_top();
    let release = release_of(&outs[1]);
    let slot_size = release["root_slot"]["size"].as_u64().unwrap();
    println!(
        "v1 -> v2 (a compose edit): fetched {fetched} bytes for a {slot_size}-byte slot \
         ({:.2} %); the refused cases took {} more",
        fetched as f64 * 100.0 / slot_size as f64,
        server.sent() - fetched
    );

    // Slot B on trial: blessed; v2's compose file on v1's state.
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
    assert_eq!(value(&second, "kv-compose"), "2", "v2's compose file");
    for kept in [
        "machine-id",
        "host-key",
        "hostname",
        "tailscale-key",
        "kv-secrets",
        "kv-value",
    ] {
        assert_eq!(value(&second, kept), value(&first, kept), "{kept}");
    }
    assert!(value(&second, "tailscale-state").contains("Running"));
    assert_eq!(
        value(&second, "boots"),
        "2",
        "the marker on the state partition"
    );
    let status: serde_json::Value = serde_json::from_str(&value(&second, "status")).unwrap();
    assert_eq!(status["state"], "complete", "{status:#}");

    // On B, v2 takes v3 into slot A, whose init dies: two tries, then B.
    offer(&outs[2], &offers.join("third"));
    server.serve(Some(&offers.join("third")));
    let third = boot(&image, "update-v3");
    assert_eq!(value(&third, "slot"), slot_b, "{third}");
    assert!(value(&third, "update-exit").starts_with("0 "), "{third}");
    assert_eq!(
        value(&third, "entries-after"),
        format!("nodeforge-a+{TRIES}.conf nodeforge-b.conf")
    );
    let mut to_fallback = Duration::ZERO;
    for try_no in 1..=TRIES {
        let (c, took) = boot_until_exit(&image, &format!("update-v3-try{try_no}"));
        assert!(
            c.contains("Kernel panic"),
            "try {try_no} did not panic:\n{c}"
        );
        to_fallback += took;
    }
    // Back on B, v3 is offered again (refused: it failed here) and v4.
    let fallback_offer = offers.join("fallback");
    offer(&outs[3], &fallback_offer);
    offer(&outs[2], &fallback_offer.join("failed-again"));
    server.serve(Some(&fallback_offer));
    let (back, ready) = boot_once(&image, "update-v3-fallback", true);
    println!(
        "v3: back on B and ready {:.1} s after its first try began ({} boots)",
        (to_fallback + ready.expect("a report")).as_secs_f64(),
        TRIES + 1
    );
    assert_eq!(value(&back, "slot"), slot_b, "{back}");
    assert_eq!(value(&back, "version"), "2");
    assert_eq!(value(&back, "kv-value"), value(&first, "kv-value"));
    let v3_version = version_of(&outs[2]);
    assert_eq!(value(&back, "failed"), v3_version, "v3 recorded as failed");
    let (_, last) = case(&back, "failed-again");
    assert!(
        last.contains("failed to boot on this node before"),
        "{last}"
    );
    assert!(value(&back, "update-exit").starts_with("0 "), "{back}");
    assert_eq!(
        value(&back, "entries-after"),
        format!("nodeforge-a+{TRIES}.conf nodeforge-b.conf")
    );

    // v4's stack never gets healthy: one boot, then B.
    server.serve(None);
    let (trial, trial_took) = boot_until_exit(&image, "update-v4-trial");
    assert!(
        trial.contains("its tries are spent, the other slot boots next"),
        "the assessment of v4's trial:\n{trial}"
    );
    let (last, ready) = boot_once(&image, "update-v4-fallback", true);
    let took = trial_took + ready.expect("a report");
    println!(
        "v4: back on B and ready {:.1} s after its trial began (2 boots; health timeout {} s)",
        took.as_secs_f64(),
        HEALTH_TIMEOUT_SECS
    );

    assert_eq!(value(&last, "slot"), slot_b, "{last}");
    assert_eq!(value(&last, "version"), "2");
    assert_eq!(value(&last, "kv-compose"), "2");
    assert_eq!(value(&last, "kv-value"), value(&first, "kv-value"));
    let v4_version = version_of(&outs[3]);
    assert_eq!(
        value(&last, "failed"),
        format!("{v3_version} {v4_version}"),
        "v3 and v4 recorded as failed"
    );
    assert_eq!(value(&last, "entries"), "nodeforge-b.conf", "{last}");
    println!("whole test: {:.1} s", t0.elapsed().as_secs_f64());
}

//! Benchmark behind benches/vs-cloud-init.sh: the first-boot agent against
//! cloud-init doing the same first boot. Two images from one trixie package
//! set (qemu-tests/profiles/vs-agent.toml and vs-cloud-init.toml: the base
//! image plus cloud-init's packages; in one cloud-init is switched off, in
//! the other the agent is masked) boot one after the other in the same
//! QEMU settings (TCG, 2 vCPUs, 2 GiB, the disk 1 GiB larger than the
//! image, a CIDATA disk attached to both). Each is told the same: hostname
//! `bench-node`, one authorized key for `admin`, grow the root, make an
//! ed25519 host key — the agent by its seed on the boot partition,
//! cloud-init by a NoCloud seed (the CIDATA disk). The boot-report unit
//! prints systemd's timestamps once the boot has finished; this prints,
//! per image, the seconds from the first-boot service's start to its
//! finish and to the boot's end, and checks that both did the work.
//!
//! Usage (as root): cargo run -p qemu-tests --example vs_cloud_init

use std::path::Path;
use std::time::Duration;

use nodeforge::boot::{ExtraDisk, Vm, VmOptions};
use nodeforge::disk::esp::{self, Content, Volume};
use qemu_tests::{build_profile, console_log, copy_image, vm_slot};
use serde_json::Value;

const HOSTNAME: &str = "bench-node";
/// A public key only: nobody logs in, the report shows where it landed.
const ADMIN_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAICNAfw9geETPzDJ/ySEjyYeFSdh1Rr8y3f5L0rc+W19l bench@nodeforge";
const REPORT_MARKER: &str = "NODEFORGE-BOOT-REPORT {";
const GROWTH: u64 = 1 << 30;
const CIDATA_BYTES: u64 = 64 << 20;

/// One side of the comparison.
struct Contender {
    name: &'static str,
    profile: &'static str,
    /// The units that do its first boot (the report lists those started).
    units: &'static [&'static str],
}

const CONTENDERS: [Contender; 2] = [
    Contender {
        name: "nodeforge agent",
        profile: "qemu-tests/profiles/vs-agent.toml",
        units: &["nodeforge-firstboot.service"],
    },
    Contender {
        name: "cloud-init",
        profile: "qemu-tests/profiles/vs-cloud-init.toml",
        units: &[
            "cloud-init-main.service",
            "cloud-init-local.service",
            "cloud-init-network.service",
            "cloud-init.service",
            "cloud-config.service",
            "cloud-final.service",
        ],
    },
];

/// What one boot measured, in seconds.
#[derive(Debug, PartialEq)]
struct Timing {
    /// First-boot service start → its last unit finished.
    service: f64,
    /// First-boot service start → systemd's end of boot.
    to_boot_end: f64,
    /// Kernel start → end of boot (systemd's monotonic clock).
    boot_end: f64,
}

/// The timings of `units` in a report, or why they cannot be had.
fn timing(report: &Value, units: &[&str]) -> Result<Timing, String> {
    let us = |v: &Value, key: &str| v[key].as_u64().unwrap_or(0);
    let started: Vec<&Value> = units
        .iter()
        .filter_map(|u| report["units"].get(*u))
        .collect();
    if started.is_empty() {
        return Err(format!("none of {units:?} started"));
    }
    let start = started
        .iter()
        .map(|v| us(v, "InactiveExitTimestampMonotonic"))
        .min()
        .unwrap_or(0);
    let end = started
        .iter()
        .map(|v| {
            us(v, "ActiveEnterTimestampMonotonic").max(us(v, "ExecMainExitTimestampMonotonic"))
        })
        .max()
        .unwrap_or(0);
    let finish = us(report, "finish_us");
    if end < start || finish < start || finish == 0 {
        return Err(format!(
            "timestamps out of order: start {start} µs, end {end} µs, boot end {finish} µs"
        ));
    }
    let secs = |v: u64| v as f64 / 1e6;
    Ok(Timing {
        service: secs(end - start),
        to_boot_end: secs(finish - start),
        boot_end: secs(finish),
    })
}

/// Did the boot do the agreed work? Every failure, named.
fn check_work(report: &Value, image_root_bytes: u64) -> Vec<String> {
    let mut wrong = Vec::new();
    for key in ["hostname", "etc_hostname"] {
        if report[key] != HOSTNAME {
            wrong.push(format!("{key} is {}, not {HOSTNAME}", report[key]));
        }
    }
    let keys = report["authorized_keys"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if !keys
        .iter()
        .any(|k| k.as_str().is_some_and(|k| k.trim() == ADMIN_KEY))
    {
        wrong.push(format!(
            "admin's authorized_keys lacks the seed's key: {keys:?}"
        ));
    }
    let root = report["root_bytes"].as_u64().unwrap_or(0);
    if root < image_root_bytes + GROWTH / 2 {
        wrong.push(format!(
            "the root filesystem was not grown: {root} bytes (disk {} bytes)",
            report["disk_bytes"]
        ));
    }
    if report["ed25519_host_key"] != true {
        wrong.push("no ed25519 host key".into());
    }
    wrong
}

/// The NoCloud seed: a FAT volume labelled CIDATA with meta-data and
/// user-data saying what the agent's seed says.
fn cidata(path: &Path) {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
        .expect("creating the CIDATA disk");
    file.set_len(CIDATA_BYTES).expect("sizing the CIDATA disk");
    let meta = format!("instance-id: bench-1\nlocal-hostname: {HOSTNAME}\n");
    let user = format!(
        "#cloud-config\n\
         hostname: {HOSTNAME}\n\
         users:\n  - name: admin\n    ssh_authorized_keys:\n      - {ADMIN_KEY}\n\
         growpart:\n  mode: auto\n  devices: ['/']\n\
         resize_rootfs: true\n\
         ssh_deletekeys: true\n\
         ssh_genkeytypes: [ed25519]\n"
    );
    esp::write(
        &file,
        0,
        CIDATA_BYTES,
        &Volume {
            id: 0x6e666331,
            label: "CIDATA",
            epoch: None,
        },
        &[
            ("meta-data".into(), Content::Bytes(meta.into_bytes())),
            ("user-data".into(), Content::Bytes(user.into_bytes())),
        ],
    )
    .expect("writing the CIDATA disk");
}

/// The report line on a console.
fn report_of(console: &str) -> Option<Value> {
    let line = console.lines().find_map(|l| {
        let at = l.find(REPORT_MARKER)?;
        Some(&l[at + REPORT_MARKER.len() - 1..])
    })?;
    serde_json::from_str(line.trim()).ok()
}

fn boot(c: &Contender, work: &Path, seed_disk: &Path) -> (Timing, f64) {
    let built = build_profile(c.profile);
    let disk = work.join(format!(
        "{}.img",
        c.profile.rsplit('/').next().unwrap_or("x")
    ));
    copy_image(&built.image, &disk);
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&disk)
        .expect("opening the disk copy");
    f.set_len(built.image_size + GROWTH)
        .expect("growing the disk copy");
    drop(f);
    let seed = nodeforge::seed::SeedOptions {
        hostname: Some(HOSTNAME.into()),
        ssh_keys: vec![ADMIN_KEY.into()],
        ..Default::default()
    }
    .to_seed()
    .expect("the agent's seed");
    // Only the agent reads it; cloud-init's image gets the same disk as is.
    nodeforge::seed::stamp(&disk, &seed).expect("stamping the agent's seed");
    let log = console_log(&format!("vs-cloud-init-{}", c.name.replace(' ', "-")));
    let opts = VmOptions {
        memory_mb: 2048,
        cpus: 2,
        extra_disks: vec![ExtraDisk {
            path: seed_disk.to_owned(),
            serial: "cidata".into(),
        }],
        log: Some(log.clone()),
        persist: true,
        ..VmOptions::new(&disk)
    };
    let slot = vm_slot();
    let mut vm = Vm::start(&opts).unwrap_or_else(|e| fail(&format!("starting {}: {e:#}", c.name)));
    let took = vm
        .wait_for(REPORT_MARKER, Duration::from_secs(1200))
        .unwrap_or_else(|e| fail(&format!("{}: {e} (console: {})", c.name, log.display())));
    std::thread::sleep(Duration::from_secs(1));
    let console = vm.console();
    drop(vm);
    drop(slot);
    let report = report_of(&console).unwrap_or_else(|| {
        fail(&format!(
            "{}: no parsable report in {}",
            c.name,
            log.display()
        ))
    });
    let others: Vec<&str> = CONTENDERS
        .iter()
        .filter(|o| o.name != c.name)
        .flat_map(|o| o.units.iter().copied())
        .filter(|u| report["units"].get(*u).is_some())
        .collect();
    if !others.is_empty() {
        fail(&format!(
            "{}: the other side's units ran too: {others:?}",
            c.name
        ));
    }
    let wrong = check_work(&report, root_bytes_of(&built.manifest));
    if !wrong.is_empty() {
        fail(&format!(
            "{} did not do the first boot's work: {}",
            c.name,
            wrong.join("; ")
        ));
    }
    let t = timing(&report, c.units).unwrap_or_else(|e| fail(&format!("{}: {e}", c.name)));
    if let Some(steps) = report["agent_steps"].as_object().filter(|s| !s.is_empty()) {
        let cells: Vec<String> = steps
            .iter()
            .map(|(name, ms)| format!("{name} {:.2}", ms.as_f64().unwrap_or(0.0) / 1000.0))
            .collect();
        eprintln!("{}: agent steps (wall s): {}", c.name, cells.join(", "));
    }
    (t, took.as_secs_f64())
}

/// The root partition's size the build made (before any growing).
fn root_bytes_of(manifest: &Path) -> u64 {
    let m: Value = serde_json::from_slice(&std::fs::read(manifest).expect("reading the manifest"))
        .expect("the manifest is JSON");
    m["partitions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["kind"] == "root")
        .and_then(|p| p["size"].as_u64())
        .unwrap_or_else(|| fail("the manifest names no root partition size"))
}

fn fail(msg: &str) -> ! {
    eprintln!("vs_cloud_init: {msg}");
    std::process::exit(1);
}

fn main() {
    let work = tempfile::Builder::new()
        .prefix("nodeforge-vs-cloud-init.")
        .tempdir_in("/var/tmp")
        .expect("a work directory");
    let seed_disk = work.path().join("cidata.img");
    cidata(&seed_disk);
    let mut rows = Vec::new();
    for c in &CONTENDERS {
        let (t, took) = boot(c, work.path(), &seed_disk);
        rows.push((c.name, t, took));
    }
    println!(
        "first boot | service start → finished | service start → boot end | boot end (since kernel) | QEMU start → report"
    );
    for (name, t, took) in &rows {
        println!(
            "{name} | {:.2} s | {:.2} s | {:.1} s | {took:.1} s",
            t.service, t.to_boot_end, t.boot_end
        );
    }
    let (agent, cloud) = (&rows[0].1, &rows[1].1);
    println!(
        "agent / cloud-init: service {:.3}, to boot end {:.3}, boot end {:.3}",
        agent.service / cloud.service,
        agent.to_boot_end / cloud.to_boot_end,
        agent.boot_end / cloud.boot_end
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn unit(start: u64, active: u64, exit: u64) -> Value {
        json!({"InactiveExitTimestampMonotonic": start, "ActiveEnterTimestampMonotonic": active, "ExecMainExitTimestampMonotonic": exit})
    }

    #[test]
    fn timing_spans_the_first_start_to_the_last_finish() {
        let report = json!({
            "units": {
                "cloud-init-local.service": unit(5_000_000, 9_000_000, 8_900_000),
                "cloud-final.service": unit(20_000_000, 24_000_000, 0),
                "cloud-init-main.service": unit(4_500_000, 4_600_000, 24_500_000),
            },
            "finish_us": 30_000_000u64,
        });
        let t = timing(&report, CONTENDERS[1].units).unwrap();
        assert_eq!(
            t,
            Timing {
                service: 20.0,
                to_boot_end: 25.5,
                boot_end: 30.0
            }
        );
        assert!(timing(&report, CONTENDERS[0].units)
            .unwrap_err()
            .contains("none of"));
    }

    #[test]
    fn work_checks_name_what_is_missing() {
        let report = json!({
            "hostname": HOSTNAME, "etc_hostname": "nodeforge",
            "authorized_keys": [ADMIN_KEY], "root_bytes": 1u64 << 30,
            "ed25519_host_key": false,
        });
        let wrong = check_work(&report, 1 << 30);
        assert_eq!(wrong.len(), 3, "{wrong:?}");
        assert!(wrong[0].contains("etc_hostname"));
        assert!(wrong[1].contains("not grown"));
        assert!(wrong[2].contains("ed25519"));
    }

    #[test]
    fn the_report_line_is_read_from_the_console() {
        let console = "boot…\r\n[  41.2] nodeforge-boot-report[612]: NODEFORGE-BOOT-REPORT {\"finish_us\": 7}\r\nlogin:";
        assert_eq!(report_of(console).unwrap()["finish_us"], 7);
    }
}

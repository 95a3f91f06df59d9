//! `--json` on the commands that report something beyond `check`, `plan`
//! and `build`: `boot` (its result), `cache prune` (what went and what
//! stayed) and `doctor` (every requirement): one JSON document on stdout;
//! `serve` (its request log): one JSON line per event.

use crate::support::fake::{fake_tool, offline_build, x_project};
use crate::support::require::require_root;
use crate::support::serve::{write_fleet, ServeRun, MAC};
use crate::support::{write_file, Project};

/// A built image booted by a stand-in `qemu-system-x86_64` that writes
/// the agent's ready line where nodeforge reads the serial console (its
/// `-chardev file,…,path=`): the result is one JSON document.
#[test]
fn boot_json_reports_the_image_the_accelerator_and_the_time() {
    require_root();
    let p = x_project();
    offline_build(&p, "profiles/x.toml", &[]);
    let bin = fake_tool(
        &p,
        "qemu-system-x86_64",
        "for a; do case $a in file,id=console,path=*) log=${a#*path=};; esac; done\n\
         echo 'nodeforge-firstboot: ready: host x' >> \"$log\"\n\
         sleep 30",
    );
    let run = p
        .cmd(&[
            "boot",
            "out/x.img",
            "--accel",
            "tcg",
            "--timeout",
            "20",
            "--json",
        ])
        .path_prepend(&bin)
        .ok();
    let v = run.json();
    assert_eq!(v["image"], "out/x.img", "{}", run.report());
    assert_eq!(v["accel"], "tcg", "{}", run.report());
    assert_eq!(
        v["expect"],
        "nodeforge-firstboot: ready",
        "{}",
        run.report()
    );
    let secs = v["seconds"].as_f64().unwrap_or(-1.0);
    assert!((0.0..20.0).contains(&secs), "{}", run.report());
}

#[test]
fn cache_prune_json_counts_what_went_and_what_stayed() {
    let p = Project::empty();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    for (key, age_days) in [("old", 30), ("new", 0)] {
        let used = now - age_days * 86400;
        write_file(
            &p.path(&format!("cache/rootfs/{key}.tar.zst")),
            vec![0u8; 2 << 20],
        );
        write_file(
            &p.path(&format!("cache/rootfs/{key}.json")),
            format!("{{\"summary\":\"{key}\",\"created\":{used},\"last_used\":{used}}}"),
        );
    }
    write_file(&p.path("cache/rootfs/.half.partial.tar.zst"), "half");
    let run = p.ok(&[
        "cache",
        "prune",
        "--older-than",
        "7d",
        "--cache-dir",
        "cache",
        "--json",
    ]);
    let v = run.json();
    assert_eq!(v["removed"], 1, "{}", run.report());
    assert_eq!(v["leftovers"], 1, "{}", run.report());
    assert_eq!(v["kept"], 1, "{}", run.report());
    assert_eq!(v["kept_bytes"], 2 << 20, "{}", run.report());
    assert!(!p.path("cache/rootfs/old.tar.zst").exists());
    assert!(p.path("cache/rootfs/new.tar.zst").exists());
}

/// Every requirement with its probe, presence and remedy; the exit status
/// says whether one is missing, as without --json.
#[test]
fn doctor_json_lists_every_requirement() {
    let run = Project::empty().cmd(&["doctor", "--json"]).run();
    let v = run.json();
    let checks = v
        .as_array()
        .unwrap_or_else(|| panic!("not a list\n{}", run.report()));
    assert!(checks.len() > 20, "{}", run.report());
    for c in checks {
        for key in ["what", "probe", "remedy"] {
            assert!(c[key].as_str().is_some_and(|s| !s.is_empty()), "{c}");
        }
        assert!(c["present"].is_boolean(), "{c}");
    }
    assert!(
        checks.iter().any(|c| c["probe"] == "mmdebstrap"),
        "{}",
        run.report()
    );
    let all_present = checks.iter().all(|c| c["present"] == true);
    assert_eq!(run.success(), all_present, "{}", run.report());
    Project::empty()
        .fails(&["doctor", "--json", "--install"])
        .stderr_has(&["'--json' cannot be used with '--install'"]);
}

/// `serve --json`: a `listening` line, then one line per request, each a
/// JSON object with its `event`, on stdout.
#[test]
fn serve_json_reports_each_request_as_a_line() {
    let p = Project::empty();
    for (name, body) in [
        ("out/web.vmlinuz", "kernel"),
        ("out/web.initrd", "initrd"),
        ("out/web.squashfs", "root"),
        ("out/web.boot.ipxe", "#!ipxe\nboot\n"),
    ] {
        p.write(name, body);
    }
    write_fleet(&p);
    let mut serve = ServeRun::start(&p, "out", &[]);
    let answer = serve.get("/nodes/52-54-00-12-34-56/boot.ipxe");
    let request = serve.next_event();
    assert_eq!(request["event"], "request", "{request}");
    assert_eq!(request["method"], "GET", "{request}");
    assert_eq!(
        request["status"],
        200,
        "{request}\n{}",
        String::from_utf8_lossy(&answer)
    );
    assert_eq!(request["node"], "web-1", "{request}");
    assert_eq!(request["mac"], MAC, "{request}");
}

//! `--json` on the commands that report something beyond `check`, `plan`
//! and `build`: `boot` (its result), `cache prune` (what went and what
//! stayed) and `doctor` (every requirement): one JSON document on stdout;
//! `serve` (its request log): one JSON line per event.

use crate::support::fake::{fake_tool, offline_build, x_project};
use crate::support::require::require_root;
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
    use std::io::{BufRead, BufReader, Read, Write};

    let p = Project::empty();
    for (name, body) in [
        ("out/web.vmlinuz", "kernel"),
        ("out/web.initrd", "initrd"),
        ("out/web.squashfs", "root"),
        ("out/web.boot.ipxe", "#!ipxe\nboot\n"),
    ] {
        p.write(name, body);
    }
    p.write(
        "fleet.toml",
        "[nodes.web-1]\nmac = \"52:54:00:12:34:56\"\nartifacts = \"web\"\n",
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port");
    let listen = format!("127.0.0.1:{port}");
    let mut child = p
        .cmd(&[
            "serve",
            "--json",
            "--nodes",
            "fleet.toml",
            "--artifacts",
            "out",
            "--listen",
            &listen,
        ])
        .spawn_reading_stdout();
    let mut lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
    let mut next = || -> serde_json::Value {
        let line = lines
            .next()
            .expect("serve ended early")
            .expect("reading serve's stdout");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
    };
    let first = next();
    assert_eq!(first["event"], "listening", "{first}");
    assert_eq!(first["http"], listen.as_str(), "{first}");

    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connecting to serve");
    write!(
        s,
        "GET /nodes/52-54-00-12-34-56/boot.ipxe HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    let request = next();
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(request["event"], "request", "{request}");
    assert_eq!(request["method"], "GET", "{request}");
    assert_eq!(request["status"], 200, "{request}\n{answer}");
    assert_eq!(request["node"], "web-1", "{request}");
    assert_eq!(request["mac"], "52:54:00:12:34:56", "{request}");
}

//! The sentinel's scheduled LAN scan (overlays/nmap-scan): the script run
//! with stand-in `nmap` and `ip` programs on PATH (the real nmap runs in
//! the sentinel's boot test), its results kept and its metrics written for
//! node_exporter's textfile collector; failures reported as metrics, never
//! a half-written file; the profile wiring.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::support::{read_text, repo_root, write_file};
use nodeforge::plan::Plan;

/// nmap 7.95's grepable output of a /24 with two hosts up (format from
/// nmap(1), "Grepable output (-oG)").
const GNMAP: &str = "# Nmap 7.95 scan initiated Sun Dec  6 03:00:00 2026 as: nmap --top-ports 100 -oX x -oG g 192.168.1.23/24\n\
Host: 192.168.1.1 (router.lan)\tStatus: Up\n\
Host: 192.168.1.1 (router.lan)\tPorts: 22/open/tcp//ssh///, 53/open/tcp//domain///, 80/filtered/tcp//http///, 443/closed/tcp//https///\tIgnored State: closed (96)\n\
Host: 192.168.1.23 ()\tStatus: Up\n\
Host: 192.168.1.23 ()\tPorts: 9100/open/tcp//jetdirect///\tIgnored State: closed (99)\n\
# Nmap done at Sun Dec  6 03:00:12 2026 -- 256 IP addresses (2 hosts up) scanned in 12.04 seconds\n";

struct Scan {
    dir: tempfile::TempDir,
}

impl Scan {
    /// A scratch root with a stand-in `nmap` that records its arguments
    /// and writes `gnmap` (or fails with `exit`), and an `ip` whose default
    /// route is on `route_dev` (none when empty).
    fn new(gnmap: &str, exit: u8, route_dev: &str) -> Scan {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        write_file(&dir.path().join("fixture.gnmap"), gnmap);
        let nmap = format!(
            "#!/bin/sh\necho \"$@\" > {root}/nmap.args\n\
             while [ $# -gt 0 ]; do case $1 in -oX) x=$2; shift;; -oG) g=$2; shift;; esac; shift; done\n\
             echo '<nmaprun/>' > \"$x\"\n\
             [ {exit} = 0 ] || {{ echo 'Failed to resolve \"nowhere\".' >&2; exit {exit}; }}\n\
             cp {root}/fixture.gnmap \"$g\"\n",
            root = dir.path().display()
        );
        let route = if route_dev.is_empty() {
            String::new()
        } else {
            format!(
                "default via 192.168.1.1 dev {route_dev} proto dhcp src 192.168.1.23 metric 100"
            )
        };
        let ip = format!(
            "#!/bin/sh\ncase \"$*\" in\n\
             '-4 -o route show default') echo '{route}' | grep . || true;;\n\
             '-4 -o addr show dev {route_dev} scope global') echo '2: {route_dev}    inet 192.168.1.23/24 brd 192.168.1.255 scope global dynamic {route_dev}';;\n\
             *) echo \"unexpected ip $*\" >&2; exit 2;;\nesac\n"
        );
        for (name, text) in [("nmap", nmap), ("ip", ip)] {
            let p = bin.join(name);
            write_file(&p, &text);
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        std::fs::create_dir_all(dir.path().join("textfile")).unwrap();
        Scan { dir }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn run(&self, targets: &str) -> Output {
        let script = repo_root().join("overlays/nmap-scan/usr/libexec/nodeforge/nmap-scan");
        let path = format!(
            "{}:{}",
            self.path("bin").display(),
            std::env::var("PATH").unwrap_or_default()
        );
        Command::new("sh")
            .arg(&script)
            .env("PATH", path)
            .env("NODEFORGE_NMAP_STATE_DIR", self.path("state"))
            .env("NODEFORGE_NMAP_TEXTFILE_DIR", self.path("textfile"))
            .env("NODEFORGE_NMAP_TARGETS", targets)
            .env("NODEFORGE_NMAP_ARGS", "--top-ports 100")
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", script.display()))
    }

    fn metrics(&self) -> String {
        read_text(&self.path("textfile/nodeforge-nmap.prom"))
    }
}

fn says(o: &Output) -> String {
    format!(
        "status {}\n--- stdout\n{}--- stderr\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Every sample line is `name{labels} value` or `name value`: what
/// node_exporter's textfile collector parses.
fn assert_exposition_format(text: &str) {
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line}"));
        assert!(value.parse::<f64>().is_ok(), "value of {line}");
        let name = series.split('{').next().unwrap();
        assert!(
            name.starts_with("nodeforge_nmap_")
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "{line}"
        );
        if let Some(labels) = series.strip_prefix(name) {
            assert!(
                labels.is_empty() || (labels.starts_with('{') && labels.ends_with('}')),
                "{line}"
            );
        }
    }
}

fn no_temp_files(dir: &Path) {
    let left: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(left.is_empty(), "{left:?} left in {}", dir.display());
}

#[test]
fn a_scan_of_the_default_route_subnet_becomes_metrics_and_kept_results() {
    let scan = Scan::new(GNMAP, 0, "eth0");
    let o = scan.run("auto");
    assert!(o.status.success(), "{}", says(&o));
    assert_eq!(
        read_text(&scan.path("nmap.args")).trim_end(),
        format!(
            "--top-ports 100 -oX {0}/.scan.xml -oG {0}/.scan.gnmap 192.168.1.23/24",
            scan.path("state").display()
        )
    );
    assert_eq!(read_text(&scan.path("state/last.gnmap")), GNMAP);
    assert!(scan.path("state/last.xml").is_file());
    let m = scan.metrics();
    assert_exposition_format(&m);
    for want in [
        "nodeforge_nmap_scan_success 1\n",
        "nodeforge_nmap_hosts_up 2\n",
        "nodeforge_nmap_port_open{host=\"192.168.1.1\",name=\"router.lan\",port=\"22\",protocol=\"tcp\",service=\"ssh\"} 1\n",
        "nodeforge_nmap_port_open{host=\"192.168.1.1\",name=\"router.lan\",port=\"53\",protocol=\"tcp\",service=\"domain\"} 1\n",
        "nodeforge_nmap_port_open{host=\"192.168.1.23\",name=\"\",port=\"9100\",protocol=\"tcp\",service=\"jetdirect\"} 1\n",
    ] {
        assert!(m.contains(want), "{want} missing:\n{m}");
    }
    // Filtered and closed ports are not open ones.
    assert_eq!(m.matches("nodeforge_nmap_port_open{").count(), 3, "{m}");
    assert!(m.contains("nodeforge_nmap_scan_timestamp_seconds "), "{m}");
    no_temp_files(&scan.path("textfile"));
    assert_eq!(
        std::fs::metadata(scan.path("textfile/nodeforge-nmap.prom"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o644,
        "node_exporter (user prometheus) reads it"
    );
}

#[test]
fn a_failed_scan_is_a_zero_and_keeps_the_last_results() {
    let good = Scan::new(GNMAP, 0, "eth0");
    assert!(good.run("192.168.1.0/24").status.success());
    // The same directories, now with an nmap that fails.
    let failing = Scan::new(GNMAP, 1, "eth0");
    std::fs::rename(failing.path("bin/nmap"), good.path("bin/nmap")).unwrap();
    let o = good.run("nowhere");
    assert!(!o.status.success(), "{}", says(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("Failed to resolve"),
        "{}",
        says(&o)
    );
    let m = good.metrics();
    assert_exposition_format(&m);
    assert!(m.contains("nodeforge_nmap_scan_success 0\n"), "{m}");
    assert!(!m.contains("nodeforge_nmap_port_open{"), "{m}");
    assert_eq!(
        read_text(&good.path("state/last.gnmap")),
        GNMAP,
        "the last good results stay"
    );
    no_temp_files(&good.path("textfile"));
}

#[test]
fn an_unfinished_scan_is_a_failure() {
    let cut = GNMAP
        .lines()
        .filter(|l| !l.starts_with("# Nmap done"))
        .collect::<Vec<_>>()
        .join("\n");
    let scan = Scan::new(&cut, 0, "eth0");
    let o = scan.run("auto");
    assert!(!o.status.success(), "{}", says(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("stopped before the end"),
        "{}",
        says(&o)
    );
    assert!(scan.metrics().contains("nodeforge_nmap_scan_success 0\n"));
    assert!(!scan.path("state/last.gnmap").exists());
}

#[test]
fn auto_without_a_default_route_names_the_setting() {
    let scan = Scan::new(GNMAP, 0, "");
    let o = scan.run("auto");
    assert!(!o.status.success(), "{}", says(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("set vars.nmap_targets"),
        "{}",
        says(&o)
    );
    assert!(!scan.path("nmap.args").exists(), "nmap ran without targets");
    assert!(scan.metrics().contains("nodeforge_nmap_scan_success 0\n"));
}

/// profiles/sentinel.toml installs Debian's nmap and the overlay; the
/// timer is enabled, the settings come from the profile's vars.
#[test]
fn the_sentinel_scans_on_a_timer() {
    let plan = Plan::load(&repo_root().join("profiles/sentinel.toml")).unwrap();
    assert!(
        plan.packages.iter().any(|p| p == "nmap"),
        "{:?}",
        plan.packages
    );
    let target = |t: &str| {
        plan.overlay_files
            .iter()
            .find(|f| f.target == t)
            .unwrap_or_else(|| panic!("{t} is not in the sentinel's image"))
    };
    target("/etc/systemd/system/timers.target.wants/nodeforge-nmap-scan.timer");
    let interval =
        read_text(&target("/etc/systemd/system/nodeforge-nmap-scan.timer.d/interval.conf").source);
    assert!(interval.contains("vars.nmap_interval"), "{interval}");
    let service = read_text(&target("/etc/systemd/system/nodeforge-nmap-scan.service").source);
    assert!(
        service.contains("ExecStart=/usr/libexec/nodeforge/nmap-scan\n"),
        "{service}"
    );
    assert!(
        service.contains("EnvironmentFile=/etc/nodeforge/nmap-scan.env\n"),
        "{service}"
    );
    let env = read_text(&target("/etc/nodeforge/nmap-scan.env").source);
    assert!(env.contains("vars.nmap_targets"), "{env}");
    assert_eq!(plan.profile.vars["nmap_targets"].as_str(), Some("auto"));
}

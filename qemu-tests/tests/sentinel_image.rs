//! profiles/sentinel.toml (Raspberry Pi 4, arm64; through
//! qemu-tests/profiles/sentinel.toml, with its stacks) built for real on
//! this x86-64 host through qemu-user, its SD card layout checked from the
//! image file with outside tools, and booted under qemu-system-aarch64
//! (`virt`, the image's own kernel and initrd) with its whole stack.
//!
//! Real (arm64): Debian's prometheus-blackbox-exporter under
//! blackbox_exporter's public name, the image's Docker, compose, journal
//! and agent. Stand-ins: Alloy (a script on the arm64 Debian layer),
//! busybox httpd from Debian's arm64 busybox-static for Pi-hole (with a
//! `dig` that asks it) and speedtest tracker, and Tailscale's client.
//! Real on the node: Debian's nmap, scanning the guest's subnet.

use std::fs;
use std::sync::{Mutex, OnceLock};

use nodeforge::disk::{esp, mbr};
use qemu_tests::stacks::{assert_all_healthy, prepare, Node, Running, GOOD_KEY, LOGS, SENTINEL};
use qemu_tests::{extract, run_check};

/// The one arm64 build both tests use: locked against the test registry
/// and built once.
fn sentinel() -> &'static Mutex<Node> {
    static NODE: OnceLock<Mutex<Node>> = OnceLock::new();
    NODE.get_or_init(|| Mutex::new(prepare("qemu-tests/profiles/sentinel.toml", None)))
}

#[test]
fn sentinel_sd_layout_is_mbr_fat32_boot_and_ext4_root() {
    let node = sentinel().lock().unwrap_or_else(|e| e.into_inner());
    let (image, manifest) = (node.image.clone(), node.manifest.clone());
    drop(node);
    let parts = mbr::read(&image)
        .unwrap()
        .expect("the sentinel image has an MBR partition table");
    assert_eq!(parts.len(), 2, "{parts:?}");
    let (boot, root) = (&parts[0], &parts[1]);
    assert_eq!(boot.mbr_type, 0x0C, "partition 1 is FAT32 (LBA)");
    assert!(boot.bootable, "partition 1 is marked bootable");
    assert_eq!(root.mbr_type, 0x83, "partition 2 is Linux");

    let (ok, dump) = run_check("sfdisk", &["--dump"], &image);
    assert!(ok && dump.contains("label: dos"), "sfdisk --dump:\n{dump}");

    let img = fs::File::open(&image).unwrap();
    let read = |name: &str| {
        esp::read_file(&img, boot.offset, boot.size, name)
            .unwrap_or_else(|e| panic!("{name} on the boot partition: {e:#}"))
    };
    let config = String::from_utf8(read("config.txt")).unwrap();
    assert!(config.lines().any(|l| l == "arm_64bit=1"), "{config}");
    let cmdline = String::from_utf8(read("cmdline.txt")).unwrap();
    assert!(
        cmdline
            .split_whitespace()
            .any(|o| o == format!("root=PARTUUID={}", root.partuuid)),
        "cmdline.txt names partition 2 ({}): {cmdline}",
        root.partuuid
    );
    for file in [
        "start4.elf",
        "fixup4.dat",
        "bcm2711-rpi-4-b.dtb",
        "bcm2711-rpi-400.dtb",
    ] {
        assert!(!read(file).is_empty(), "{file} is empty");
    }
    let kernel = read("vmlinuz");
    // arm64 Image header: "ARM\x64" magic at offset 56.
    assert_eq!(&kernel[56..60], b"ARM\x64", "vmlinuz is an arm64 Image");
    let initrd = read("initrd.img");
    assert!(initrd.starts_with(b"070701"), "initrd.img is a newc cpio");

    let dir = tempfile::tempdir().unwrap();
    let vfat = dir.path().join("boot.vfat");
    extract(&image, boot.offset, boot.size, &vfat).unwrap();
    let (ok, text) = run_check("fsck.vfat", &["-n"], &vfat);
    assert!(ok, "fsck.vfat -n:\n{text}");
    let ext4 = dir.path().join("root.ext4");
    extract(&image, root.offset, root.size, &ext4).unwrap();
    let (ok, text) = run_check("e2fsck", &["-fn"], &ext4);
    assert!(ok, "e2fsck -fn:\n{text}");

    let facts: serde_json::Value = serde_json::from_slice(&fs::read(&manifest).unwrap()).unwrap();
    assert_eq!(facts["arch"], "arm64");
    qemu_tests::assert_manifest_lists(
        &manifest,
        &[
            "linux-image-arm64",
            "raspi-firmware",
            "busybox-static",
            "systemd",
        ],
    );
}

#[test]
fn sentinel_boots_under_qemu_aarch64_with_its_stack() {
    // The role joins the tailnet (tag:edge): first boot completes only
    // with a client and a key, so the seed carries one.
    let mut node = sentinel().lock().unwrap_or_else(|e| e.into_inner());
    node.stamp(GOOD_KEY, &[]);
    let vm = node.start("sentinel", &qemu_tests::stacks::FIRST_MACHINE);
    eprintln!(
        "sentinel: status line {:.1}s after QEMU started (qemu-system-aarch64, TCG)",
        vm.took.as_secs_f64()
    );
    assert_all_healthy(&node.status, &[LOGS, SENTINEL]);
    check_blackbox(&vm);
    check_nmap_scan(&vm);
    drop(vm);
}

/// The LAN scan (overlays/nmap-scan) with Debian's real nmap: its timer is
/// enabled, and a scan started now (of the guest's user-mode subnet, found
/// from its default route) ends with results on disk and metrics that
/// the host's node_exporter serves, the node's own SSH port among them.
fn check_nmap_scan(vm: &Running) {
    let started = std::time::Instant::now();
    let out = vm.ssh.run(
        "systemctl is-enabled nodeforge-nmap-scan.timer; \
         systemctl show -P TimersMonotonic nodeforge-nmap-scan.timer; \
         sudo systemctl start nodeforge-nmap-scan.service && echo scan-ok; \
         sudo journalctl -u nodeforge-nmap-scan.service -o cat | tail -n 3; \
         sudo test -s /var/lib/nodeforge/nmap/last.xml && echo xml-ok; \
         busybox wget -qO- http://127.0.0.1:9100/metrics | grep '^nodeforge_nmap_'",
    );
    eprintln!(
        "sentinel: nmap scan checked in {:.1}s:\n{out}",
        started.elapsed().as_secs_f64()
    );
    for want in [
        "enabled\n",
        // The profile's interval (vars.nmap_interval) and the boot-time scan.
        "{ OnBootUSec=15min ; next_elapse=",
        "{ OnUnitActiveUSec=6h ; next_elapse=",
        "scan-ok\n",
        "xml-ok\n",
        "nodeforge_nmap_scan_success 1\n",
        "nodeforge_nmap_hosts_up ",
    ] {
        assert!(out.contains(want), "{want:?} missing:\n{out}");
    }
    // The node itself is on that subnet, its SSH port open.
    assert!(
        out.lines()
            .any(|l| l.starts_with("nodeforge_nmap_port_open{") && l.contains("port=\"22\"")),
        "the scan did not find the node's own SSH port:\n{out}"
    );
}

/// Debian's real blackbox_exporter loaded the role's modules and probes
/// with them: a TCP connect to its own port succeeds.
fn check_blackbox(vm: &Running) {
    // Python from the arm64 Debian layer of the test image.
    let out = vm.ssh.run(
        "sudo docker exec $(sudo docker ps -qf label=com.docker.compose.service=blackbox-exporter) \
         python3 -c 'import urllib.request as u; \
         g = lambda p: u.urlopen(\"http://127.0.0.1:9115\" + p).read().decode(); \
         print(g(\"/config\")); print(g(\"/probe?module=tcp_connect&target=127.0.0.1:9115\"))'",
    );
    for want in ["http_2xx:", "tcp_connect:", "icmp:", "probe_success 1"] {
        assert!(out.contains(want), "{want} missing:\n{out}");
    }
}

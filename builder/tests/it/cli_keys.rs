//! `nodeforge keys generate`: a release key pair that OpenSSH reads, never
//! written over; and `build --signing-key` refusing a bad key before it
//! builds anything.

use std::os::unix::fs::PermissionsExt;

use crate::support::Project;

#[test]
fn keys_generate_writes_a_private_key_only_its_owner_reads_and_an_openssh_public_key() {
    let p = Project::empty();
    let out = p.ok(&["keys", "generate", "--dir", "fleet-keys"]);
    out.stdout_has(&[
        "release key SHA256:",
        "fleet-keys/release.key (0600",
        "--signing-key fleet-keys/release.key",
        "--release-key fleet-keys/release.pub",
    ]);
    let private = p.path("fleet-keys/release.key");
    let mode = std::fs::metadata(&private).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let public = p.read("fleet-keys/release.pub");
    assert!(public.starts_with("ssh-ed25519 "), "{public}");
    // OpenSSH derives the same public key from the private one.
    let derived = std::process::Command::new("ssh-keygen")
        .arg("-y")
        .arg("-f")
        .arg(&private)
        .output()
        .unwrap();
    assert!(derived.status.success(), "{derived:?}");
    let derived = String::from_utf8(derived.stdout).unwrap();
    let key_part = |l: &str| l.split_whitespace().take(2).collect::<Vec<_>>().join(" ");
    assert_eq!(key_part(&derived), key_part(&public));

    // A second run keeps the first key and says so.
    let before = std::fs::read(&private).unwrap();
    p.fails(&["keys", "generate", "--dir", "fleet-keys"])
        .stderr_has(&[
            "release.key already exists",
            "does not replace a release key",
        ]);
    assert_eq!(std::fs::read(&private).unwrap(), before);
    // Another name is another pair.
    p.ok(&[
        "keys",
        "generate",
        "--dir",
        "fleet-keys",
        "--name",
        "staging",
    ]);
    assert!(p.path("fleet-keys/staging.pub").is_file());
}

#[test]
fn a_build_with_an_unusable_signing_key_stops_before_building() {
    let p = Project::new();
    p.write("not-a-key", "hello\n");
    p.write("profiles/base.toml", "name = \"base\"\nhardware = \"pc\"\n");
    for (key, wants) in [
        (
            "not-a-key",
            &["not-a-key is not an OpenSSH private key"][..],
        ),
        (
            "missing.key",
            &["missing.key", "nodeforge keys generate"][..],
        ),
    ] {
        let run = p
            .cmd(&[
                "build",
                "--signing-key",
                key,
                "-o",
                "out",
                "profiles/base.toml",
            ])
            .env("NODEFORGE_CACHE_DIR", p.path("cache"))
            .fails();
        run.stderr_has(wants);
        // Refused before anything was made.
        assert!(!p.path("out").exists() && !p.path("cache").exists());
    }
    // A key others can read is refused too, naming the fix.
    p.ok(&["keys", "generate", "--dir", "k"]);
    let key = p.path("k/release.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    p.cmd(&[
        "build",
        "--signing-key",
        "k/release.key",
        "-o",
        "out",
        "profiles/base.toml",
    ])
    .env("NODEFORGE_CACHE_DIR", p.path("cache"))
    .fails()
    .stderr_has(&[
        "k/release.key can be read by others (mode 644)",
        "chmod 600",
    ]);
}

/// A profile whose `[update] key` is `key`, building on a fake rootfs.
fn update_project(key: &str) -> Project {
    let p = Project::new();
    p.write(
        "profiles/x.toml",
        &format!(
            "name = \"x\"\nrole = \"test\"\nhardware = \"pc\"\n[[users]]\nname = \"admin\"\n\
             sudo = true\nauthorized_keys = [\"{}\"]\n[disk]\nsize = \"800MiB\"\n\
             esp_size = \"64MiB\"\n[update]\nkey = \"{key}\"\n\
             url = \"http://core:8080/releases/x\"\n",
            crate::support::KEY
        ),
    );
    p
}

#[test]
fn the_profiles_release_key_is_checked_and_baked_with_the_builds_epoch_and_ab_slots() {
    let p = update_project("../k/release.pub");
    p.ok(&["keys", "generate", "--dir", "k"]);
    let public = p.read("k/release.pub");
    p.ok(&["plan", "profiles/x.toml"]).stdout_has(&[
        "updates    A/B root slots; installs releases signed by SHA256:",
        "; a new slot gets 3 boots to come up healthy; looks at http://core:8080/releases/x \
         every 6 h\n",
        "GPT: esp, root-a, root-b (empty until an update), state",
    ]);
    let plan = p.ok(&["plan", "--json", "profiles/x.toml"]).json();
    assert_eq!(
        plan["profile"]["release_key"].as_str(),
        Some(public.trim()),
        "{plan:#}"
    );

    crate::support::require_root();
    crate::support::require_tool("debugfs", "e2fsprogs");
    crate::support::fake::write_agent(&p);
    crate::support::fake::install_fake_rootfs(&p, "profiles/x.toml");
    let mut args = crate::support::fake::build_args("profiles/x.toml", &["--quiet"]);
    args.splice(1..1, ["--signing-key", "k/release.key"]);
    p.ok(&args);
    let epoch = plan["epoch"]
        .as_i64()
        .expect("the fake archive gives the epoch");
    let root = crate::support::image::Ext4::root_of(&p.path("out/x.img"), p.root());
    let baked = root.text("/etc/nodeforge/release.pub");
    assert_eq!(
        baked.trim(),
        plan["profile"]["release_key"].as_str().unwrap()
    );
    let config = root.text("/etc/nodeforge/firstboot.toml");
    assert!(config.contains(&format!("epoch = {epoch}")), "{config}");
    let release: serde_json::Value = serde_json::from_str(&p.read("out/x.release.json")).unwrap();
    assert_eq!(release["epoch"], epoch, "{release:#}");
    assert_ab_layout(&p, &root, &release);
}

/// The image of a profile with `[update]`: slots A and B of one size (B a
/// hole), the state partition with the persistent directories, slot A's
/// boot entry, fstab's bind mounts, the assess unit, and the release
/// naming the disk layout.
fn assert_ab_layout(p: &Project, root: &crate::support::image::Ext4, release: &serde_json::Value) {
    use crate::support::image::{copy_out, gpt_partitions, Ext4};
    let img = p.path("out/x.img");
    let parts = gpt_partitions(&img);
    let labels: Vec<&str> = parts.iter().map(|q| q.label.as_str()).collect();
    assert_eq!(labels, ["esp", "root-a", "root-b", "state"]);
    let (esp, a, b, state) = (&parts[0], &parts[1], &parts[2], &parts[3]);
    assert_eq!(a.size, b.size);
    // Slot B holds no byte of the file: a hole the bmap skips.
    let bmap = nodeforge::bmap::Bmap::load(&p.path("out/x.img.bmap")).unwrap();
    for r in &bmap.ranges {
        let bytes = bmap.byte_range(r);
        assert!(
            bytes.end <= b.offset || bytes.start >= b.offset + b.size,
            "slot B is mapped: {bytes:?}"
        );
    }
    let f = std::fs::File::open(&img).unwrap();
    let read_esp = |path: &str| {
        String::from_utf8(
            nodeforge::disk::esp::read_file(&f, esp.offset, esp.size, path)
                .unwrap_or_else(|e| panic!("{path}: {e:#}")),
        )
        .unwrap()
    };
    let entry = read_esp("loader/entries/nodeforge-a.conf");
    for want in [
        format!(
            "root=PARTUUID={} rw rootflags=errors=remount-ro panic=10",
            a.part_guid
        ),
        "sort-key nodeforge\n".into(),
        "version  1\n".into(),
        "linux    /nodeforge/a/vmlinuz\n".into(),
    ] {
        assert!(entry.contains(&want), "{want:?} not in\n{entry}");
    }
    assert!(!read_esp("loader/loader.conf").contains("default"));
    assert_eq!(read_esp("nodeforge/a/vmlinuz"), "kernel");
    assert_eq!(
        read_esp("nodeforge/a/version").trim(),
        release["version"].as_str().unwrap(),
        "slot A's version on the ESP is the release's"
    );
    let fstab = root.text("/etc/fstab");
    assert!(!fstab.contains("\t/\t"), "no slot is / in fstab:\n{fstab}");
    for want in [
        format!(
            "PARTUUID={}\t/var/lib/nodeforge-state\text4",
            state.part_guid
        ),
        "/var/lib/nodeforge-state/docker-volumes\t/var/lib/docker/volumes\tnone\tbind,".into(),
        "/var/lib/nodeforge-state/nodeforge\t/var/lib/nodeforge\tnone\tbind,".into(),
    ] {
        assert!(fstab.contains(&want), "{want:?} not in\n{fstab}");
    }
    let config = root.text("/etc/nodeforge/firstboot.toml");
    assert!(config.contains("[slots]"), "{config}");
    assert!(
        config.contains("tries = 3\n"),
        "the default tries:\n{config}"
    );
    assert!(config.contains(&a.part_guid.to_string()), "{config}");
    let wants = root.debugfs("ls -l /etc/systemd/system/multi-user.target.wants");
    assert!(wants.contains("nodeforge-assess.service"), "{wants}");
    // [update] url: the timer, and the URL it updates from.
    assert!(
        config.contains("update_url = \"http://core:8080/releases/x\""),
        "{config}"
    );
    let timers = root.debugfs("ls -l /etc/systemd/system/timers.target.wants");
    assert!(timers.contains("nodeforge-update.timer"), "{timers}");
    let st = Ext4 {
        path: copy_out(&img, state.offset, state.size, &p.path("state.ext4")),
    };
    let listing = st.debugfs("ls -l /");
    for dir in ["nodeforge", "tailscale", "docker-volumes"] {
        assert!(
            listing.contains(dir),
            "{dir} not on the state partition:\n{listing}"
        );
    }
    assert_eq!(
        release["root_slot"]["offset"].as_u64(),
        Some(a.offset),
        "{release:#}"
    );
    assert!(release["root_slot"]["disk_guid"].is_string(), "{release:#}");
}

#[test]
fn a_release_key_that_is_missing_or_not_a_public_key_is_refused_naming_the_file() {
    let p = update_project("../k/release.key");
    p.ok(&["keys", "generate", "--dir", "k"]);
    p.fails(&["check", "profiles/x.toml"]).stderr_has(&[
        "profiles/x.toml:",
        "k/release.key is not an OpenSSH public key line",
        "nodeforge keys generate",
    ]);
    let p = update_project("../k/nothing.pub");
    p.fails(&["check", "profiles/x.toml"])
        .stderr_has(&["profiles/x.toml:", "`../k/nothing.pub` not found"]);
    // The node's client speaks plain HTTP.
    let p = update_project("../k/release.pub");
    p.ok(&["keys", "generate", "--dir", "k"]);
    p.edit("profiles/x.toml", |t| {
        t.replace("http://core", "https://core")
    });
    p.fails(&["check", "profiles/x.toml"]).stderr_has(&[
        "profiles/x.toml:",
        "[update] url `https://core:8080/releases/x`",
        "plain HTTP",
    ]);
    // Boot counting's tries: a whole boot each, so a few.
    let p = update_project("../k/release.pub");
    p.ok(&["keys", "generate", "--dir", "k"]);
    for bad in ["0", "10"] {
        p.edit("profiles/x.toml", |t| {
            t.replace("[update]\n", &format!("[update]\ntries = {bad}\n"))
        });
        p.fails(&["check", "profiles/x.toml"]).stderr_has(&[
            "profiles/x.toml:",
            &format!("[update] tries = {bad}: give 1 to 9"),
        ]);
        p.edit("profiles/x.toml", |t| {
            t.replace(&format!("tries = {bad}\n"), "")
        });
    }
    p.edit("profiles/x.toml", |t| {
        t.replace("[update]\n", "[update]\ntries = 2\n")
    });
    p.ok(&["plan", "profiles/x.toml"])
        .stdout_has(&["a new slot gets 2 boots to come up healthy"]);
    // Slots need UEFI and initramfs-tools (root=PARTUUID=).
    let p = update_project("../k/release.pub");
    p.ok(&["keys", "generate", "--dir", "k"]);
    p.write(
        "hardware/virt.toml",
        "arch = \"arm64\"\nfirmware = \"uefi\"\npackages = [\"busybox-static\"]\n\
         initramfs = \"nodeforge\"\ninitramfs_modules = [\"ext4\"]\n",
    );
    p.edit("profiles/x.toml", |t| {
        t.replace("hardware = \"pc\"", "hardware = \"virt\"")
    });
    p.fails(&["check", "profiles/x.toml"]).stderr_has(&[
        "[update] gives the image two root slots",
        "hardware `virt` has neither",
    ]);
}

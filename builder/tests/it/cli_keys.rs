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
             esp_size = \"64MiB\"\n[update]\nkey = \"{key}\"\n",
            crate::support::KEY
        ),
    );
    p
}

#[test]
fn the_profiles_release_key_is_checked_and_baked_with_the_builds_epoch() {
    let p = update_project("../k/release.pub");
    p.ok(&["keys", "generate", "--dir", "k"]);
    let public = p.read("k/release.pub");
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
}

//! The build pipeline end to end without a network: the base rootfs comes
//! from a small fake tarball placed in the cache under the key the plan
//! computes, so every later step runs for real (overlays, users, agent,
//! FAT ESP, mkfs.ext4, GPT, outputs). Needs root, like every build.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{assert_fsck_clean, is_root, stderr, Project, KEY};

fn project() -> Project {
    common::x_project()
}

fn fake_tool(p: &Project, name: &str, script: &str) -> std::path::PathBuf {
    let dir = p.path("fakebin");
    let f = dir.join(name);
    fs::create_dir_all(&dir).unwrap();
    fs::write(&f, format!("#!/bin/sh\n{script}\n")).unwrap();
    fs::set_permissions(&f, fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

const BUILD: &[&str] = common::BUILD_X;

fn out_files(p: &Project) -> Vec<String> {
    match fs::read_dir(p.path("out")) {
        Ok(rd) => rd
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => vec![],
    }
}

fn skip_unless_root() -> bool {
    if !is_root() {
        eprintln!("SKIPPED: builds need root");
        return true;
    }
    false
}

#[test]
fn offline_build_produces_image_checksum_and_manifest() {
    if skip_unless_root() {
        return;
    }
    let p = project();
    let out = p.nodeforge(&[BUILD, &["--json"]].concat());
    assert!(out.status.success(), "{}", stderr(&out));
    let events: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let ends: Vec<&str> = events
        .iter()
        .filter(|e| e["event"] == "step-end")
        .map(|e| e["report"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        ends,
        [
            "rootfs",
            "system",
            "overlays",
            "users",
            "agent",
            "containers",
            "stacks",
            "initramfs",
            "esp",
            "root-fs",
            "partition-table",
            "outputs"
        ]
    );
    let rootfs = events.iter().find(|e| e["event"] == "step-end").unwrap();
    assert_eq!(rootfs["report"]["status"], "reused", "{rootfs}");

    let img = p.path("out/x.img");
    let sha = fs::read_to_string(p.path("out/x.img.sha256")).unwrap();
    assert_eq!(
        sha,
        format!("{}  x.img\n", nodeforge::fsutil::sha256_file(&img).unwrap())
    );
    let manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(p.path("out/x.manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["packages"][0]["name"], "systemd");
    assert_eq!(manifest["packages"][0]["version"], "257.9-1");
    assert_eq!(manifest["facts"]["kernel"], "6.1.0-test");
    assert_eq!(manifest["steps"].as_array().unwrap().len(), 11);
    assert!(manifest["steps"][0]["seconds"].as_f64().is_some());

    // The partition table and ESP read back with our own readers…
    let parts = nodeforge::disk::gpt_table::read(&img).unwrap();
    assert_eq!(parts.len(), 2);
    let f = fs::File::open(&img).unwrap();
    let entry = nodeforge::disk::esp::read_file(
        &f,
        parts[0].offset,
        parts[0].size,
        "loader/entries/nodeforge.conf",
    )
    .unwrap();
    let entry = String::from_utf8(entry).unwrap();
    assert!(
        entry.contains(&format!("root=PARTUUID={}", parts[1].part_guid)),
        "{entry}"
    );
    assert_eq!(
        nodeforge::disk::esp::read_file(&f, parts[0].offset, parts[0].size, "nodeforge/vmlinuz")
            .unwrap(),
        b"kernel"
    );
    // …the ESP with dosfstools…
    let esp = p.path("esp.vfat");
    let mut b = vec![0u8; parts[0].size as usize];
    {
        use std::os::unix::fs::FileExt;
        f.read_exact_at(&mut b, parts[0].offset).unwrap();
    }
    fs::write(&esp, b).unwrap();
    assert_fsck_clean("fsck.vfat", "-n", &esp);
    // …and the root filesystem with e2fsprogs.
    let root = p.path("root.ext4");
    let data = {
        use std::os::unix::fs::FileExt;
        let mut b = vec![0u8; parts[1].size as usize];
        f.read_exact_at(&mut b, parts[1].offset).unwrap();
        b
    };
    fs::write(&root, data).unwrap();
    assert_fsck_clean("e2fsck", "-fn", &root);
    let cat = |path: &str| {
        let o = Command::new("debugfs")
            .args(["-R", &format!("cat {path}")])
            .arg(&root)
            .stderr(Stdio::null())
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    assert!(cat("/etc/passwd").contains("admin:x:1000:1000::/home/admin:/bin/bash"));
    assert_eq!(cat("/home/admin/.ssh/authorized_keys").trim(), KEY);
    assert_eq!(cat("/etc/role"), "test\n");
    assert!(cat("/etc/fstab").contains(&format!("PARTUUID={}\t/\text4", parts[1].part_guid)));
    assert!(cat("/etc/nodeforge/firstboot.toml").contains("role = \"test\""));
    assert_eq!(
        cat("/usr/bin/nodeforge-firstboot"),
        "#!/bin/sh\necho fake agent\n"
    );
}

#[test]
fn failing_step_names_the_command_and_leaves_nothing() {
    if skip_unless_root() {
        return;
    }
    let p = project();
    let bin = fake_tool(&p, "mkfs.ext4", "echo 'mkfs: disk on fire' >&2; exit 1");
    let out = p.nodeforge_with_path(BUILD, Some(&bin));
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("build step `root-fs` failed"), "{err}");
    assert!(err.contains("mkfs.ext4 -q -F"), "{err}");
    assert!(err.contains("disk on fire"), "{err}");
    assert_eq!(out_files(&p), Vec::<String>::new());
}

#[test]
fn killed_build_leaves_no_file_under_the_output_name() {
    if skip_unless_root() {
        return;
    }
    let p = project();
    let bin = fake_tool(&p, "mkfs.ext4", "sleep 60");
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut paths = vec![bin];
    paths.extend(std::env::split_paths(&path));
    let mut child = Command::new(env!("CARGO_BIN_EXE_nodeforge"))
        .args(BUILD)
        .arg("--quiet")
        .current_dir(p.dir.path())
        .env("PATH", std::env::join_paths(paths).unwrap())
        .spawn()
        .unwrap();
    let partial = p.path("out/.x.img.partial");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !partial.exists() {
        assert!(
            Instant::now() < deadline,
            "the build never started writing the image"
        );
        assert!(child.try_wait().unwrap().is_none(), "build ended early");
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let files = out_files(&p);
    for name in ["x.img", "x.img.sha256", "x.manifest.json"] {
        assert!(
            !files.iter().any(|f| f == name),
            "{name} exists after a killed build: {files:?}"
        );
    }
    assert!(!Path::new(&p.path("out/x.img")).exists());
}

#[test]
fn same_inputs_give_the_same_image_bytes() {
    if skip_unless_root() {
        return;
    }
    let p = project();
    let build = |out: &str| {
        build_into(&p, out, &["--quiet"]);
        fs::read_to_string(p.path(&format!("{out}/x.img.sha256"))).unwrap()
    };
    let first = build("out1");
    // Let the clock move on: times the build writes must not leak in.
    std::thread::sleep(Duration::from_millis(1100));
    let second = build("out2");
    assert_eq!(first, second);
}

/// [`BUILD`] into the output directory `out` with a fixed
/// SOURCE_DATE_EPOCH and `extra` arguments; the build must succeed.
fn build_into(p: &Project, out: &str, extra: &[&str]) -> std::process::Output {
    let mut args = [BUILD, extra].concat();
    let at = args.iter().position(|a| *a == "--output").unwrap();
    args[at + 1] = out;
    let run = p.nodeforge_with_env(&args, &[("SOURCE_DATE_EPOCH", common::TEST_EPOCH)]);
    assert!(run.status.success(), "{}", stderr(&run));
    run
}

/// The step names and statuses of a `build --json` run.
fn step_statuses(out: &std::process::Output) -> Vec<(String, String)> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|e| e["event"] == "step-end")
        .map(|e| {
            (
                e["report"]["name"].as_str().unwrap().to_owned(),
                e["report"]["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[test]
fn an_unchanged_rebuild_reuses_the_image_and_a_changed_input_rebuilds() {
    if skip_unless_root() {
        return;
    }
    let p = project();
    let build = [BUILD, &["--json"]].concat();
    let first = p.nodeforge(&build);
    assert!(first.status.success(), "{}", stderr(&first));
    assert_eq!(step_statuses(&first).len(), 12);
    let sha = fs::read_to_string(p.path("out/x.img.sha256")).unwrap();

    // Same inputs, image untouched: nothing is rebuilt.
    let again = p.nodeforge(&build);
    assert!(again.status.success(), "{}", stderr(&again));
    assert_eq!(
        step_statuses(&again),
        [("outputs".to_owned(), "reused".to_owned())]
    );
    assert_eq!(fs::read_to_string(p.path("out/x.img.sha256")).unwrap(), sha);

    // The image changed in place since (as `customize` without -o does):
    // it is not handed out as built; the build runs again.
    {
        use std::os::unix::fs::FileExt;
        let f = fs::OpenOptions::new()
            .write(true)
            .open(p.path("out/x.img"))
            .unwrap();
        f.write_all_at(b"edited", 4096 * 40).unwrap();
    }
    let after_edit = p.nodeforge(&build);
    assert!(after_edit.status.success(), "{}", stderr(&after_edit));
    assert_eq!(step_statuses(&after_edit).len(), 12);

    // A changed overlay file changes the key: the steps from `overlays` on
    // run again; the rootfs and the `system` step's layer are reused.
    p.write("overlays/base/etc/motd", "changed\n");
    let changed = p.nodeforge(&build);
    assert!(changed.status.success(), "{}", stderr(&changed));
    let steps = step_statuses(&changed);
    let status = |name: &str| {
        steps
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, s)| s.as_str())
            .unwrap_or_else(|| panic!("no step {name} in {steps:?}"))
    };
    assert_eq!(steps.len(), 12);
    assert_eq!(status("rootfs"), "reused");
    assert_eq!(status("system"), "reused");
    for ran in ["overlays", "users", "agent", "root-fs"] {
        assert_eq!(status(ran), "done", "{ran} in {steps:?}");
    }
}

/// Layers restored from the cache give the same image, byte for byte, as
/// the steps that made them: a second output directory gets every tree
/// step from the cache and the same sha256.
#[test]
fn an_image_from_cached_layers_is_identical_to_the_built_one() {
    if skip_unless_root() {
        return;
    }
    let p = project();
    let build = |out: &str| build_into(&p, out, &["--json"]);
    let first = build("out");
    let layered = ["system", "overlays", "users", "agent"];
    for (name, status) in step_statuses(&first) {
        if layered.contains(&name.as_str()) {
            assert_eq!(status, "done", "{name}");
        }
    }
    let second = build("out2");
    let steps = step_statuses(&second);
    for name in layered {
        assert!(
            steps.contains(&(name.to_owned(), "reused".to_owned())),
            "{name} not reused: {steps:?}"
        );
    }
    assert_eq!(
        fs::read(p.path("out/x.img")).unwrap(),
        fs::read(p.path("out2/x.img")).unwrap(),
        "the image from cached layers differs from the built one"
    );
    // `cache ls` lists the layers with the step that made them.
    let ls = p.nodeforge(&["cache", "ls", "--cache-dir", "cache"]);
    assert!(ls.status.success(), "{}", stderr(&ls));
    let text = String::from_utf8_lossy(&ls.stdout);
    for name in layered {
        assert!(text.contains(&format!("{name} of x:")), "{text}");
    }
}

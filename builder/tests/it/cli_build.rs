//! The build pipeline end to end without a network: the base rootfs comes
//! from a small fake tarball placed in the cache under the key the plan
//! computes, so every later step runs for real (overlays, users, agent,
//! FAT ESP, mkfs.ext4, GPT, outputs). Needs root, like every build.

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::support::fake::{fake_tool, x_project, BUILD_X, TEST_EPOCH};
use crate::support::image::{assert_fsck_clean, copy_out, gpt_partitions, Ext4};
use crate::support::{require_root, Project, Run, KEY};

const BUILD: &[&str] = BUILD_X;

fn out_files(p: &Project) -> Vec<String> {
    match fs::read_dir(p.path("out")) {
        Ok(rd) => rd
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => vec![],
    }
}

#[test]
fn offline_build_produces_image_checksum_and_manifest() {
    require_root();
    let p = x_project();
    let steps = p.ok(&[BUILD, &["--json"]].concat()).steps();
    // The build runs exactly the steps `nodeforge plan` lists, in order:
    // both come from the one step table.
    let plan = p.ok(&["plan", "profiles/x.toml", "--json"]).json();
    let planned: Vec<&str> = plan["steps"]
        .as_array()
        .expect("the plan lists its steps")
        .iter()
        .map(|s| s["name"].as_str().expect("a step has a name"))
        .collect();
    assert_eq!(steps.names(), planned);
    assert_eq!(planned.first(), Some(&"rootfs"));
    assert_eq!(planned.last(), Some(&"outputs"));
    assert_eq!(steps.status("rootfs"), "reused", "{steps:?}");

    let img = p.path("out/x.img");
    let sha = p.read("out/x.img.sha256");
    assert_eq!(
        sha,
        format!("{}  x.img\n", nodeforge::fsutil::sha256_file(&img).unwrap())
    );
    let manifest: serde_json::Value = serde_json::from_str(&p.read("out/x.manifest.json")).unwrap();
    assert_eq!(manifest["packages"][0]["name"], "systemd");
    assert_eq!(manifest["packages"][0]["version"], "257.9-1");
    assert_eq!(manifest["facts"]["kernel"], "6.1.0-test");
    assert_eq!(manifest["steps"].as_array().unwrap().len(), 11);
    assert!(manifest["steps"][0]["seconds"].as_f64().is_some());

    // The partition table and ESP read back with our own readers…
    let parts = gpt_partitions(&img);
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
    let esp = copy_out(&img, parts[0].offset, parts[0].size, &p.path("esp.vfat"));
    assert_fsck_clean("fsck.vfat", "-n", &esp);
    // …and the root filesystem with e2fsprogs.
    let root = Ext4::root_of(&img, p.root());
    assert_fsck_clean("e2fsck", "-fn", &root.path);
    let cat = |path: &str| root.text(path);
    assert!(cat("/etc/passwd").contains("admin:x:1000:1000::/home/admin:/bin/bash"));
    assert_eq!(cat("/home/admin/.ssh/authorized_keys").trim(), KEY);
    assert_eq!(cat("/etc/role"), "test\n");
    assert!(cat("/etc/fstab").contains(&format!("PARTUUID={}\t/\text4", parts[1].part_guid)));
    // Regression: the ESP's device waited only systemd's default 90 s, and
    // under load the agent ran without the seed on it.
    assert!(cat("/etc/fstab").contains(&format!(
        "PARTUUID={}\t/boot/efi\tvfat\tumask=0077,nofail,x-systemd.device-timeout=5min\t",
        parts[0].part_guid
    )));
    assert!(cat("/etc/nodeforge/firstboot.toml").contains("role = \"test\""));
    assert_eq!(
        cat("/usr/bin/nodeforge-firstboot"),
        "#!/bin/sh\necho fake agent\n"
    );
}

#[test]
fn failing_step_names_the_command_and_leaves_nothing() {
    require_root();
    let p = x_project();
    let bin = fake_tool(&p, "mkfs.ext4", "echo 'mkfs: disk on fire' >&2; exit 1");
    p.cmd(BUILD).path_prepend(&bin).fails().stderr_has(&[
        "build step `root-fs` failed",
        "mkfs.ext4 -q -F",
        "disk on fire",
    ]);
    assert_eq!(out_files(&p), Vec::<String>::new());
}

#[test]
fn killed_build_leaves_no_file_under_the_output_name() {
    require_root();
    let p = x_project();
    let bin = fake_tool(&p, "mkfs.ext4", "sleep 60");
    let mut child = p
        .cmd(&[BUILD, &["--quiet"]].concat())
        .path_prepend(&bin)
        .spawn();
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
    require_root();
    let p = x_project();
    let build = |out: &str| {
        build_into(&p, out, &["--quiet"]);
        p.read(&format!("{out}/x.img.sha256"))
    };
    let first = build("out1");
    // Let the clock move on: times the build writes must not leak in.
    std::thread::sleep(Duration::from_millis(1100));
    let second = build("out2");
    assert_eq!(first, second);
    // The release too: it holds inputs and digests only.
    assert_eq!(p.read("out1/x.release.json"), p.read("out2/x.release.json"));
}

#[test]
fn a_signed_build_releases_every_file_it_wrote_and_keeps_the_key_out() {
    use nodeforge::release;
    require_root();
    let p = x_project();
    p.ok(&["keys", "generate", "--dir", "keys"]);
    p.ok(&["keys", "generate", "--dir", "keys", "--name", "next"]);
    build_into(&p, "out", &["--signing-key", "keys/release.key", "--quiet"]);
    let public = release::load_public_key(&p.path("keys/release.pub")).unwrap();
    let rel =
        release::read_verified(&p.path("out"), "x", &public).unwrap_or_else(|e| panic!("{e:#}"));
    let mut listed: Vec<&str> = rel.files.keys().map(String::as_str).collect();
    listed.sort_unstable();
    assert_eq!(
        listed,
        ["x.img", "x.img.bmap", "x.img.sha256", "x.root.chunks.json"]
    );
    for (file, digest) in &rel.files {
        let path = p.path(&format!("out/{file}"));
        assert_eq!(
            digest.sha256,
            nodeforge::fsutil::sha256_file(&path).unwrap(),
            "{file}"
        );
        assert_eq!(digest.size, fs::metadata(&path).unwrap().len(), "{file}");
    }
    let manifest: serde_json::Value = serde_json::from_str(&p.read("out/x.manifest.json")).unwrap();
    assert_eq!(rel.version, manifest["image_key"].as_str().unwrap());
    // The root slot is the image's root partition, its chunks cover it.
    let slot = rel.root_slot.as_ref().expect("a root slot");
    let root = &manifest["partitions"][1];
    assert_eq!(root["kind"], "root", "{root}");
    assert_eq!(slot.offset, root["offset"].as_u64().unwrap());
    assert_eq!(slot.size, root["size"].as_u64().unwrap());
    // Indexed from the mapped ranges only, it is the index of the bytes.
    let image = fs::read(p.path("out/x.img")).unwrap();
    let bytes = &image[slot.offset as usize..][..slot.size as usize];
    let index: nodeforge_delta::ChunkIndex =
        serde_json::from_str(&p.read(&format!("out/{}", slot.chunks))).unwrap();
    let read = nodeforge_delta::index(&mut &bytes[..], index.cutting).unwrap();
    assert_eq!(index, read);
    assert_eq!(index.size, slot.size);

    // The private key is nowhere in the output or the cache: neither its
    // 32 secret bytes nor any line of the key file past the common header.
    let key = release::load_signing_key(&p.path("keys/release.key")).unwrap();
    let seed = key
        .key_data()
        .ed25519()
        .unwrap()
        .private
        .to_bytes()
        .to_vec();
    let file = fs::read_to_string(p.path("keys/release.key")).unwrap();
    let mut needles = vec![seed];
    needles.extend(
        file.lines()
            .filter(|l| !l.starts_with("-----"))
            .skip(1)
            .map(|l| l.as_bytes().to_vec()),
    );
    assert!(needles.len() >= 3, "{file}");
    for dir in ["out", "cache"] {
        let root = p.path(dir);
        nodeforge::fsutil::walk_tree(&root, |rel, meta| {
            if meta.is_file() {
                let path = root.join(rel);
                let bytes = fs::read(&path).unwrap();
                for needle in &needles {
                    assert!(
                        !bytes.windows(needle.len()).any(|w| w == &needle[..]),
                        "{} holds the release key",
                        path.display()
                    );
                }
            }
        })
        .unwrap();
    }

    // An unchanged build is reused whole and signed with the new key.
    let run = p
        .cmd(&[BUILD, &["--signing-key", "keys/next.key", "--json"]].concat())
        .env("SOURCE_DATE_EPOCH", TEST_EPOCH)
        .ok();
    assert_eq!(run.steps().status("outputs"), "reused");
    let next = release::load_public_key(&p.path("keys/next.pub")).unwrap();
    assert_eq!(
        release::read_verified(&p.path("out"), "x", &next).unwrap(),
        rel
    );
    let err = release::read_verified(&p.path("out"), "x", &public).unwrap_err();
    assert!(
        format!("{err:#}").contains("not by the trusted release key"),
        "{err:#}"
    );
}

/// [`BUILD`] into the output directory `out` with a fixed
/// SOURCE_DATE_EPOCH and `extra` arguments; the build must succeed.
fn build_into(p: &Project, out: &str, extra: &[&str]) -> Run {
    let mut args = [BUILD, extra].concat();
    let at = args.iter().position(|a| *a == "--output").unwrap();
    args[at + 1] = out;
    p.cmd(&args).env("SOURCE_DATE_EPOCH", TEST_EPOCH).ok()
}

#[test]
fn an_unchanged_rebuild_reuses_the_image_and_a_changed_input_rebuilds() {
    require_root();
    let p = x_project();
    let build = [BUILD, &["--json"]].concat();
    assert_eq!(p.ok(&build).steps().len(), 12);
    let sha = p.read("out/x.img.sha256");

    // Same inputs, image untouched: nothing is rebuilt.
    assert_eq!(
        p.ok(&build).steps().0,
        [("outputs".to_owned(), "reused".to_owned())]
    );
    assert_eq!(p.read("out/x.img.sha256"), sha);

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
    assert_eq!(p.ok(&build).steps().len(), 12);

    // A changed overlay file changes the key: the steps from `overlays` on
    // run again; the rootfs and the `system` step's layer are reused.
    p.write("overlays/base/etc/motd", "changed\n");
    let steps = p.ok(&build).steps();
    assert_eq!(steps.len(), 12);
    steps.assert(&["rootfs", "system"], "reused");
    steps.assert(&["overlays", "users", "agent", "root-fs"], "done");
}

/// Layers restored from the cache give the same image, byte for byte, as
/// the steps that made them: a second output directory gets every tree
/// step from the cache and the same sha256.
#[test]
fn an_image_from_cached_layers_is_identical_to_the_built_one() {
    require_root();
    let p = x_project();
    let build = |out: &str| build_into(&p, out, &["--json"]);
    let first = build("out").steps();
    let layered = ["system", "overlays", "users", "agent"];
    first.assert(&layered, "done");
    build("out2").steps().assert(&layered, "reused");
    assert_eq!(
        crate::support::read_bytes(&p.path("out/x.img")),
        crate::support::read_bytes(&p.path("out2/x.img")),
        "the image from cached layers differs from the built one"
    );
    // `cache ls` lists the layers with the step that made them.
    let ls = p.ok(&["cache", "ls", "--cache-dir", "cache"]);
    let wants: Vec<String> = layered.iter().map(|n| format!("{n} of x:")).collect();
    ls.stdout_has(&wants.iter().map(String::as_str).collect::<Vec<_>>());
}

#[test]
fn release_diff_fetches_only_the_chunks_an_overlay_edit_changed() {
    require_root();
    let p = x_project();
    p.write("overlays/extra/etc/motd", "first\n");
    p.edit("profiles/x.toml", |s| {
        s.replace("overlays = [\"base\"]", "overlays = [\"base\", \"extra\"]")
    });
    build_into(&p, "v1", &["--quiet"]);
    p.write("overlays/extra/etc/motd", "second, a little longer\n");
    build_into(&p, "v2", &["--quiet"]);

    let same = p.ok(&["release", "diff", "v1", "v1", "--json"]).json();
    assert_eq!(same["fetch_bytes"], 0, "{same:#}");
    let d = p
        .ok(&["release", "diff", "v1/x.release.json", "v2", "--json"])
        .json();
    // One file of a 770 MiB root changed: a few chunks around its data
    // block and the metadata that names it, nothing else. (The fake root
    // is too small for ratios against its compressed size to mean
    // anything: benches/update-delta.sh measures those on a real role.)
    let (fetch, chunks) = (
        d["fetch_bytes"].as_u64().unwrap(),
        d["fetch_chunks"].as_u64().unwrap(),
    );
    assert!((1..=4).contains(&chunks), "{d:#}");
    assert!(fetch <= 1 << 20, "{d:#}");
    assert!(d["compressed_slot_size"].as_u64().unwrap() > 0, "{d:#}");
    assert_ne!(d["from"], d["to"]);
    p.ok(&["release", "diff", "v1", "v2"]).stdout_has(&[
        "x ",
        " -> ",
        "chunks",
        "of the slot compressed",
    ]);
    p.fails(&["release", "diff", "profiles", "v2"])
        .stderr_has(&["profiles holds no release (NAME.release.json)"]);
}

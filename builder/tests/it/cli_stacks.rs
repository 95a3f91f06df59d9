//! Stacks end to end through the CLI: located profile errors, `nodeforge
//! lock` against a real registry (Debian's docker-registry on loopback),
//! and builds (on the fake cached rootfs) that bake the locked images,
//! ignore moved tags, work `--offline` from the cache and name the image
//! when they cannot.

use std::fs;
use std::path::Path;

use crate::support::cli::Cli;
use crate::support::fake::{install_fake_rootfs, write_agent};
use crate::support::image::Ext4;
use crate::support::{require_root, require_tool, Project};
use nodeforge::oci::fixture::{busybox_httpd_image, TestRegistry};
use nodeforge_firstboot::stacks::StacksManifest;

const DOCKER: &str = "packages = [\"docker.io\", \"docker-cli\", \"docker-compose\"]\n";
const COMPOSE: &str = "services:\n  web:\n    image: {{ images[\"IMAGE\"] }}\n    pull_policy: never\n    restart: unless-stopped\n    environment:\n      GREETING: ${GREETING}\n# {{ stack }} on {{ hostname }}\n";

/// A project whose profile `profiles/s.toml` has one stack running `image`.
pub fn project(image: &str) -> Project {
    let p = Project::new();
    p.write(
        "profiles/s.toml",
        &format!(
            "name = \"s\"\nhardware = \"pc\"\n{DOCKER}[disk]\nsize = \"800MiB\"\nesp_size = \"64MiB\"\n\n\
             [[stacks]]\nname = \"web\"\ncompose = \"web/compose.yaml.tera\"\nimages = [\"{image}\"]\n\
             env = {{ GREETING = \"hello $there\" }}\nhealth_timeout_secs = 90\n\
             [[stacks.probes]]\nservice = \"web\"\nhttp = \"http://127.0.0.1:8080/\"\n"
        ),
    );
    p.write(
        "stacks/web/compose.yaml.tera",
        &COMPOSE.replace("IMAGE", image),
    );
    write_agent(&p);
    p
}

fn check_fails_with(p: &Project, wants: &[&str]) {
    p.fails(&["check", "profiles/s.toml"]).stderr_has(wants);
}

/// The test registry (Debian's docker-registry on loopback).
pub fn registry() -> TestRegistry {
    require_tool("docker-registry", "docker-registry");
    TestRegistry::start().unwrap_or_else(|e| panic!("starting docker-registry: {e:#}"))
}

#[test]
fn stack_errors_are_located() {
    let p = project("127.0.0.1:5000/Web:1");
    check_fails_with(
        &p,
        &[
            "profiles/s.toml:11:11:",
            "image reference `127.0.0.1:5000/Web:1`",
        ],
    );

    let p = project("127.0.0.1:5000/web:1");
    let text = p.read("profiles/s.toml");
    p.write(
        "profiles/s.toml",
        &text.replace("http = ", "tcp = \"127.0.0.1:1\"\nhttp = "),
    );
    check_fails_with(
        &p,
        &["profiles/s.toml:15:11:", "exactly one of `http` and `tcp`"],
    );

    // `reason` explains a TCP probe only, and says something.
    p.write(
        "profiles/s.toml",
        &text.replace("http = ", "reason = \"none\"\nhttp = "),
    );
    check_fails_with(
        &p,
        &["profiles/s.toml:16:10:", "`reason` explains a `tcp` probe"],
    );
    p.write(
        "profiles/s.toml",
        &text.replace(
            "http = \"http://127.0.0.1:8080/\"",
            "tcp = \"127.0.0.1:8080\"\nreason = \" \"",
        ),
    );
    check_fails_with(&p, &["profiles/s.toml:17:10:", "`reason` is empty"]);

    p.write(
        "profiles/s.toml",
        &text.replace("web/compose.yaml.tera", "web/nope.yaml"),
    );
    check_fails_with(
        &p,
        &[
            "profiles/s.toml:10:11:",
            "compose file `web/nope.yaml` not found",
        ],
    );

    p.write(
        "profiles/s.toml",
        &text.replace(DOCKER, "packages = [\"docker.io\"]\n"),
    );
    check_fails_with(&p, &["lack docker-cli, docker-compose"]);

    p.write(
        "profiles/s.toml",
        &text.replace("name = \"web\"", "name = \"Web Stack\""),
    );
    check_fails_with(&p, &["profiles/s.toml:9:8:", "stack name `Web Stack`"]);
}

#[test]
fn plan_lists_stack_images_and_whether_they_are_locked() {
    let p = project("127.0.0.1:5000/web:1");
    p.ok(&["plan", "profiles/s.toml"])
        .stdout_has(&["image 127.0.0.1:5000/web:1 -> NOT LOCKED", "containers"]);
    // The compose template is the stack's, not an overlay file.
    let plan = p.ok(&["plan", "--json", "profiles/s.toml"]).json();
    assert_eq!(plan["overlay_files"].as_array().unwrap().len(), 0, "{plan}");
    assert_eq!(
        plan["profile"]["stacks"][0]["probes"][0]["check"]["http"],
        "http://127.0.0.1:8080/"
    );
}

#[test]
fn lock_of_a_missing_image_fails_naming_it() {
    let reg = registry();
    let image = format!("{}/absent:1", reg.addr);
    let p = project(&image);
    p.fails(&["lock", "profiles/s.toml"])
        .stderr_has(&[&format!("image {image}"), "not found"]);
    assert!(!p.path("profiles/s.lock.toml").exists());
}

const BUILD: &[&str] = &[
    "build",
    "profiles/s.toml",
    "--output",
    "out",
    "--quiet",
    "--agent",
    "agent",
];

/// [`BUILD`] with the cache `cache` and `extra` arguments.
fn build(p: &Project, cache: &str, extra: &[&str]) -> Cli {
    p.cmd(&[BUILD, &["--cache-dir", cache], extra].concat())
}

/// The root filesystem of the built out/s.img.
fn root_fs(p: &Project) -> Ext4 {
    Ext4::root_of(&p.path("out/s.img"), p.root())
}

#[test]
fn locked_build_bakes_images_ignores_moved_tags_and_builds_offline() {
    require_root();
    let reg = registry();
    let image = format!("{}/team/web:1", reg.addr);
    let first = busybox_httpd_image("amd64", Path::new("/bin/busybox"), "first", 8080).unwrap();
    let locked = reg.push_image("team/web", Some("1"), &first).unwrap();
    let p = project(&image);
    install_fake_rootfs(&p, "profiles/s.toml");

    p.ok(&["lock", "profiles/s.toml"]);
    let lock = p.read("profiles/s.lock.toml");
    assert!(lock.contains(&format!("digest = \"{locked}\"")), "{lock}");
    assert!(lock.contains("platform = \"linux/amd64\""), "{lock}");

    // The tag moves after locking: the build still bakes the locked image.
    let second = busybox_httpd_image("amd64", Path::new("/bin/busybox"), "second", 8080).unwrap();
    let moved = reg.push_image("team/web", Some("1"), &second).unwrap();
    assert_ne!(moved, locked);
    build(&p, "cache", &[]).ok();

    let root = root_fs(&p);
    let manifest = StacksManifest::from_toml(&root.text("/etc/nodeforge/stacks.toml")).unwrap();
    let st = &manifest.stacks[0];
    assert_eq!(st.name, "web");
    assert_eq!(st.health_timeout_secs, 90);
    assert_eq!(st.probes[0].http.as_deref(), Some("http://127.0.0.1:8080/"));
    assert_eq!(st.images[0].digest, locked.to_string());
    assert_eq!(st.images[0].tag, image);
    let compose = root.text(&st.compose);
    assert!(
        compose.contains(&format!("image: {image}\n    pull_policy: never")),
        "{compose}"
    );
    assert!(compose.contains("# web on s"), "{compose}");
    let env = root.file(st.env_file.as_deref().unwrap());
    assert_eq!(env, b"GREETING='hello $there'\n");

    // The image is in the engine's own store, read back from the ext4:
    // tagged, its config byte for byte, its layer unpacked, and the
    // layer's exact bytes recoverable from the tar-split and the files.
    let docker = "/var/lib/docker/image/overlay2";
    let repos: serde_json::Value =
        serde_json::from_str(&root.text(&format!("{docker}/repositories.json"))).unwrap();
    let tagged = &repos["Repositories"][format!("{}/team/web", reg.addr)];
    assert_eq!(
        tagged[image.as_str()],
        st.images[0].image_id.as_str(),
        "{repos:#}"
    );
    assert_eq!(
        tagged[format!("{}/team/web@{locked}", reg.addr)],
        st.images[0].image_id.as_str()
    );
    let image_id = nodeforge::oci::Digest::parse(&st.images[0].image_id).unwrap();
    let config = root.file(&format!(
        "{docker}/imagedb/content/sha256/{}",
        image_id.hex()
    ));
    assert_eq!(nodeforge::oci::Digest::of(&config), image_id);
    let config: serde_json::Value = serde_json::from_slice(&config).unwrap();
    assert_eq!(config["config"]["Labels"]["nodeforge.test"], "first");
    let chain = nodeforge::oci::Digest::of(&first.layers[0]);
    let layer = format!("{docker}/layerdb/sha256/{}", chain.hex());
    assert_eq!(root.text(&format!("{layer}/diff")), chain.to_string());
    let diff = format!(
        "/var/lib/docker/overlay2/{}/diff",
        root.text(&format!("{layer}/cache-id"))
    );
    let split = root.file(&format!("{layer}/tar-split.json.gz"));
    let rebuilt = nodeforge::oci::unpack::reassemble(&split[..], |name| {
        Ok(root.file(&format!("{diff}/{name}")))
    })
    .unwrap();
    assert!(
        rebuilt == first.layers[0],
        "the layer reassembles byte for byte"
    );
    let built: serde_json::Value = serde_json::from_str(&p.read("out/s.manifest.json")).unwrap();
    assert_eq!(
        built["facts"]["containers"]["images"][0]["digest"],
        locked.to_string()
    );

    // Editing the compose file re-runs only the steps from `stacks` on:
    // the rootfs, the earlier steps' layers and the engine's store (the
    // `containers` layer) are reused.
    p.write(
        "stacks/web/compose.yaml.tera",
        &COMPOSE
            .replace("IMAGE", &image)
            .replace("# {{ stack }}", "# edited {{ stack }}"),
    );
    let args: Vec<&str> = BUILD.iter().copied().filter(|a| *a != "--quiet").collect();
    let steps = p
        .ok(&[&args[..], &["--cache-dir", "cache", "--json"]].concat())
        .steps();
    // (This profile has no overlay files and no users: those steps skip.)
    steps.assert(&["rootfs", "system", "agent", "containers"], "reused");
    steps.assert(&["stacks"], "done");
    let compose = root_fs(&p).text(&st.compose);
    assert!(compose.contains("# edited web on s"), "{compose}");

    // No registry: --offline builds from the warm cache…
    drop(reg);
    // Without the image, the unchanged profile is built, not reused.
    fs::remove_file(p.path("out/s.img")).unwrap();
    build(&p, "cache", &["--offline"]).ok();
    assert!(p.path("out/s.img").is_file());
    // …and with a cold blob cache names what is missing, as does an online
    // build that cannot reach the registry.
    fs::create_dir_all(p.path("cache2")).unwrap();
    fs::rename(p.path("cache/rootfs"), p.path("cache2/rootfs")).unwrap();
    fs::remove_file(p.path("out/s.img")).unwrap();
    build(&p, "cache2", &["--offline"])
        .fails()
        .stderr_has(&[&format!(
            "manifest {locked} of image {image} is not in the blob cache"
        )]);
    build(&p, "cache2", &[])
        .fails()
        .stderr_has(&[&format!("image {image}: registry at"), "unreachable"]);
}

#[test]
fn unlocked_or_mismatched_images_fail_the_build_naming_them() {
    require_root();
    let pinned = format!("127.0.0.1:5000/web:1@sha256:{}", "1".repeat(64));
    let p = project(&pinned);
    install_fake_rootfs(&p, "profiles/s.toml");
    let out = build(&p, "cache", &[]).fails();
    // Refused before any step runs, with the command to run.
    assert!(!out.stderr().contains("build step"), "{}", out.report());
    out.stderr_has(&[
        "the profile's stacks name 1 container images but it has no lock file",
        "run `nodeforge lock profiles/s.toml` (with `--mirror REGISTRY=URL`",
    ]);
    p.write(
        "profiles/s.lock.toml",
        "version = 1\narch = \"amd64\"\nimages = []\n",
    );
    build(&p, "cache", &[])
        .fails()
        .stderr_has(&[&format!("image {pinned} is not in the lock file")]);

    p.write(
        "profiles/s.lock.toml",
        &format!(
            "version = 1\narch = \"amd64\"\n[[images]]\nreference = \"{pinned}\"\ndigest = \"sha256:{}\"\nplatform = \"linux/amd64\"\n",
            "2".repeat(64)
        ),
    );
    build(&p, "cache", &[]).fails().stderr_has(&[
        &format!("image {pinned}: its digest sha256:1111"),
        "does not match the lock file",
    ]);
}

#[test]
fn secrets_are_names_only_and_excluded_stacks_must_exist() {
    let p = project("127.0.0.1:5000/web:1");
    let text = p.read("profiles/s.toml");
    p.write(
        "profiles/s.toml",
        &text.replace(
            "health_timeout_secs = 90\n",
            "health_timeout_secs = 90\nsecrets = [\"DB_PASSWORD\", \"GREETING\", \"bad-name\", \"DB_PASSWORD\"]\n",
        ),
    );
    check_fails_with(
        &p,
        &[
            "`GREETING` is both a secret and an env value",
            "secret name `bad-name` is not valid",
            "secret `DB_PASSWORD` is listed twice",
        ],
    );

    p.write(
        "profiles/s.toml",
        &text.replace(
            "health_timeout_secs = 90\n",
            "health_timeout_secs = 90\nsecrets = [\"DB_PASSWORD\"]\n",
        ),
    );
    p.ok(&["plan", "profiles/s.toml"])
        .stdout_has(&["(1 images, 1 probes, 1 secrets,"]);

    p.write(
        "profiles/t.toml",
        "extends = \"s.toml\"\nname = \"t\"\nexclude_stacks = [\"web\", \"nope\"]\n",
    );
    p.fails(&["check", "profiles/t.toml"])
        .stderr_has(&["exclude_stacks names `nope`, which no profile this one extends declares"]);
    p.write(
        "profiles/t.toml",
        "extends = \"s.toml\"\nname = \"t\"\nexclude_stacks = [\"web\"]\n",
    );
    let out = p.ok(&["plan", "profiles/t.toml"]);
    // No stacks section (the `stacks` step line is indented).
    assert!(
        !out.stdout().lines().any(|l| l.starts_with("stacks ")),
        "{}",
        out.report()
    );
}

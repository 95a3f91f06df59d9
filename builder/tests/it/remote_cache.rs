//! The build cache shared through a registry (`--cache-to`, `--cache-from`)
//! against the real `docker-registry` on 127.0.0.1: machine A builds and
//! pushes; machine B, with an empty cache and a bootstrap that would fail,
//! takes the rootfs and every layer from the registry (its steps say
//! `reused`, from the remote cache) and makes the same image. A cache that
//! does not answer is a warning and a local build. Container images'
//! blobs come from it when their own registry is gone.

use std::path::Path;

use nodeforge::oci::fixture::{busybox_httpd_image, TestRegistry};

use crate::support::fake::{
    build_args, fake_tool, install_fake_rootfs, write_agent, x_project, TEST_EPOCH,
};
use crate::support::require::require_tool;
use crate::support::{require_root, Project, Run};

fn build(p: &Project, extra: &[&str], bin: Option<&std::path::Path>) -> Run {
    let mut args = build_args("profiles/x.toml", &["--json"]);
    args.extend_from_slice(extra);
    let mut cmd = p.cmd(&args).env("SOURCE_DATE_EPOCH", TEST_EPOCH);
    if let Some(bin) = bin {
        cmd = cmd.path_prepend(bin);
    }
    cmd.ok()
}

/// Machine B: the same project, an empty cache, and an `mmdebstrap` that
/// fails, so a rootfs can only come from the registry.
fn machine_b(a: &Project) -> (Project, std::path::PathBuf) {
    let b = Project::new();
    b.write("profiles/x.toml", &a.read("profiles/x.toml"));
    write_agent(&b);
    let bin = fake_tool(
        &b,
        "mmdebstrap",
        "echo 'bootstrapping: the remote cache was not used' >&2; exit 1",
    );
    (b, bin)
}

#[test]
fn an_empty_machine_builds_the_same_image_from_the_registry_cache() {
    require_root();
    require_tool("docker-registry", "docker-registry");
    let registry = TestRegistry::start().expect("starting docker-registry");
    let cache = format!("oci://{}/nodeforge-cache", registry.addr);

    let a = x_project();
    let built_a = build(&a, &["--cache-to", &cache], None);
    let sha_a = a.read("out/x.img.sha256");

    let (b, bin) = machine_b(&a);
    let built_b = build(&b, &["--cache-from", &cache], Some(&bin));
    let steps = built_b.steps();
    steps.assert(
        &["rootfs", "system", "overlays", "users", "agent"],
        "reused",
    );
    let text = built_b.stdout();
    assert!(
        text.contains(&format!("from the remote cache {cache}")),
        "{text}"
    );
    assert_eq!(b.read("out/x.img.sha256"), sha_a, "A: {}", built_a.stdout());

    // Pushed again from a warm cache: nothing fails, the same entries.
    build(&a, &["--cache-to", &cache], None);
}

#[test]
fn a_cache_that_does_not_answer_is_a_warning_and_a_local_build() {
    require_root();
    let a = x_project();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|l| l.port())
        .unwrap();
    let dead = format!("oci://127.0.0.1:{port}/nodeforge-cache");
    let run = build(&a, &["--cache-from", &dead, "--cache-to", &dead], None);
    run.steps()
        .assert(&["system", "overlays", "users", "agent"], "done");
    let err = run.stderr();
    // One warning for each direction, then the build goes on without it.
    assert_eq!(
        err.matches(&format!("warning: the remote cache {dead} gave no layer"))
            .count(),
        1,
        "{err}"
    );
    assert_eq!(
        err.matches(&format!(
            "warning: the remote cache {dead} did not take rootfs"
        ))
        .count(),
        1,
        "{err}"
    );
    assert!(
        err.contains("building it here") && err.contains("unreachable"),
        "{err}"
    );
}

#[test]
fn a_cache_reference_must_name_a_repository() {
    let a = Project::new();
    a.write("profiles/x.toml", "name = \"x\"\nhardware = \"pc\"\n");
    a.fails(&[
        "build",
        "profiles/x.toml",
        "--cache-from",
        "oci://127.0.0.1:5000/cache:latest",
    ])
    .stderr_has(&["--cache-from oci://127.0.0.1:5000/cache:latest: name a repository"]);
}

/// Container images' blobs travel through the registry cache too: machine
/// B (another hostname, so its `containers` layer is not A's; an empty
/// cache) bakes the locked image with the image's own registry gone.
#[test]
fn container_blobs_come_from_the_registry_cache_when_their_registry_is_gone() {
    require_root();
    let source = crate::cli_stacks::registry();
    let cache_registry = crate::cli_stacks::registry();
    let cache = format!("oci://{}/nodeforge-cache", cache_registry.addr);
    let image = format!("{}/team/web:1", source.addr);
    let built = busybox_httpd_image("amd64", Path::new("/bin/busybox"), "cached", 8080).unwrap();
    let locked = source.push_image("team/web", Some("1"), &built).unwrap();
    // The manifest, the config and each layer.
    let blobs = 2 + built.layers.len();

    let a = crate::cli_stacks::project(&image);
    install_fake_rootfs(&a, "profiles/s.toml");
    a.ok(&["lock", "profiles/s.toml"]);
    let facts = |p: &Project| -> serde_json::Value {
        let m: serde_json::Value = serde_json::from_str(&p.read("out/s.manifest.json")).unwrap();
        m["facts"]["containers"].clone()
    };
    let run_a = build_s(&a, &["--cache-to", &cache]);
    run_a.steps().assert(&["containers"], "done");
    assert_eq!(facts(&a)["blobs_from_remote_cache"], 0);

    let b = Project::new();
    for f in ["profiles/s.lock.toml", "stacks/web/compose.yaml.tera"] {
        b.write(f, &a.read(f));
    }
    b.write(
        "profiles/s.toml",
        &a.read("profiles/s.toml")
            .replace("name = \"s\"\n", "name = \"s\"\nhostname = \"b\"\n"),
    );
    write_agent(&b);
    install_fake_rootfs(&b, "profiles/s.toml");
    drop(source);
    let run_b = build_s(&b, &["--cache-from", &cache]);
    run_b.steps().assert(&["containers"], "done");
    assert!(!run_b.stderr().contains("warning"), "{}", run_b.stderr());
    let b_facts = facts(&b);
    assert_eq!(b_facts["blobs_from_remote_cache"], blobs, "{b_facts:#}");
    assert_eq!(b_facts["images"][0]["digest"], locked.to_string());
}

/// `profiles/s.toml` built with the cache `cache` and `extra` arguments.
fn build_s(p: &Project, extra: &[&str]) -> Run {
    let args = [
        &[
            "build",
            "profiles/s.toml",
            "--output",
            "out",
            "--agent",
            "agent",
            "--cache-dir",
            "cache",
            "--json",
        ][..],
        extra,
    ]
    .concat();
    p.cmd(&args).env("SOURCE_DATE_EPOCH", TEST_EPOCH).ok()
}

//! The build cache shared through a registry (`--cache-to`, `--cache-from`)
//! against the real `docker-registry` on 127.0.0.1: machine A builds and
//! pushes; machine B, with an empty cache and a bootstrap that would fail,
//! takes the rootfs and every layer from the registry (its steps say
//! `reused`, from the remote cache) and makes the same image. A cache that
//! does not answer is a warning and a local build.

use nodeforge::oci::fixture::TestRegistry;

use crate::support::fake::{build_args, fake_tool, write_agent, x_project, TEST_EPOCH};
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

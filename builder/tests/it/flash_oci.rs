//! `nodeforge push` then `nodeforge flash oci://…@sha256:…`, against the
//! real `docker-registry` (Debian's distribution) on 127.0.0.1: the file
//! flashed from the registry is the file flashed from the build; the push
//! is deterministic; a tag alone is refused; a blob damaged in the
//! registry's storage is refused, naming it.

use nodeforge::oci::artifact::DISK_IMAGE_ZSTD;
use nodeforge::oci::fixture::TestRegistry;
use nodeforge::oci::Digest;

use crate::support::require::require_tool;
use crate::support::scratch::standard_image_with_bmap;
use crate::support::{read_bytes, Project};

/// A project holding a build directory `out/` with node.img, its bmap and
/// a build manifest, and a registry.
fn setup() -> (Project, TestRegistry) {
    require_tool("docker-registry", "docker-registry");
    let p = Project::empty();
    let (dir, image, _) = standard_image_with_bmap();
    for name in ["node.img", "node.img.bmap"] {
        let from = dir.path().join(name);
        std::fs::create_dir_all(p.path("out")).unwrap();
        std::fs::copy(&from, p.path(&format!("out/{name}")))
            .unwrap_or_else(|e| panic!("copying {}: {e}", from.display()));
    }
    drop(image);
    p.write("out/node.manifest.json", "{\"name\":\"node\"}\n");
    let registry = TestRegistry::start().expect("starting docker-registry");
    (p, registry)
}

fn push(p: &Project, registry: &TestRegistry) -> String {
    let run = p.ok(&[
        "push",
        "out",
        &format!("oci://{}/fleet/node:1", registry.addr),
    ]);
    let pinned = run.stdout().trim().to_owned();
    assert!(
        pinned.starts_with(&format!("oci://{}/fleet/node@sha256:", registry.addr)),
        "{pinned}"
    );
    pinned
}

#[test]
fn a_pushed_build_flashes_byte_for_byte_like_the_local_one() {
    let (p, registry) = setup();
    let pinned = push(&p, &registry);
    // The same build pushed again is the same artifact.
    assert_eq!(push(&p, &registry), pinned);

    p.ok(&["flash", "out/node.img", "local.img", "--yes", "--quiet"]);
    p.ok(&["flash", &pinned, "remote.img", "--yes", "--quiet"]);
    let (local, remote) = (
        read_bytes(&p.path("local.img")),
        read_bytes(&p.path("remote.img")),
    );
    assert_eq!(local.len(), remote.len());
    assert!(
        local == remote,
        "the file flashed from the registry differs"
    );

    // A tag can move: flashing wants the digest push printed.
    p.fails(&[
        "flash",
        &format!("oci://{}/fleet/node:1", registry.addr),
        "t.img",
        "--yes",
    ])
    .stderr_has(&["is not pinned", "oci://…@sha256:…"]);
}

#[test]
fn a_blob_damaged_in_the_registry_is_refused_naming_it() {
    let (p, registry) = setup();
    let pinned = push(&p, &registry);
    let manifest_digest = Digest::parse(pinned.rsplit_once('@').unwrap().1).unwrap();
    let manifest: serde_json::Value =
        serde_json::from_slice(&read_bytes(&registry.blob_path(&manifest_digest))).unwrap();
    let image_blob = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["mediaType"] == DISK_IMAGE_ZSTD)
        .and_then(|l| l["digest"].as_str())
        .map(|d| Digest::parse(d).unwrap())
        .expect("the artifact has its image layer");
    let path = registry.blob_path(&image_blob);
    let mut data = read_bytes(&path);
    let middle = data.len() / 2;
    data[middle] ^= 0xff;
    std::fs::write(&path, &data).unwrap();

    let run = p.fails(&["flash", &pinned, "t.img", "--yes", "--quiet"]);
    eprintln!("{}", run.stderr());
    run.stderr_has(&[&format!("blob {image_blob} of {pinned}")]);
}

#[test]
fn push_errors_name_what_to_fix() {
    let (p, registry) = setup();
    p.fails(&[
        "push",
        "nowhere",
        &format!("oci://{}/fleet/node:1", registry.addr),
    ])
    .stderr_has(&["listing build directory nowhere"]);
    p.fails(&["push", "out", "oci://node:1"])
        .stderr_has(&["names no registry host"]);
    // A registry that does not answer.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap();
    p.fails(&[
        "push",
        "out",
        &format!("oci://127.0.0.1:{port}/fleet/node:1"),
    ])
    .stderr_has(&["unreachable"]);
}

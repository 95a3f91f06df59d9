//! `nodeforge push` then `nodeforge flash oci://…@sha256:…`, against the
//! real `docker-registry` (Debian's distribution) on 127.0.0.1: the file
//! flashed from the registry is the file flashed from the build; the push
//! is deterministic; a tag alone is refused; a blob damaged in the
//! registry's storage is refused, naming it; a registry that wants a
//! login gets the credentials `docker login` keeps, from a file, never the
//! command line.

use nodeforge::oci::artifact::DISK_IMAGE_ZSTD;
use nodeforge::oci::fixture::TestRegistry;
use nodeforge::oci::Digest;

use crate::support::require::require_tool;
use crate::support::scratch::standard_image_with_bmap;
use crate::support::serve::{write_fleet, ServeRun};
use crate::support::{read_bytes, Project};

/// A project holding a build directory `out/` with node.img, its bmap and
/// a build manifest, and a registry.
fn setup() -> (Project, TestRegistry) {
    require_tool("docker-registry", "docker-registry");
    let p = build_dir();
    let registry = TestRegistry::start().expect("starting docker-registry");
    (p, registry)
}

fn build_dir() -> Project {
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
    p
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

#[test]
fn a_registry_that_wants_a_login_gets_docker_logins_credentials() {
    require_tool("docker-registry", "docker-registry");
    require_tool("htpasswd", "apache2-utils");
    let p = build_dir();
    let registry =
        TestRegistry::start_with_login("ci", "push-s3cret").expect("starting docker-registry");
    let target = format!("oci://{}/fleet/node:1", registry.addr);

    // No credentials: refused, saying how to give them.
    let empty = p.path("no-docker-config");
    std::fs::create_dir_all(&empty).unwrap();
    p.cmd(&["push", "out", &target])
        .env("DOCKER_CONFIG", &empty)
        .fails()
        .stderr_has(&["HTTP 401", &format!("docker login {}", registry.addr)]);

    // `docker login`'s file, given as --registry-auth-file.
    use base64::Engine as _;
    let auth = base64::engine::general_purpose::STANDARD.encode("ci:push-s3cret");
    let file = p.write(
        "auth.json",
        &format!(
            "{{\"auths\": {{\"{}\": {{\"auth\": \"{auth}\"}}}}}}",
            registry.addr
        ),
    );
    let file = file.to_string_lossy().into_owned();
    let pinned = p
        .cmd(&["push", "out", &target, "--registry-auth-file", &file])
        .env("DOCKER_CONFIG", &empty)
        .ok()
        .stdout()
        .trim()
        .to_owned();

    // flash reads the Docker config, as docker does.
    let config = p.path("docker-config");
    std::fs::create_dir_all(&config).unwrap();
    std::fs::copy(&file, config.join("config.json")).unwrap();
    p.cmd(&["flash", &pinned, "remote.img", "--yes", "--quiet"])
        .env("DOCKER_CONFIG", &config)
        .ok();
    p.ok(&["flash", "out/node.img", "local.img", "--yes", "--quiet"]);
    assert!(read_bytes(&p.path("local.img")) == read_bytes(&p.path("remote.img")));

    // A wrong password is refused, naming where it came from.
    let wrong = base64::engine::general_purpose::STANDARD.encode("ci:wrong");
    std::fs::write(
        config.join("config.json"),
        format!(
            "{{\"auths\": {{\"{}\": {{\"auth\": \"{wrong}\"}}}}}}",
            registry.addr
        ),
    )
    .unwrap();
    p.cmd(&["flash", &pinned, "again.img", "--yes", "--quiet"])
        .env("DOCKER_CONFIG", &config)
        .fails()
        .stderr_has(&["were refused", "config.json"]);
}

/// `customize oci://…@sha256:… -o OUT` fetches the build into OUT (with
/// its bmap beside it) and stamps it: the same file as customizing the
/// local image.
#[test]
fn customize_fetches_a_pushed_build_and_stamps_it() {
    require_tool("docker-registry", "docker-registry");
    let p = Project::empty();
    let img = crate::support::scratch::esp_disk_image(p.root());
    std::fs::create_dir_all(p.path("out")).unwrap();
    std::fs::copy(&img, p.path("out/node.img")).unwrap();
    p.ok(&["bmap", "out/node.img"]);
    let registry = TestRegistry::start().expect("starting docker-registry");
    let pinned = push(&p, &registry);

    // The fetched image is the pushed one, byte for byte, and sparse.
    let client = nodeforge::oci::client::Client::new().unwrap();
    nodeforge::oci::artifact::pull_image(&client, &pinned, &p.path("pulled.img")).unwrap();
    assert!(read_bytes(&p.path("pulled.img")) == read_bytes(&p.path("out/node.img")));
    use std::os::unix::fs::MetadataExt;
    let pulled = std::fs::metadata(p.path("pulled.img")).unwrap();
    assert!(
        pulled.blocks() * 512 < pulled.len() / 2,
        "not sparse: {pulled:?}"
    );

    // customize fetches the same way, then stamps (FAT timestamps follow
    // the clock, so the seed is read back rather than the bytes compared).
    let stamp = ["--hostname", "sentinel-7", "--tag", "tag:edge"];
    p.ok(&[&["customize", &pinned, "-o", "fetched.img"][..], &stamp].concat());
    assert_eq!(
        read_bytes(&p.path("fetched.img.bmap")),
        read_bytes(&p.path("out/node.img.bmap"))
    );
    let seed = nodeforge::seed::read_seed(&p.path("fetched.img"))
        .unwrap()
        .expect("a seed");
    assert_eq!(seed.hostname.as_deref(), Some("sentinel-7"));

    p.fails(&[&["customize", &pinned][..], &stamp].concat())
        .stderr_has(&["is in a registry: give -o OUT.img"]);
}

/// `serve --artifacts oci://…@sha256:…`: the pushed build's netboot files
/// are fetched into the cache and served as from a build directory.
#[test]
fn serve_fetches_a_pushed_build_and_serves_its_netboot_files() {
    require_tool("docker-registry", "docker-registry");
    let p = Project::empty();
    let (dir, image, _) = standard_image_with_bmap();
    std::fs::create_dir_all(p.path("out")).unwrap();
    std::fs::copy(&image, p.path("out/web.img")).unwrap();
    std::fs::copy(dir.path().join("node.img.bmap"), p.path("out/web.img.bmap")).unwrap();
    let squashfs: Vec<u8> = (0..100_000u32).map(|i| (i % 253) as u8).collect();
    std::fs::write(p.path("out/web.squashfs"), &squashfs).unwrap();
    p.write("out/web.vmlinuz", "kernel");
    p.write("out/web.initrd", "initrd");
    p.write("out/web.boot.ipxe", "#!ipxe\nboot\n");
    let registry = TestRegistry::start().expect("starting docker-registry");
    let pinned = p
        .ok(&[
            "push",
            "out",
            &format!("oci://{}/fleet/web:1", registry.addr),
        ])
        .stdout()
        .trim()
        .to_owned();
    write_fleet(&p);
    let serve = ServeRun::start(&p, &pinned, &[("NODEFORGE_CACHE_DIR", p.path("cache"))]);
    let raw = serve.get("/nodes/52-54-00-12-34-56/web.squashfs");
    drop(serve);
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    assert!(
        raw.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&raw[..end])
    );
    assert!(
        raw[end + 4..] == squashfs[..],
        "the served root is not the pushed one"
    );
    let fetched = std::fs::read_dir(p.path("cache/artifacts"))
        .unwrap()
        .count();
    assert_eq!(fetched, 1, "one fetched build in the cache");
}

/// An install-mode node with `install_from`: `serve`'s order names the
/// pushed build and the URL the machine reaches its registry at (here the
/// reference's host does not resolve; the mirror is the registry), and
/// flashing what the order says, as `netinstall` does, gives the image
/// flashed from the build directory, byte for byte.
#[test]
fn an_install_order_names_the_pushed_build_and_its_mirror() {
    let (p, registry) = setup();
    let pinned = push(&p, &registry);
    let unresolvable = pinned.replace(&registry.addr, "registry.invalid:5000");
    // The netboot files serve hands the machine before it installs.
    for (file, text) in [
        ("vmlinuz", "kernel"),
        ("initrd", "initrd"),
        ("squashfs", "root"),
    ] {
        p.write(&format!("out/node.{file}"), text);
    }
    p.write("out/node.boot.ipxe", "#!ipxe\nboot\n");
    p.write(
        "fleet.toml",
        &format!(
            "[nodes.web-1]\nmac = \"52:54:00:12:34:56\"\nartifacts = \"node\"\nmode = \"install\"\n\
             install_from = \"{unresolvable}\"\ninstall_mirror = \"http://{}\"\n",
            registry.addr
        ),
    );
    let serve = ServeRun::start(&p, "out", &[]);
    let raw = serve.get("/nodes/52-54-00-12-34-56/install.toml");
    drop(serve);
    let raw = String::from_utf8(raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let order: nodeforge::install::InstallOrder = toml::from_str(body).unwrap();
    assert_eq!(order.artifact.as_deref(), Some(unresolvable.as_str()));
    let mirror = order.mirror.expect("the order names the mirror");
    assert_eq!(
        mirror,
        format!("registry.invalid:5000=http://{}", registry.addr)
    );

    p.ok(&["flash", "out/node.img", "local.img", "--yes", "--quiet"]);
    // Without the mirror the reference's own host is asked, and fails.
    p.fails(&["flash", &unresolvable, "t.img", "--yes", "--quiet"])
        .stderr_has(&["registry.invalid"]);
    p.ok(&[
        "flash",
        &unresolvable,
        "installed.img",
        "--yes",
        "--quiet",
        "--mirror",
        &mirror,
    ]);
    assert!(
        read_bytes(&p.path("local.img")) == read_bytes(&p.path("installed.img")),
        "the image written from the registry differs from the build's"
    );
}

//! The client, lock and blob cache against a real registry (Debian's
//! docker-registry on loopback) and, for bearer auth, a small hand-written
//! server that demands a token.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::{Arc, Mutex};

use super::cache::BlobCache;
use super::client::{Client, RegistryError};
use super::fixture::{busybox_httpd_image, image_config, layer_tar, TestImage, TestRegistry};
use super::manifest::Manifest;
use super::{Digest, Platform, Reference};
use crate::profile::Arch;

const AMD64: Platform = Platform { arch: Arch::Amd64 };
const ARM64: Platform = Platform { arch: Arch::Arm64 };

fn small_image(arch: &str, label: &str) -> TestImage {
    let layer = layer_tar(&[("etc/label", 0o644, label.as_bytes())]).unwrap();
    TestImage {
        config: image_config(arch, std::slice::from_ref(&layer), &["/bin/true"], label),
        layers: vec![layer],
    }
}

fn reference(reg: &TestRegistry, rest: &str) -> Reference {
    Reference::parse(&format!("{}/{rest}", reg.addr)).unwrap()
}

/// Pushes an amd64 [`small_image`] as `repo:tag`; its manifest's digest.
fn push_small(reg: &TestRegistry, repo: &str, tag: &str, label: &str) -> Digest {
    reg.push_image(repo, Some(tag), &small_image("amd64", label))
        .unwrap()
}

/// A blob cache in a directory of its own (kept while the guard lives).
fn scratch_cache() -> (tempfile::TempDir, BlobCache) {
    let dir = tempfile::tempdir().unwrap();
    let cache = BlobCache::new(dir.path());
    (dir, cache)
}

#[test]
fn resolves_tags_and_picks_the_platform_from_an_index() {
    let reg = TestRegistry::start().unwrap();
    let single = push_small(&reg, "team/web", "1", "one");
    let (index, per_arch) = reg
        .push_index(
            "team/multi",
            "1",
            &[
                ("amd64", &small_image("amd64", "a")),
                ("arm64", &small_image("arm64", "b")),
            ],
        )
        .unwrap();
    let client = Client::new().unwrap();

    let r = client
        .resolve(&reference(&reg, "team/web:1"), AMD64)
        .unwrap();
    assert_eq!(r.digest, single);
    assert_eq!(r.index_digest, None);

    let amd = client
        .resolve(&reference(&reg, "team/multi:1"), AMD64)
        .unwrap();
    let arm = client
        .resolve(&reference(&reg, "team/multi:1"), ARM64)
        .unwrap();
    assert_eq!(amd.digest, per_arch[0]);
    assert_eq!(arm.digest, per_arch[1]);
    assert_eq!(amd.index_digest.as_ref(), Some(&index));
    assert_ne!(amd.manifest.config.digest, arm.manifest.config.digest);

    // Pinned by the index digest: still the platform's manifest.
    let pinned = client
        .resolve(&reference(&reg, &format!("team/multi@{index}")), ARM64)
        .unwrap();
    assert_eq!(pinned.digest, per_arch[1]);
}

#[test]
fn a_moved_tag_does_not_change_what_a_digest_fetches() {
    let reg = TestRegistry::start().unwrap();
    let first = push_small(&reg, "web", "1", "first");
    let second = push_small(&reg, "web", "1", "second");
    assert_ne!(first, second);
    let client = Client::new().unwrap();
    let image = reference(&reg, "web:1");
    assert_eq!(client.resolve(&image, AMD64).unwrap().digest, second);
    let (m, body, d) = client.manifest(&image, first.as_str()).unwrap();
    assert_eq!(d, first);
    assert_eq!(Digest::of(&body), first);
    let Manifest::Image(m) = m else {
        panic!("not an image manifest")
    };
    let (_dir, cache) = scratch_cache();
    let config = cache
        .fetch(&client, &image, &m.config.digest, Some(m.config.size))
        .unwrap();
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(config).unwrap()).unwrap();
    assert_eq!(config["config"]["Labels"]["nodeforge.test"], "first");
}

#[test]
fn missing_image_unreachable_registry_and_no_platform_name_the_image() {
    let reg = TestRegistry::start().unwrap();
    reg.push_index("armonly", "1", &[("arm64", &small_image("arm64", "x"))])
        .unwrap();
    let client = Client::new().unwrap();

    let err = client
        .resolve(&reference(&reg, "nothere:1"), AMD64)
        .unwrap_err();
    assert!(matches!(err, RegistryError::NotFound { .. }), "{err}");
    assert!(
        err.to_string().contains(&format!("{}/nothere:1", reg.addr)),
        "{err}"
    );

    let bad = format!("nothere@sha256:{}", "0".repeat(64));
    let err = client.resolve(&reference(&reg, &bad), AMD64).unwrap_err();
    assert!(err.to_string().contains("nothere@sha256:000"), "{err}");

    let err = client
        .resolve(&reference(&reg, "armonly:1"), AMD64)
        .unwrap_err();
    assert!(
        err.to_string().contains("no manifest for linux/amd64"),
        "{err}"
    );
    assert!(err.to_string().contains("armonly:1"), "{err}");

    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let gone = Reference::parse(&format!("127.0.0.1:{port}/web:1")).unwrap();
    let err = client.resolve(&gone, AMD64).unwrap_err();
    assert!(matches!(err, RegistryError::Unreachable { .. }), "{err}");
    assert!(
        err.to_string().contains(&format!("127.0.0.1:{port}/web:1")),
        "{err}"
    );
}

#[test]
fn blob_downloads_resume_with_a_range_and_corrupt_partials_are_dropped() {
    let reg = TestRegistry::start().unwrap();
    let bb = busybox_httpd_image("amd64", Path::new("/bin/busybox"), "hi", 8080).unwrap();
    let layer = &bb.layers[0];
    let d = reg.push_blob("web", layer).unwrap();
    let image = reference(&reg, "web:1");
    let client = Client::new().unwrap();
    let (dir, cache) = scratch_cache();
    let blobs = dir.path().join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let partial = blobs.join(format!(".{}.partial", d.hex()));

    // A wrong prefix: had the download restarted, the blob would be fine;
    // appending after it proves the Range request, and the check catches it.
    let mut wrong = layer[..layer.len() / 2].to_vec();
    wrong[0] ^= 0xff;
    std::fs::write(&partial, &wrong).unwrap();
    let err = cache
        .fetch(&client, &image, &d, Some(layer.len() as u64))
        .unwrap_err();
    let err = format!("{err:#}");
    assert!(
        err.contains("expected") && err.contains(d.as_str()),
        "{err}"
    );
    assert!(!partial.exists(), "a corrupt partial download was kept");
    assert!(cache.get(&d).is_none());

    // A right prefix continues to the whole blob.
    std::fs::write(&partial, &layer[..layer.len() / 3]).unwrap();
    let p = cache
        .fetch(&client, &image, &d, Some(layer.len() as u64))
        .unwrap();
    assert_eq!(std::fs::read(&p).unwrap(), *layer);
    assert!(!partial.exists());
    // Cached now: no registry needed.
    drop(reg);
    assert_eq!(cache.fetch(&client, &image, &d, None).unwrap(), p);
}

/// A registry that wants a bearer token from its own /token endpoint.
struct TokenServer {
    addr: String,
    requests: Arc<Mutex<Vec<String>>>,
}

fn token_server(manifest: Vec<u8>) -> TokenServer {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let requests = Arc::new(Mutex::new(Vec::new()));
    let (log, realm) = (requests.clone(), format!("http://{addr}/token"));
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            let mut first = String::new();
            reader.read_line(&mut first).unwrap();
            let mut auth = None;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap() == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("authorization: ") {
                    auth = Some(v.trim().to_owned());
                }
            }
            let path = first.split(' ').nth(1).unwrap_or("").to_owned();
            log.lock().unwrap().push(format!("{path} auth={auth:?}"));
            let (status, extra, body): (&str, String, Vec<u8>) = if path.starts_with("/token") {
                ("200 OK", String::new(), br#"{"token":"t0ken"}"#.to_vec())
            } else if auth.as_deref() != Some("bearer t0ken") {
                (
                    "401 Unauthorized",
                    format!(
                        "WWW-Authenticate: Bearer realm=\"{realm}\",service=\"test-registry\",scope=\"repository:priv/app:pull\"\r\n"
                    ),
                    b"{}".to_vec(),
                )
            } else if path.starts_with("/v2/priv/app/manifests/") {
                (
                    "200 OK",
                    "Content-Type: application/vnd.oci.image.manifest.v1+json\r\n".into(),
                    manifest.clone(),
                )
            } else {
                ("404 Not Found", String::new(), b"{}".to_vec())
            };
            let head = format!(
                "HTTP/1.1 {status}\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = conn
                .write_all(head.as_bytes())
                .and_then(|_| conn.write_all(&body));
        }
    });
    TokenServer { addr, requests }
}

#[test]
fn bearer_token_auth_follows_the_challenge() {
    let config = Digest::of(b"{}");
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": 2},
        "layers": [],
    }))
    .unwrap();
    let server = token_server(manifest.clone());
    let client = Client::new().unwrap();
    let image = Reference::parse(&format!("{}/priv/app:1", server.addr)).unwrap();
    let r = client.resolve(&image, AMD64).unwrap();
    assert_eq!(r.digest, Digest::of(&manifest));
    // The token is reused for the next request of the same repository.
    client.manifest(&image, r.digest.as_str()).unwrap();
    let reqs = server.requests.lock().unwrap().clone();
    assert_eq!(reqs.len(), 4, "{reqs:#?}");
    assert!(
        reqs[0].starts_with("/v2/priv/app/manifests/1 auth=None"),
        "{reqs:#?}"
    );
    assert!(reqs[1].starts_with("/token?"), "{reqs:#?}");
    assert!(
        reqs[1].contains("scope=repository%3Apriv%2Fapp%3Apull"),
        "{reqs:#?}"
    );
    assert!(reqs[1].contains("service=test-registry"), "{reqs:#?}");
    assert!(
        reqs[2].ends_with("auth=Some(\"bearer t0ken\")"),
        "{reqs:#?}"
    );
    assert!(
        reqs[3].ends_with("auth=Some(\"bearer t0ken\")"),
        "{reqs:#?}"
    );
}

#[test]
fn gzip_layers_are_fetched_as_served() {
    let reg = TestRegistry::start().unwrap();
    let image = small_image("amd64", "zipped");
    reg.push_image_gzip("zipped", Some("1"), &image).unwrap();
    let client = Client::new().unwrap();
    let r = reference(&reg, "zipped:1");
    let m = client.resolve(&r, AMD64).unwrap().manifest;
    let layer = &m.layers[0];
    assert_eq!(
        layer.media_type.as_deref(),
        Some(super::manifest::OCI_LAYER_TAR_GZIP)
    );
    let (_dir, cache) = scratch_cache();
    let p = cache
        .fetch(&client, &r, &layer.digest, Some(layer.size))
        .unwrap();
    let out = crate::exec::Cmd::new("gzip")
        .args(["-dc"])
        .arg(&p)
        .run()
        .unwrap();
    assert_eq!(out.stdout, image.layers[0]);
}

#[test]
fn lock_through_a_mirror_keeps_the_public_name_and_builds_fetch_from_it() {
    // The test registry plays a Docker Hub mirror: it serves the image
    // under the repository the public reference names.
    let reg = TestRegistry::start().unwrap();
    let digest = push_small(&reg, "library/redis", "7.4", "redis");
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("stacks/r")).unwrap();
    std::fs::write(
        dir.path().join("stacks/r/compose.yaml.tera"),
        "services: {}\n",
    )
    .unwrap();
    let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("../profiles/base.toml");
    let profile_path = dir.path().join("r.toml");
    std::fs::write(
        &profile_path,
        format!(
            "extends = \"{}\"\nname = \"r\"\npackages = [\"docker.io\", \"docker-cli\", \"docker-compose\"]\n\
             [[stacks]]\nname = \"r\"\ncompose = \"r/compose.yaml.tera\"\nimages = [\"redis:7.4\"]\n",
            base.display()
        ),
    )
    .unwrap();
    let profile = crate::profile::load(&profile_path).unwrap();
    let mirror = super::Mirror::parse(&format!("docker.io=http://{}", reg.addr)).unwrap();
    let client = Client::new()
        .unwrap()
        .with_mirrors(super::Mirrors::new([mirror.clone()]));
    let (lock, path) = super::lock::lock(&profile, &profile_path, &client).unwrap();
    assert_eq!(lock.images[0].reference, "redis:7.4");
    assert_eq!(lock.images[0].digest, digest);
    assert_eq!(lock.images[0].mirror.as_deref(), Some(mirror.url.as_str()));
    let text = std::fs::read_to_string(path).unwrap();
    assert!(
        text.contains(&format!("mirror = \"{}\"", mirror.url)),
        "{text}"
    );

    // The build's client routes by what the lock recorded.
    let locked: Vec<&super::lock::LockedImage> = lock.images.iter().collect();
    let build_client = Client::new()
        .unwrap()
        .with_mirrors(super::lock::mirrors(&locked).unwrap());
    let r = Reference::parse("redis:7.4").unwrap();
    assert_eq!(build_client.api_base(&r), format!("http://{}/v2", reg.addr));
    let (_, _, d) = build_client.manifest(&r, digest.as_str()).unwrap();
    assert_eq!(d, digest);
    // Without the mirror the public registry is asked, and named.
    assert_eq!(
        Client::new().unwrap().api_base(&r),
        "https://registry-1.docker.io/v2"
    );
}

/// Regression: builds sharing a cache downloaded the same blob into one
/// partial file at once (single_hosts builds two images side by side, and
/// their test images share Debian's layer), and one of them failed its
/// digest check or committed a torn file.
#[test]
fn concurrent_fetches_of_one_blob_all_get_it_whole() {
    let reg = TestRegistry::start().unwrap();
    // Large enough that the downloads overlap.
    let data: Vec<u8> = (0..24u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let layer = layer_tar(&[("srv/blob", 0o644, &data)]).unwrap();
    let image = TestImage {
        config: image_config("amd64", std::slice::from_ref(&layer), &["/bin/true"], "big"),
        layers: vec![layer.clone()],
    };
    reg.push_image("team/big", Some("1"), &image).unwrap();
    let image_ref = reference(&reg, "team/big:1");
    let digest = Digest::of(&layer);
    let (dir, _) = scratch_cache();
    std::thread::scope(|s| {
        let fetches: Vec<_> = (0..4)
            .map(|_| {
                s.spawn(|| {
                    let cache = BlobCache::new(dir.path());
                    cache.fetch(
                        &Client::new().unwrap(),
                        &image_ref,
                        &digest,
                        Some(layer.len() as u64),
                    )
                })
            })
            .collect();
        for f in fetches {
            let path = f.join().unwrap().unwrap_or_else(|e| panic!("{e:#}"));
            assert_eq!(std::fs::read(&path).unwrap(), layer);
        }
    });
    let leftovers: Vec<String> = std::fs::read_dir(dir.path().join("blobs/sha256"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".partial"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// A profile `m.toml` (on base.toml) in a scratch directory that bakes
/// `model`.
fn model_profile(
    model: &str,
) -> (
    tempfile::TempDir,
    std::path::PathBuf,
    crate::profile::Profile,
) {
    let dir = tempfile::tempdir().unwrap();
    let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("../profiles/base.toml");
    let path = dir.path().join("m.toml");
    let text = format!(
        "extends = \"{}\"\nname = \"m\"\n[[models]]\nname = \"{model}\"\n",
        base.display()
    );
    std::fs::write(&path, text).unwrap();
    let profile = crate::profile::load(&path).unwrap();
    (dir, path, profile)
}

/// A client that reaches Ollama's registry through `reg`, and the mirror.
fn ollama_mirror(reg: &TestRegistry) -> (Client, super::Mirror) {
    let mirror = super::Mirror::parse(&format!("registry.ollama.ai=http://{}", reg.addr)).unwrap();
    let client = Client::new()
        .unwrap()
        .with_mirrors(super::Mirrors::new([mirror.clone()]));
    (client, mirror)
}

#[test]
fn models_lock_through_a_mirror_of_ollamas_registry_and_bake_into_its_store() {
    // The test registry plays Ollama's registry: a stand-in model in its
    // manifest format under the name the profile gives.
    let reg = TestRegistry::start().unwrap();
    let digest = reg
        .push_ollama_model("library/llama3.2", "latest", b"GGUF stand-in weights")
        .unwrap();
    let (_dir, profile_path, profile) = model_profile("llama3.2");
    let (client, mirror) = ollama_mirror(&reg);
    let (lock, path) = super::lock::lock(&profile, &profile_path, &client).unwrap();
    assert!(lock.images.is_empty());
    assert_eq!(lock.models.len(), 1);
    assert_eq!(lock.models[0].name, "llama3.2");
    assert_eq!(lock.models[0].digest, digest);
    assert_eq!(lock.models[0].mirror.as_deref(), Some(mirror.url.as_str()));
    let reread = super::lock::LockFile::read(&path).unwrap().unwrap();
    assert_eq!(reread, lock);

    // Baked: the manifest's bytes under Ollama's path (their sha256 is
    // the locked digest, the ID `ollama list` shows) and every blob.
    let name = super::ollama::ModelName::parse("llama3.2").unwrap();
    let (_cache_dir, cache) = scratch_cache();
    let (m, body, _) = client.manifest(&name.reference(), digest.as_str()).unwrap();
    let Manifest::Image(m) = m else {
        panic!("a model's manifest is an image manifest")
    };
    for d in std::iter::once(&m.config).chain(&m.layers) {
        cache
            .fetch(&client, &name.reference(), &d.digest, Some(d.size))
            .unwrap();
    }
    let store = tempfile::tempdir().unwrap();
    let model = super::ollama::StoreModel {
        name: &name,
        manifest_bytes: &body,
        manifest: &m,
    };
    let written = super::ollama::write_store(store.path(), &[model], &cache).unwrap();
    let manifest_file = store
        .path()
        .join("manifests/registry.ollama.ai/library/llama3.2/latest");
    assert_eq!(Digest::of(&std::fs::read(&manifest_file).unwrap()), digest);
    let weights = m
        .layers
        .iter()
        .find(|l| l.media_type.as_deref() == Some(super::ollama::WEIGHTS_MEDIA_TYPE))
        .unwrap();
    let blob = store
        .path()
        .join(format!("blobs/sha256-{}", weights.digest.hex()));
    assert_eq!(std::fs::read(blob).unwrap(), b"GGUF stand-in weights");
    let blobs = std::fs::read_dir(store.path().join("blobs"))
        .unwrap()
        .count();
    assert_eq!(blobs, m.layers.len() + 1, "config and every layer");
    let total: u64 = m.layers.iter().map(|l| l.size).sum::<u64>() + m.config.size;
    assert_eq!(written, total + body.len() as u64);
}

#[test]
fn a_name_that_is_no_model_is_refused_when_locked() {
    // Under the model's name, Ollama's registry (here a mirror of it)
    // serves a container image: no weights layer, so no model.
    let reg = TestRegistry::start().unwrap();
    push_small(&reg, "library/tiny", "latest", "not a model");
    let (dir, profile_path, profile) = model_profile("tiny");
    let (client, _) = ollama_mirror(&reg);
    let err = super::lock::lock(&profile, &profile_path, &client).unwrap_err();
    let err = format!("{err:#}");
    assert!(
        err.contains("locking model tiny (registry.ollama.ai/library/tiny:latest)")
            && err.contains("is not an Ollama model"),
        "{err}"
    );
    assert!(!dir.path().join("m.lock.toml").exists());
}

use std::io::Write as _;

use super::*;
use crate::oci::fixture::{image_config, layer_tar};
use crate::oci::manifest::{Descriptor, OCI_LAYER_TAR, OCI_LAYER_TAR_GZIP};

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// An image of `layers` (the first gzip-compressed, the others plain) in
/// `cache`; returns its manifest and manifest digest.
fn cached_image(cache: &BlobCache, layers: &[Vec<u8>], label: &str) -> (ImageManifest, Digest) {
    let config = image_config("amd64", layers, &["/bin/sh"], label);
    let config_digest = Digest::of(&config);
    cache.put(&config_digest, &config).unwrap();
    let descriptors = layers
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let (blob, media) = match i {
                0 => (gzip(l), OCI_LAYER_TAR_GZIP),
                _ => (l.clone(), OCI_LAYER_TAR),
            };
            let d = Digest::of(&blob);
            cache.put(&d, &blob).unwrap();
            Descriptor {
                media_type: Some(media.into()),
                digest: d,
                size: blob.len() as u64,
                platform: None,
            }
        })
        .collect();
    let manifest = ImageManifest {
        schema_version: 2,
        media_type: None,
        config: Descriptor {
            media_type: None,
            digest: config_digest,
            size: config.len() as u64,
            platform: None,
        },
        layers: descriptors,
    };
    let body = serde_json::to_vec(&manifest).unwrap();
    (manifest, Digest::of(&body))
}

fn read(p: &Path) -> String {
    fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn two_images_sharing_a_base_layer_make_one_store_with_the_layer_once() {
    let dir = tempfile::tempdir().unwrap();
    let cache = BlobCache::new(&dir.path().join("cache"));
    let base = layer_tar(&[("bin/sh", 0o755, b"#!shell")]).unwrap();
    let app = layer_tar(&[("app/run", 0o755, b"run")]).unwrap();
    let web = layer_tar(&[("www/index.html", 0o644, b"hi")]).unwrap();
    let (m1, d1) = cached_image(&cache, &[base.clone(), app.clone()], "app");
    let (m2, d2) = cached_image(&cache, &[base.clone(), web.clone()], "web");
    let r1 = Reference::parse("postgres:16.4").unwrap();
    let r2 = Reference::parse("127.0.0.1:5000/team/web:1").unwrap();
    let root = dir.path().join("docker");
    let report = write_store(
        &root,
        &[
            StoreImage {
                reference: &r1,
                tag: "postgres:16.4",
                manifest_digest: &d1,
                manifest: &m1,
            },
            StoreImage {
                reference: &r2,
                tag: "127.0.0.1:5000/team/web:1",
                manifest_digest: &d2,
                manifest: &m2,
            },
        ],
        &cache,
    )
    .unwrap();
    assert_eq!((report.images, report.layers), (2, 3));
    assert_eq!(report.unpacked_bytes, 7 + 3 + 2);

    let diff = |l: &[u8]| Digest::of(l);
    let chains = chain_ids(&[diff(&base), diff(&app)]);
    assert_eq!(chains[0], diff(&base));
    let expected = Digest::of(format!("{} {}", diff(&base), diff(&app)).as_bytes());
    assert_eq!(chains[1], expected);

    let layerdb = root.join("image/overlay2/layerdb/sha256");
    let top = layerdb.join(chains[1].hex());
    assert_eq!(read(&top.join("diff")), diff(&app).to_string());
    assert_eq!(read(&top.join("parent")), chains[0].to_string());
    assert_eq!(read(&top.join("size")), "3");
    assert_eq!(read(&top.join("cache-id")), chains[1].hex());
    assert!(!layerdb.join(chains[0].hex()).join("parent").exists());
    assert_eq!(fs::read_dir(&layerdb).unwrap().count(), 3);

    let overlay = root.join("overlay2");
    let bottom = overlay.join(chains[0].hex());
    let link = read(&bottom.join("link"));
    assert_eq!(link.len(), 26);
    assert!(link
        .bytes()
        .all(|b| b.is_ascii_uppercase() || (b'2'..=b'7').contains(&b)));
    assert!(!bottom.join("lower").exists() && !bottom.join("work").exists());
    assert!(
        bottom.join("committed").exists(),
        "a layer with children is committed"
    );
    let top_dir = overlay.join(chains[1].hex());
    assert_eq!(read(&top_dir.join("lower")), format!("l/{link}"));
    assert!(top_dir.join("work").is_dir() && !top_dir.join("committed").exists());
    assert_eq!(
        read(&overlay.join("l").join(&link).join("bin/sh")),
        "#!shell",
        "the short link resolves to the layer's diff"
    );
    assert_eq!(read(&top_dir.join("diff/app/run")), "run");

    let repos: serde_json::Value =
        serde_json::from_str(&read(&root.join("image/overlay2/repositories.json"))).unwrap();
    let id1 = m1.config.digest.to_string();
    assert_eq!(
        repos["Repositories"]["postgres"]["postgres:16.4"],
        id1.as_str()
    );
    assert_eq!(
        repos["Repositories"]["postgres"][format!("postgres@{d1}")],
        id1.as_str()
    );
    assert_eq!(
        repos["Repositories"]["127.0.0.1:5000/team/web"]["127.0.0.1:5000/team/web:1"],
        m2.config.digest.to_string()
    );
    let content = root.join("image/overlay2/imagedb/content/sha256");
    assert_eq!(
        Digest::of(&fs::read(content.join(m1.config.digest.hex())).unwrap()),
        m1.config.digest,
        "configs are stored byte for byte"
    );

    let dist = root.join("image/overlay2/distribution");
    let base_blob = &m1.layers[0].digest;
    assert_eq!(
        read(&dist.join("diffid-by-digest/sha256").join(base_blob.hex())),
        diff(&base).to_string()
    );
    let sources: serde_json::Value = serde_json::from_str(&read(
        &dist
            .join("v2metadata-by-diffid/sha256")
            .join(diff(&base).hex()),
    ))
    .unwrap();
    let repos_of_base: Vec<&str> = sources
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["SourceRepository"].as_str().unwrap())
        .collect();
    assert_eq!(
        repos_of_base,
        ["127.0.0.1:5000/team/web", "docker.io/library/postgres"]
    );

    let e = write_store(&root, &[], &cache).unwrap_err();
    assert!(
        e.to_string().contains("already holds a Docker store"),
        "{e}"
    );
}

#[test]
fn a_layer_that_does_not_match_its_diff_id_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cache = BlobCache::new(&dir.path().join("cache"));
    let layer = layer_tar(&[("a", 0o644, b"a")]).unwrap();
    let (mut m, d) = cached_image(&cache, &[layer], "x");
    // Serve another layer under the manifest: the config's diff ID no
    // longer matches what unpacks.
    let other = gzip(&layer_tar(&[("b", 0o644, b"b")]).unwrap());
    m.layers[0].digest = Digest::of(&other);
    cache.put(&m.layers[0].digest, &other).unwrap();
    let r = Reference::parse("busybox:1").unwrap();
    let e = write_store(
        &dir.path().join("docker"),
        &[StoreImage {
            reference: &r,
            tag: "busybox:1",
            manifest_digest: &d,
            manifest: &m,
        }],
        &cache,
    )
    .unwrap_err();
    let e = format!("{e:#}");
    assert!(e.contains("but the image config says"), "{e}");
    assert!(e.contains("busybox"), "{e}");
}

#[test]
fn short_links_are_26_base32_characters_and_differ_per_layer() {
    let a = short_link(&Digest::of(b"a"));
    let b = short_link(&Digest::of(b"b"));
    assert_eq!((a.len(), b.len()), (26, 26));
    assert_ne!(a, b);
}

/// Everything about a tree but times (the build clamps those): path, type
/// and mode, owner, content or link target.
fn listing(root: &Path) -> Vec<String> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    crate::fsutil::walk_tree(root, |rel, m| {
        let p = root.join(rel);
        let what = if m.file_type().is_symlink() {
            fs::read_link(&p).unwrap().display().to_string()
        } else if m.is_file() {
            crate::fsutil::sha256_file(&p).unwrap()
        } else {
            String::new()
        };
        out.push(format!(
            "{} {:o} {}:{} {what}",
            rel.display(),
            m.mode(),
            m.uid(),
            m.gid()
        ));
    })
    .unwrap();
    out.sort();
    out
}

#[test]
fn the_same_images_give_the_same_store() {
    let dir = tempfile::tempdir().unwrap();
    let cache = BlobCache::new(&dir.path().join("cache"));
    let base = layer_tar(&[("bin/sh", 0o755, b"#!shell"), ("lib", 0o777, b"->usr/lib")]).unwrap();
    let app = layer_tar(&[("app/run", 0o755, b"run")]).unwrap();
    let (m, d) = cached_image(&cache, &[base, app], "app");
    let r = Reference::parse("ghcr.io/acme/app:2").unwrap();
    let image = [StoreImage {
        reference: &r,
        tag: "ghcr.io/acme/app:2",
        manifest_digest: &d,
        manifest: &m,
    }];
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    write_store(&a, &image, &cache).unwrap();
    write_store(&b, &image, &cache).unwrap();
    let (la, lb) = (listing(&a), listing(&b));
    assert!(la.len() > 20, "{la:#?}");
    assert_eq!(la, lb);
}

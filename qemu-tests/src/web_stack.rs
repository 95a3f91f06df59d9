//! The test-containers profile's one image (reproducible.rs):
//! a busybox httpd image pushed, gzip-layered as real registries serve
//! images, to a docker-registry on 127.0.0.1:55123, and the profile locked
//! against it.

use std::path::Path;

use nodeforge::oci::fixture::{busybox_httpd_image, TestRegistry};
use nodeforge::oci::{Client, Digest};

use crate::workspace_root;

pub const PROFILE: &str = "qemu-tests/profiles/test-containers.toml";
/// The registry address the profile's image reference names.
pub const REGISTRY_PORT: u16 = 55123;
/// What the image's httpd serves at `/`.
pub const INDEX: &str = "hello from a baked nodeforge stack\n";
/// The port it listens on inside the guest.
pub const PORT: u16 = 8080;

/// Starts the registry, pushes the image and locks the profile; the
/// registry serves as long as the returned value lives.
pub fn serve_and_lock() -> (TestRegistry, Digest) {
    let registry = TestRegistry::start_on(REGISTRY_PORT)
        .unwrap_or_else(|e| panic!("starting docker-registry on 127.0.0.1:{REGISTRY_PORT}: {e:#}"));
    let image = busybox_httpd_image("amd64", Path::new("/bin/busybox"), INDEX, PORT).unwrap();
    let digest = registry
        .push_image_gzip("nodeforge-test/web", Some("1"), &image)
        .unwrap();
    let profile_path = workspace_root().join(PROFILE);
    let profile = nodeforge::profile::load(&profile_path).unwrap();
    let (lock, _) =
        nodeforge::oci::lock::lock(&profile, &profile_path, &Client::new().unwrap()).unwrap();
    assert_eq!(lock.images[0].digest, digest);
    (registry, digest)
}

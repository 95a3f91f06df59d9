//! README "Adding a role", followed literally on a copy of the repository:
//! a new role's profile, its stack folder, `nodeforge lock` (through a
//! mirror: the test registry stands in for docker.io), `check`, `plan`
//! and `tailnet policy`, then every roles check on the copy. Passing
//! means a role is data: adding one takes no Rust change.

use std::path::Path;

use crate::support::roles::{load_profile, roles};
use crate::support::{require_tool, Project};
use nodeforge::oci::fixture::{stand_in_image, TestRegistry};
use nodeforge::oci::Reference;
use nodeforge::tailnet::Policy;

/// README step 1: the role's profile, extending node.toml with a tag of
/// its own and a stack named after the role.
const PROFILE: &str = r#"extends = "node.toml"
name = "beacon"
role = "beacon"
description = "A role added the README's way (test)"
hardware = "x86-64-uefi"
hostname = "beacon"

[tailscale]
tags = ["tag:beacon"]

[[stacks]]
name = "beacon"
compose = "beacon/compose.yaml.tera"
images = ["nginx:1.27.2-alpine"]
secrets = ["BEACON_TOKEN"]

[[stacks.probes]]
service = "web"
http = "http://127.0.0.1:8080/"
"#;

/// README step 2: the stack's compose template, its image written through
/// `images[…]`, never pulled, its secret interpolated.
const COMPOSE: &str = r#"services:
  web:
    image: {{ images["nginx:1.27.2-alpine"] }}
    pull_policy: never
    restart: unless-stopped
    environment:
      BEACON_TOKEN: ${BEACON_TOKEN:?the secrets file lacks BEACON_TOKEN}
    ports:
      - "8080:80"
"#;

/// Serves a stand-in for every image `profile` locks (its own and
/// node.toml's) under the public names, as a docker.io mirror would.
fn mirror_for(profile: &Path) -> TestRegistry {
    require_tool("docker-registry", "docker-registry");
    let reg = TestRegistry::start().unwrap_or_else(|e| panic!("starting docker-registry: {e:#}"));
    for r in nodeforge::oci::lock::profile_images(&load_profile(profile)) {
        let parsed = Reference::parse(&r).unwrap_or_else(|e| panic!("{r}: {e}"));
        let image = stand_in_image("amd64", Path::new("/bin/busybox"), &r, 8080, &[], &[], &[])
            .unwrap_or_else(|e| panic!("{r}: {e:#}"));
        reg.push_image(&parsed.repository, parsed.tag.as_deref(), &image)
            .unwrap_or_else(|e| panic!("pushing {r}: {e:#}"));
    }
    reg
}

#[test]
fn a_role_added_as_the_readme_says_passes_every_roles_check() {
    let p = Project::copy_of_repo(&["profiles", "stacks", "overlays", "hardware", "keys"]);
    p.write("profiles/beacon.toml", PROFILE);
    p.write("stacks/beacon/compose.yaml.tera", COMPOSE);

    // README step 3: lock, here through the mirror.
    let reg = mirror_for(&p.path("profiles/beacon.toml"));
    let mirror = format!("docker.io=http://{}", reg.addr);
    p.ok(&["lock", "profiles/beacon.toml", "--mirror", &mirror]);
    let lock = p.read("profiles/beacon.lock.toml");
    assert!(
        lock.contains("reference = \"nginx:1.27.2-alpine\""),
        "{lock}"
    );

    // README step 4: check, plan and the tailnet policy.
    p.ok(&["check", "profiles/beacon.toml"]);
    let plan = p.ok(&["plan", "profiles/beacon.toml"]);
    plan.stdout_has(&["image nginx:1.27.2-alpine -> sha256:"]);
    // The folder, as the README says: the lock file just written beside
    // the profiles is not read as one (regression: it was, and failed).
    p.ok(&[
        "tailnet",
        "policy",
        "profiles",
        "-o",
        "tailnet-policy.hujson",
    ]);
    let policy = Policy::parse(&p.read("tailnet-policy.hujson")).unwrap();
    assert!(policy.tag_owners.contains_key("tag:beacon"), "{policy:?}");

    // The roles checks see the new role and pass on the copy.
    assert!(
        roles(p.root()).iter().any(|r| r.role() == "beacon"),
        "beacon is not a role"
    );
    super::check_every_profile(&p);
    super::check_policy(&p);
    super::check_core_scrapes(&p);
    super::check_stacks_with_compose(&p);
    super::check_resolved_leaves_published_ports(&p);
}

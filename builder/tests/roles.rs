//! The repository's own role profiles: each passes `nodeforge check`, the
//! tailnet policy generated from them gives the seed's access, and core's
//! Prometheus configuration scrapes what the seed's does.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::stderr;
use nodeforge::tailnet::{allows, Policy};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn profiles() -> Vec<PathBuf> {
    nodeforge::tailnet::profile_files(&[root().join("profiles")]).unwrap()
}

#[test]
fn every_profile_checks() {
    let files = profiles();
    for role in [
        "core",
        "data",
        "ai",
        "workspace",
        "media",
        "controlplane",
        "cloud",
        "observability",
    ] {
        assert!(
            files.iter().any(|f| f.ends_with(format!("{role}.toml"))),
            "profiles/{role}.toml is missing"
        );
    }
    let out = Command::new(env!("CARGO_BIN_EXE_nodeforge"))
        .arg("check")
        .args(&files)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
}

const FLEET: &[&str] = &[
    "tag:data",
    "tag:ai",
    "tag:workspace",
    "tag:media",
    "tag:edge",
];
const SINGLE_HOSTS: &[&str] = &["tag:controlplane", "tag:cloud", "tag:observability"];

/// The seed's AeroVista access, plus the single-host roles' gateways.
fn expected(src: &str, dst: &str, port: u16) -> bool {
    src == "tag:core"
        || (src == "tag:ai" && dst == "tag:data" && [5432, 6379, 9000].contains(&port))
        || (src == "tag:workspace" && dst == "tag:data" && [5432, 9000].contains(&port))
        || (dst == "tag:core" && [80, 443].contains(&port))
        || (dst == "tag:core" && [9090, 3100].contains(&port) && FLEET.contains(&src))
        || (SINGLE_HOSTS.contains(&dst) && [80, 443].contains(&port))
}

#[test]
fn policy_from_the_role_profiles_has_the_seeds_semantics() {
    let text = nodeforge::tailnet::write_policy(&[root().join("profiles")], None).unwrap();
    let policy = Policy::parse(&text).unwrap();
    let tags: Vec<&str> = policy.tag_owners.keys().map(String::as_str).collect();
    for t in [
        "tag:core",
        "tag:data",
        "tag:ai",
        "tag:workspace",
        "tag:media",
    ] {
        assert!(tags.contains(&t), "{t} missing from {tags:?}");
    }
    for t in &tags {
        assert!(
            *t == "tag:core" || FLEET.contains(t) || SINGLE_HOSTS.contains(t),
            "{t}: a role the test does not know; add it to FLEET or SINGLE_HOSTS"
        );
    }
    let ports = [
        22, 80, 443, 3000, 3100, 5432, 6379, 8080, 9000, 9090, 9100, 9187,
    ];
    for src in tags.iter().copied().chain(["alice@example.com"]) {
        for dst in &tags {
            for port in ports {
                assert_eq!(
                    allows(&policy, src, dst, port),
                    expected(src, dst, port),
                    "{src} -> {dst}:{port}\n{text}"
                );
            }
        }
    }
}

#[test]
fn core_scrapes_what_the_seed_scrapes() {
    let plan = nodeforge::plan::Plan::load(&root().join("profiles/core.toml")).unwrap();
    let file = plan
        .overlay_files
        .iter()
        .find(|f| f.target == "/etc/nodeforge/prometheus/prometheus.yml")
        .expect("core has a Prometheus configuration");
    let text = std::fs::read_to_string(&file.source).unwrap();
    let ctx = tera::Context::from_serialize(plan.profile.template_context()).unwrap();
    let rendered = tera::Tera::one_off(&text, &ctx, false).unwrap();
    // The seed's scrape_configs (shared/seeds/001…, "Prometheus Scrape Config").
    for (job, target) in [
        ("nxcore-node", "localhost:9100"),
        ("nxcore-containers", "cadvisor:8080"),
        ("datacore-node", "datacore.tail79107c.ts.net:9100"),
        ("datacore-postgres", "datacore.tail79107c.ts.net:9187"),
        ("ainode-node", "ainode.tail79107c.ts.net:9100"),
        ("workspace-node", "workspace.tail79107c.ts.net:9100"),
        ("media-node", "media.tail79107c.ts.net:9100"),
        ("sentinel-node", "sentinel.tail79107c.ts.net:9100"),
    ] {
        let entry =
            format!("  - job_name: '{job}'\n    static_configs:\n      - targets: ['{target}']\n");
        assert!(
            rendered.contains(&entry),
            "{entry:?} missing from:\n{rendered}"
        );
    }
}

//! The repository's own role profiles: each passes `nodeforge check`, the
//! tailnet policy generated from them gives the seed's access, core's
//! Prometheus configuration scrapes what the seed's does, and every
//! stack's compose file passes the real `docker compose config`.

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

/// Every role the seeds describe, each with a profile and a stack of its
/// own name.
const ROLES: [&str; 9] = [
    "core",
    "data",
    "ai",
    "workspace",
    "media",
    "sentinel",
    "controlplane",
    "cloud",
    "observability",
];

#[test]
fn every_profile_checks() {
    let files = profiles();
    for role in ROLES {
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
    // The seed's scrape_configs (shared/seeds/001…, "Prometheus Scrape
    // Config"); Prometheus runs in a container, so the host's own
    // node_exporter is the Docker host gateway, not localhost.
    for (job, target) in [
        ("nxcore-node", "host.docker.internal:9100"),
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

/// Where scripts/host-packages.sh puts trixie's docker-compose (v2).
const COMPOSE_BIN: &str = "/usr/local/lib/nodeforge/docker-compose";

/// Every role's stacks, rendered as the build renders them (each image
/// under the tag it loads as) and checked by the real compose: the file
/// is valid, every image is one the stack declares and is never pulled,
/// every probe names a service, and each secret the stack declares is
/// interpolated from the secrets file rather than written in the file.
#[test]
fn every_stack_passes_docker_compose_config() {
    if !Path::new(COMPOSE_BIN).is_file() {
        eprintln!("skipped: {COMPOSE_BIN} is missing (scripts/host-packages.sh installs it)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut checked = Vec::new();
    for file in profiles() {
        let profile = nodeforge::profile::load(&file).unwrap();
        for st in &profile.stacks {
            let digest = nodeforge::oci::Digest::of(st.name.as_bytes());
            let tags: Vec<(String, String)> = st
                .images
                .iter()
                .map(|r| {
                    let t = nodeforge::oci::Reference::parse(r)
                        .unwrap()
                        .load_tag(&digest);
                    (r.clone(), t)
                })
                .collect();
            let tag_map = tags.iter().map(|(r, t)| (r.as_str(), t.as_str())).collect();
            let rendered =
                nodeforge::build::containers::render_compose(&profile, st, &tag_map).unwrap();
            let stack_dir = dir.path().join(format!("{}-{}", profile.name, st.name));
            std::fs::create_dir_all(&stack_dir).unwrap();
            let compose = stack_dir.join("compose.yaml");
            std::fs::write(&compose, &rendered).unwrap();
            let env = stack_dir.join(".env");
            std::fs::write(&env, nodeforge::build::containers::env_file(&st.env)).unwrap();
            let secrets = stack_dir.join("secrets.env");
            let placeholder = |n: &str| format!("placeholder-{}", n.to_lowercase());
            let values: Vec<(String, String)> = st
                .secrets
                .iter()
                .map(|n| (n.clone(), placeholder(n)))
                .collect();
            std::fs::write(
                &secrets,
                nodeforge_firstboot::stacks::env_file(
                    values.iter().map(|(k, v)| (k.as_str(), v.as_str())),
                ),
            )
            .unwrap();
            let what = format!("{} stack {}", file.display(), st.name);
            let out = Command::new(COMPOSE_BIN)
                .arg("--project-name")
                .arg(&st.name)
                .arg("--file")
                .arg(&compose)
                .arg("--env-file")
                .arg(&env)
                .arg("--env-file")
                .arg(&secrets)
                .args(["config", "--format", "json"])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{what}: docker compose config failed:\n{}\n{rendered}",
                stderr(&out)
            );
            assert!(
                !stderr(&out).contains("variable is not set"),
                "{what}: {}",
                stderr(&out)
            );
            let config: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            let services = config["services"].as_object().unwrap();
            for (name, svc) in services {
                // A password or key in the environment must be a secret
                // from the secrets file, never a literal.
                if let Some(env) = svc["environment"].as_object() {
                    for (k, v) in env {
                        let sensitive =
                            ["PASSWORD", "SECRET", "_KEY"].iter().any(|w| k.contains(w));
                        assert!(
                            !sensitive || v.as_str().is_some_and(|v| v.contains("placeholder-")),
                            "{what}: service {name} sets {k} to a literal, not a declared secret"
                        );
                    }
                }
                let image = svc["image"].as_str().unwrap_or("");
                assert!(
                    tags.iter().any(|(_, t)| t == image),
                    "{what}: service {name} runs {image}, which the stack does not declare"
                );
                assert_eq!(svc["pull_policy"], "never", "{what}: service {name}");
            }
            for (_, t) in &tags {
                assert!(
                    services.values().any(|s| s["image"] == t.as_str()),
                    "{what}: image {t} is declared but no service runs it"
                );
            }
            for p in &st.probes {
                assert!(
                    services.contains_key(&p.service),
                    "{what}: probe of unknown service {}",
                    p.service
                );
            }
            let resolved = String::from_utf8_lossy(&out.stdout);
            for (n, v) in &values {
                assert!(
                    resolved.contains(v.as_str()),
                    "{what}: secret {n} is declared but the compose file never uses it"
                );
            }
            checked.push(what);
        }
    }
    eprintln!("{} stacks checked: {checked:#?}", checked.len());
    for role in ROLES {
        assert!(
            checked
                .iter()
                .any(|c| c.contains(&format!("profiles/{role}.toml stack {role}"))),
            "profiles/{role}.toml has no `{role}` stack: {checked:#?}"
        );
    }
}

/// Regression: node.toml's docker-dns overlay made resolved listen on
/// docker0's address for containers' DNS, so the sentinel's Pi-hole, which
/// publishes port 53 on every address, could not start. A role whose stack
/// publishes 53 replaces that file; the other fleet nodes keep the listener.
#[test]
fn resolved_holds_no_port_a_stack_publishes() {
    let mut with_listener = Vec::new();
    for f in profiles() {
        let plan = nodeforge::plan::Plan::load(&f).unwrap();
        let extra: Vec<String> = plan
            .overlay_files
            .iter()
            .filter(|o| o.target.starts_with("/etc/systemd/resolved.conf.d/"))
            .flat_map(|o| {
                std::fs::read_to_string(&o.source)
                    .unwrap()
                    .lines()
                    .filter_map(|l| l.trim().strip_prefix("DNSStubListenerExtra="))
                    .filter(|v| !v.trim().is_empty())
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .collect();
        let publishes_53 = plan.profile.stacks.iter().any(|s| {
            let compose = std::fs::read_to_string(&s.compose).unwrap();
            compose.contains("\"53:53")
        });
        assert!(
            !publishes_53 || extra.is_empty(),
            "{}: a stack publishes port 53 but resolved also listens on {extra:?}",
            f.display()
        );
        if !extra.is_empty() {
            with_listener.push(plan.profile.role.clone());
        }
    }
    for role in ["core", "data", "ai", "media"] {
        assert!(
            with_listener.iter().any(|r| r == role),
            "{role}'s containers lose MagicDNS: {with_listener:?}"
        );
    }
    assert!(!with_listener.iter().any(|r| r == "sentinel"));
}

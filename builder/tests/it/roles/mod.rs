//! The roles' profiles, checked as data: every role (a profile with
//! `[tailscale] tags`, see support::roles) passes `nodeforge check`, the
//! tailnet policy generated from them gives exactly the access of
//! tests/fixtures/access-matrix.toml (the seed's, plus the single-host
//! roles'), core's Prometheus configuration scrapes what the seed's does,
//! every stack's compose file passes the real `docker compose config`, and
//! resolved leaves a stack's published DNS port alone.
//!
//! Each check is a function of the project directory: the tests here run
//! them on the repository, [`new_role`] on a copy with a role added the way
//! the README says.

mod new_role;
mod seed_services;

use std::path::Path;
use std::process::Command;

use crate::support::cli::args_with_files;
use crate::support::require::require_file;
use crate::support::roles::{load_profile, profile_files, roles, tags, AccessMatrix};
use crate::support::{fixture, read_text, write_file, Project};
use nodeforge::tailnet::Policy;

/// Every role's profile is `profiles/<role>.toml`, and every profile passes
/// `nodeforge check`.
pub fn check_every_profile(p: &Project) {
    for role in roles(p.root()) {
        let want = p.path(&format!("profiles/{}.toml", role.role()));
        assert_eq!(
            role.file,
            want,
            "role {} is not in its own file",
            role.role()
        );
    }
    p.ok(&args_with_files(&["check"], &profile_files(p.root())));
}

/// `nodeforge tailnet policy` of the role profiles, as its text.
pub fn tailnet_policy(p: &Project) -> String {
    // The profile files, not the folder: the folder's lock files would be
    // read as profiles (see README: Adding a role).
    p.ok(&args_with_files(
        &["tailnet", "policy"],
        &profile_files(p.root()),
    ))
    .stdout()
}

/// The generated policy gives the roles exactly the access matrix's
/// access, and owns the seed's tags at least.
pub fn check_policy(p: &Project) {
    let text = tailnet_policy(p);
    let policy = Policy::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let seed = seed_policy();
    for t in seed.tag_owners.keys() {
        assert!(
            policy.tag_owners.contains_key(t),
            "{t} missing from:\n{text}"
        );
    }
    let roles = roles(p.root());
    let matrix = AccessMatrix::load();
    let tags = tags(&roles);
    let sources: Vec<String> = tags.iter().cloned().chain([matrix.user.clone()]).collect();
    let what = format!("the policy of {}/profiles", p.root().display());
    matrix.check(&policy, &what, &roles, &sources, &tags);
}

/// The seed document's hand-written policy (tests/fixtures).
pub fn seed_policy() -> Policy {
    let path = fixture("aerovista-acl.hujson");
    Policy::parse(&read_text(&path)).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The seed's scrape_configs (shared/seeds/001…, "Prometheus Scrape
/// Config") are in core's rendered Prometheus configuration; Prometheus
/// runs in a container, so the host's own node_exporter is the Docker host
/// gateway, not localhost.
pub fn check_core_scrapes(p: &Project) {
    let core = p.path("profiles/core.toml");
    let plan =
        nodeforge::plan::Plan::load(&core).unwrap_or_else(|e| panic!("{}: {e:#}", core.display()));
    let file = plan
        .overlay_files
        .iter()
        .find(|f| f.target == "/etc/nodeforge/prometheus/prometheus.yml")
        .expect("core has a Prometheus configuration");
    let text = read_text(&file.source);
    let ctx = tera::Context::from_serialize(plan.profile.template_context()).unwrap();
    let rendered = tera::Tera::one_off(&text, &ctx, false)
        .unwrap_or_else(|e| panic!("rendering {}: {e}", file.source.display()));
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

/// `#[test] fn NAME` running `CHECK` on the repository itself.
macro_rules! on_the_repository {
    ($($(#[$doc:meta])* $name:ident => $check:ident;)*) => {$(
        $(#[$doc])*
        #[test]
        fn $name() {
            $check(&Project::repo());
        }
    )*};
}

on_the_repository! {
    every_profile_checks => check_every_profile;
    policy_from_the_role_profiles_has_the_seeds_semantics => check_policy;
    core_scrapes_what_the_seed_scrapes => check_core_scrapes;
    /// Every role's stacks, rendered as the build renders them, pass the
    /// real `docker compose config` (see [`check_stacks_with_compose`]).
    every_stack_passes_docker_compose_config => check_stacks_with_compose;
    resolved_holds_no_port_a_stack_publishes => check_resolved_leaves_published_ports;
}

/// Whether a service's health is known at the application level: a
/// compose healthcheck, an HTTP probe of its health endpoint, or a TCP
/// probe with the reason nothing better exists (README: Stacks); else why
/// not.
fn health_of(
    name: &str,
    svc: &serde_json::Value,
    probes: &[nodeforge::profile::Probe],
) -> Result<(), String> {
    use nodeforge::profile::ProbeCheck;
    let check = &svc["healthcheck"];
    let disabled = check["disable"] == true
        || check["test"]
            .as_array()
            .is_some_and(|t| t.first().is_some_and(|c| c == "NONE"));
    if check["test"].is_array() && !disabled {
        return Ok(());
    }
    let mine: Vec<_> = probes.iter().filter(|p| p.service == name).collect();
    if mine.iter().any(|p| matches!(p.check, ProbeCheck::Http(_))) {
        return Ok(());
    }
    match mine.iter().find(|p| matches!(p.check, ProbeCheck::Tcp(_))) {
        Some(p) if p.reason.is_some() => Ok(()),
        Some(_) => Err(format!(
            "service {name} has only a TCP probe and no `reason` why nothing better exists"
        )),
        None => Err(format!("service {name} has no healthcheck and no probe")),
    }
}

/// Where scripts/host-packages.sh puts trixie's docker-compose (v2).
const COMPOSE_BIN: &str = "/usr/local/lib/nodeforge/docker-compose";

/// Every role's stacks, rendered as the build renders them (each image
/// under the tag it loads as) and checked by the real compose: the file
/// is valid, every image is one the stack declares and is never pulled,
/// every probe names a service, and each secret the stack declares is
/// interpolated from the secrets file rather than written in the file.
pub fn check_stacks_with_compose(p: &Project) {
    require_file(
        Path::new(COMPOSE_BIN),
        "scripts/host-packages.sh puts trixie's docker-compose there",
    );
    let dir = tempfile::tempdir().unwrap();
    let mut checked = Vec::new();
    let mut no_health = Vec::new();
    for file in profile_files(p.root()) {
        let profile = load_profile(&file);
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
            let compose = stack_dir.join("compose.yaml");
            write_file(&compose, &rendered);
            let env = stack_dir.join(".env");
            write_file(&env, nodeforge::build::containers::env_file(&st.env));
            let secrets = stack_dir.join("secrets.env");
            let placeholder = |n: &str| format!("placeholder-{}", n.to_lowercase());
            let values: Vec<(String, String)> = st
                .secrets
                .iter()
                .map(|n| (n.clone(), placeholder(n)))
                .collect();
            write_file(
                &secrets,
                nodeforge_firstboot::stacks::env_file(
                    values.iter().map(|(k, v)| (k.as_str(), v.as_str())),
                ),
            );
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
                String::from_utf8_lossy(&out.stderr)
            );
            let warnings = String::from_utf8_lossy(&out.stderr);
            assert!(
                !warnings.contains("variable is not set"),
                "{what}: {warnings}"
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
            for (name, svc) in services {
                if let Err(why) = health_of(name, svc, &st.probes) {
                    no_health.push(format!("{what}: {why}"));
                }
            }
            let resolved = String::from_utf8_lossy(&out.stdout);
            for (n, v) in &values {
                assert!(
                    resolved.contains(v.as_str())
                        || mounted_as_compose_secret(&config, n)
                        || overlays_read(&file, n),
                    "{what}: secret {n} is declared but neither the compose file nor \
                     a program of the profile's overlays uses it"
                );
            }
            checked.push(what);
        }
    }
    eprintln!("{} stacks checked: {checked:#?}", checked.len());
    assert!(
        no_health.is_empty(),
        "services without an application-level health check:\n{}",
        no_health.join("\n")
    );
    for role in roles(p.root()) {
        let role = role.role();
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
pub fn check_resolved_leaves_published_ports(p: &Project) {
    let mut publishers = Vec::new();
    for role in roles(p.root()) {
        let f = &role.file;
        let plan =
            nodeforge::plan::Plan::load(f).unwrap_or_else(|e| panic!("{}: {e:#}", f.display()));
        let extra: Vec<String> = plan
            .overlay_files
            .iter()
            .filter(|o| o.target.starts_with("/etc/systemd/resolved.conf.d/"))
            .flat_map(|o| {
                read_text(&o.source)
                    .lines()
                    .filter_map(|l| l.trim().strip_prefix("DNSStubListenerExtra="))
                    .filter(|v| !v.trim().is_empty())
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .collect();
        let publishes_53 = plan
            .profile
            .stacks
            .iter()
            .any(|s| read_text(&s.compose).contains("\"53:53"));
        assert!(
            !publishes_53 || extra.is_empty(),
            "{}: a stack publishes port 53 but resolved also listens on {extra:?}",
            f.display()
        );
        // Every other role keeps node.toml's listener: its containers
        // resolve MagicDNS names through it.
        assert!(
            publishes_53 || !extra.is_empty(),
            "{}: its containers lose MagicDNS (no DNSStubListenerExtra)",
            f.display()
        );
        if publishes_53 {
            publishers.push(role.role().to_owned());
        }
    }
    // The sentinel's Pi-hole publishes 53: the check above is not vacuous.
    assert!(!publishers.is_empty(), "no role's stack publishes port 53");
}

/// Regression (the sentinel's nmap timer was never enabled): a recovered
/// checkout had turned the overlay's `timers.target.wants/` symlink into a
/// regular file holding the link's text, which systemd ignores. Every
/// entry of a `.wants`/`.requires` folder in an overlay is a symlink to a
/// unit file the overlay or the image has.
#[test]
fn overlays_enable_units_with_symlinks_to_units() {
    let mut checked = 0;
    let mut wrong = Vec::new();
    let root = crate::support::repo_root().join("overlays");
    let mut stack = vec![root.clone()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = e.expect("an entry").path();
            let meta = std::fs::symlink_metadata(&path).expect("metadata");
            let parent = dir
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            if parent.ends_with(".wants") || parent.ends_with(".requires") {
                checked += 1;
                if !meta.file_type().is_symlink() {
                    wrong.push(format!("{} is not a symlink", path.display()));
                    continue;
                }
                let target = std::fs::read_link(&path).expect("a link");
                let in_overlay = dir.join(&target);
                let image_unit = target.is_absolute()
                    && (target.starts_with("/usr/lib/systemd/system")
                        || target.starts_with("/lib/systemd/system"));
                if !(in_overlay.is_file() || image_unit) {
                    wrong.push(format!(
                        "{} points at {}, no unit",
                        path.display(),
                        target.display()
                    ));
                }
            } else if meta.is_dir() {
                stack.push(path);
            }
        }
    }
    assert!(
        checked >= 4,
        "only {checked} enabled units found under {}",
        root.display()
    );
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// Whether stack secret `name` reaches a service as a compose secret (a
/// file under /run/secrets): a top-level secret whose source is that
/// environment variable, granted to at least one service.
fn mounted_as_compose_secret(config: &serde_json::Value, name: &str) -> bool {
    let Some(secrets) = config["secrets"].as_object() else {
        return false;
    };
    secrets
        .iter()
        .filter(|(_, s)| s["environment"] == name)
        .any(|(key, _)| {
            config["services"]
                .as_object()
                .into_iter()
                .flat_map(|m| m.values())
                .flat_map(|svc| svc["secrets"].as_array().into_iter().flatten())
                .any(|g| g["source"] == key.as_str())
        })
}

/// Whether a program of the profile's overlays (a script run on the host,
/// such as overlays/backup's) reads stack secret `name` from the secrets
/// file: it calls `secret NAME`, the scripts' reader of that file.
fn overlays_read(profile: &Path, name: &str) -> bool {
    let plan = nodeforge::plan::Plan::load(profile)
        .unwrap_or_else(|e| panic!("{}: {e:#}", profile.display()));
    plan.overlay_files.iter().any(|f| {
        f.target.starts_with("/usr/libexec/")
            && std::fs::read_to_string(&f.source)
                .is_ok_and(|t| t.contains(&format!("secret {name}")))
    })
}

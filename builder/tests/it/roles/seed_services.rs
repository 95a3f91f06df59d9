//! The seeds' services, role by role (tests/fixtures/seed-services.toml):
//! one the table calls present must really be in the role's stacks (its
//! compose files rendered as the build renders them) or, `host:…`, among
//! its packages or overlay files; one that is not there must say why.

use std::collections::{BTreeMap, BTreeSet};

use nodeforge::plan::Plan;
use serde::Deserialize;

use crate::support::{fixture, read_text, repo_root};

#[derive(Debug, Deserialize)]
struct Table {
    service: Vec<Entry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    role: String,
    seed: String,
    name: String,
    optional: bool,
    present: Vec<String>,
    status: String,
    #[serde(rename = "where")]
    source: String,
    reason: Option<String>,
    /// For readers of the table only.
    #[allow(dead_code)]
    note: Option<String>,
}

/// The compose service names of the role's stacks.
fn stack_services(plan: &Plan) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for st in &plan.profile.stacks {
        let tags = st.images.iter().map(|r| (r.as_str(), r.as_str())).collect();
        let text = nodeforge::build::containers::render_compose(&plan.profile, st, &tags)
            .unwrap_or_else(|e| panic!("rendering stack {}: {e:#}", st.name));
        let doc: serde_json::Value = serde_yaml_ng::from_str(&text)
            .unwrap_or_else(|e| panic!("stack {} is not YAML: {e}", st.name));
        if let Some(services) = doc["services"].as_object() {
            out.extend(services.keys().cloned());
        }
    }
    out
}

/// The role's packages and the file names its overlays put in the image.
fn host_things(plan: &Plan) -> BTreeSet<String> {
    let mut out: BTreeSet<String> = plan.packages.iter().cloned().collect();
    for f in &plan.overlay_files {
        if let Some(name) = f.target.rsplit('/').next() {
            out.insert(name.to_owned());
        }
    }
    out
}

#[test]
fn every_seed_service_is_in_its_roles_stacks_or_says_why_not() {
    let table: Table = toml::from_str(&read_text(&fixture("seed-services.toml")))
        .unwrap_or_else(|e| panic!("tests/fixtures/seed-services.toml: {e}"));
    let mut by_role: BTreeMap<&str, Vec<&Entry>> = BTreeMap::new();
    for e in &table.service {
        by_role.entry(e.role.as_str()).or_default().push(e);
    }
    let mut roles: BTreeSet<String> = std::fs::read_dir(repo_root().join("profiles"))
        .expect("listing profiles/")
        .map(|e| {
            e.expect("an entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|n| n.ends_with(".toml") && !n.ends_with(".lock.toml"))
        .map(|n| n.trim_end_matches(".toml").to_owned())
        .collect();
    roles.remove("base");
    roles.remove("node");
    assert_eq!(
        by_role
            .keys()
            .map(|r| r.to_string())
            .collect::<BTreeSet<_>>(),
        roles,
        "the table covers every role and only roles"
    );

    let mut wrong = Vec::new();
    for (role, entries) in &by_role {
        let plan = Plan::load(&repo_root().join(format!("profiles/{role}.toml")))
            .unwrap_or_else(|e| panic!("profiles/{role}.toml: {e:#}"));
        let services = stack_services(&plan);
        let host = host_things(&plan);
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for e in entries {
            let key = match (e.status.as_str(), e.optional) {
                ("missing", true) => "missing (optional)",
                (s, _) => s,
            };
            *counts.entry(key).or_default() += 1;
            let what = format!("{role}: {} (seed {}, {})", e.name, e.seed, e.source);
            let reason = e.reason.as_deref().unwrap_or("").trim();
            match e.status.as_str() {
                "present" | "substitute" => {
                    if e.present.is_empty() {
                        wrong.push(format!("{what}: `{}` but names nothing", e.status));
                    }
                    for p in &e.present {
                        let found = match p.strip_prefix("host:") {
                            Some(h) => host.contains(h),
                            None => services.contains(p),
                        };
                        if !found {
                            wrong.push(format!(
                                "{what}: `{p}` is not in the role's stacks or image"
                            ));
                        }
                    }
                    if e.status == "substitute" && reason.is_empty() {
                        wrong.push(format!("{what}: a substitute needs a reason"));
                    }
                }
                "missing" | "elsewhere" => {
                    if !e.present.is_empty() {
                        wrong.push(format!("{what}: `{}` names {:?}", e.status, e.present));
                    }
                    if reason.is_empty() {
                        wrong.push(format!("{what}: not in the stack, and no reason recorded"));
                    }
                }
                other => wrong.push(format!("{what}: unknown status `{other}`")),
            }
        }
        eprintln!("seed services of {role}: {counts:?}");
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

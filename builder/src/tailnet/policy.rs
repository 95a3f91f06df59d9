//! The tailnet policy file (tagOwners and ACLs), generated from the roles'
//! `[tailscale]` tables, and an evaluator of Tailscale's ACL semantics for
//! the forms nodeforge writes, so tests can check who reaches what.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::profile::Profile;

/// `accept.from` value meaning the other roles of the accepting role's fleet.
const FLEET: &str = "fleet";

/// A Tailscale policy file: the parts nodeforge writes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    #[serde(rename = "tagOwners", default)]
    pub tag_owners: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    pub acls: Vec<Acl>,
    /// Checks Tailscale runs when the policy is saved: what each role may
    /// and may not reach, as this module's evaluator sees it, so the
    /// control server confirms the semantics nodeforge assumed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tests: Vec<PolicyTest>,
    /// Subnet routes approved without the admin console: each route a
    /// role's nodes advertise ([tailnet.routes]) for that role's tags.
    #[serde(
        rename = "autoApprovers",
        default,
        skip_serializing_if = "AutoApprovers::is_empty"
    )]
    pub auto_approvers: AutoApprovers,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AutoApprovers {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub routes: BTreeMap<String, Vec<String>>,
}

impl AutoApprovers {
    fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyTest {
    pub src: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub accept: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Acl {
    pub action: String,
    pub src: Vec<String>,
    pub dst: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error(
        "{profile}: {rule} names `{tag}`, which no role profile carries (known tags: {known})"
    )]
    UnknownTag {
        profile: String,
        rule: &'static str,
        tag: String,
        known: String,
    },
    #[error("no profile has a [tailscale] table with tags: nothing to write a policy for")]
    NoRoles,
    #[error("the policy file is not valid HuJSON/JSON: {0}")]
    Parse(String),
}

/// The policy the roles' `[tailscale]` tables describe: every role tag
/// owned by its owners, each `allow` a rule from the role's tags, each
/// `accept` a rule to them. Identical rules are written once.
pub fn generate(profiles: &[Profile]) -> Result<Policy, PolicyError> {
    let roles: Vec<(&Profile, &crate::profile::Tailscale)> = profiles
        .iter()
        .filter_map(|p| p.tailscale.as_ref().map(|t| (p, t)))
        .filter(|(_, t)| !t.tags.is_empty())
        .collect();
    if roles.is_empty() {
        return Err(PolicyError::NoRoles);
    }
    let mut all_tags: Vec<&str> = Vec::new();
    let mut tag_owners: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (_, t) in &roles {
        for tag in &t.tags {
            if !all_tags.contains(&tag.as_str()) {
                all_tags.push(tag);
            }
            let owners = tag_owners.entry(tag.clone()).or_default();
            for o in &t.owners {
                if !owners.contains(o) {
                    owners.push(o.clone());
                }
            }
        }
    }
    let known = |p: &Profile, rule: &'static str, tag: &str| {
        if all_tags.contains(&tag) {
            Ok(())
        } else {
            Err(PolicyError::UnknownTag {
                profile: p
                    .sources
                    .last()
                    .map(|s| s.display().to_string())
                    .unwrap_or_else(|| p.name.clone()),
                rule,
                tag: tag.to_owned(),
                known: all_tags.join(", "),
            })
        }
    };
    let mut acls: Vec<Acl> = Vec::new();
    let mut push = |acl: Acl| {
        if !acl.src.is_empty() && !acl.dst.is_empty() && !acls.contains(&acl) {
            acls.push(acl);
        }
    };
    for (p, t) in &roles {
        for a in &t.allow {
            if a.to != "*" {
                known(p, "allow.to", &a.to)?;
            }
            push(Acl {
                action: "accept".into(),
                src: t.tags.clone(),
                dst: destinations(&[a.to.as_str()], &a.ports),
            });
        }
    }
    for (p, t) in &roles {
        for a in &t.accept {
            let src: Vec<String> = match a.from.as_str() {
                "*" => vec!["*".into()],
                FLEET => fleet_tags(&roles, t),
                tag => {
                    known(p, "accept.from", tag)?;
                    vec![tag.to_owned()]
                }
            };
            let own: Vec<&str> = t.tags.iter().map(String::as_str).collect();
            push(Acl {
                action: "accept".into(),
                src,
                dst: destinations(&own, &a.ports),
            });
        }
    }
    let mut auto_approvers = AutoApprovers::default();
    for (p, t) in &roles {
        for route in p.advertised_routes() {
            let approvers = auto_approvers.routes.entry(route).or_default();
            for tag in &t.tags {
                if !approvers.contains(tag) {
                    approvers.push(tag.clone());
                }
            }
        }
    }
    let mut policy = Policy {
        tag_owners,
        acls,
        tests: Vec::new(),
        auto_approvers,
    };
    policy.tests = tests(&policy, &all_tags);
    Ok(policy)
}

/// The tags of the roles in `t`'s fleet (roles without a fleet form one
/// together), but not `t`'s own, in the order the roles came.
fn fleet_tags(
    roles: &[(&Profile, &crate::profile::Tailscale)],
    t: &crate::profile::Tailscale,
) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for (_, other) in roles.iter().filter(|(_, o)| o.fleet == t.fleet) {
        for tag in &other.tags {
            if !t.tags.contains(tag) && !out.contains(tag) {
                out.push(tag.clone());
            }
        }
    }
    out
}

/// For every role tag: which `tag:port` destinations it reaches and which
/// it does not, over the ports the rules name and SSH's.
fn tests(policy: &Policy, tags: &[&str]) -> Vec<PolicyTest> {
    let mut ports: Vec<u16> = vec![22];
    for acl in &policy.acls {
        for d in &acl.dst {
            if let Some(Ok(p)) = d.rsplit_once(':').map(|(_, p)| p.parse::<u16>()) {
                ports.push(p);
            }
        }
    }
    ports.sort_unstable();
    ports.dedup();
    tags.iter()
        .map(|src| {
            let (mut accept, mut deny) = (Vec::new(), Vec::new());
            for dst in tags {
                for &port in &ports {
                    let d = format!("{dst}:{port}");
                    match allows(policy, src, dst, port) {
                        true => accept.push(d),
                        false => deny.push(d),
                    }
                }
            }
            PolicyTest {
                src: src.to_string(),
                accept,
                deny,
            }
        })
        .collect()
}

/// `host:port` entries for every host and port (`host:*` when no ports).
fn destinations(hosts: &[&str], ports: &[u16]) -> Vec<String> {
    hosts
        .iter()
        .flat_map(|h| {
            if ports.is_empty() {
                vec![format!("{h}:*")]
            } else {
                ports.iter().map(|p| format!("{h}:{p}")).collect()
            }
        })
        .collect()
}

impl Policy {
    /// The policy file's text: a comment saying where it came from, then
    /// the JSON (which is valid HuJSON).
    pub fn render(&self, sources: &[String]) -> String {
        // One line per owner entry, rule and test: diffs stay readable.
        let mut json = String::from("{\n  \"tagOwners\": {\n");
        json.push_str(&rows(
            "    ",
            self.tag_owners
                .iter()
                .map(|(tag, o)| format!("{}: {}", compact(tag), compact(o))),
        ));
        json.push_str("\n  },\n  \"acls\": [\n");
        json.push_str(&rows("    ", self.acls.iter().map(compact)));
        json.push_str("\n  ]");
        if !self.tests.is_empty() {
            json.push_str(",\n  \"tests\": [\n");
            json.push_str(&rows("    ", self.tests.iter().map(compact)));
            json.push_str("\n  ]");
        }
        if !self.auto_approvers.is_empty() {
            json.push_str(",\n  \"autoApprovers\": {\n    \"routes\": {\n");
            json.push_str(&rows(
                "      ",
                self.auto_approvers
                    .routes
                    .iter()
                    .map(|(r, tags)| format!("{}: {}", compact(r), compact(tags))),
            ));
            json.push_str("\n    }\n  }");
        }
        json.push_str("\n}");
        format!(
            "// Generated by `nodeforge tailnet policy` from {}.\n// Edit the profiles' [tailscale] and [tailnet] tables, not this file.\n{json}\n",
            sources.join(", ")
        )
    }

    /// Reads a policy file: JSON, or HuJSON (comments, trailing commas).
    pub fn parse(text: &str) -> Result<Policy, PolicyError> {
        serde_json::from_str(&hujson_to_json(text)).map_err(|e| PolicyError::Parse(e.to_string()))
    }
}

/// Whether `policy` lets a node with identity `src` (a tag such as
/// `tag:ai`) reach a node tagged `dst_tag` on TCP/UDP `port`, under
/// Tailscale's ACL semantics: default deny, any matching accept rule
/// allows; `*` as a source is every device; a destination is `host:ports`
/// with host `*` or a tag, ports `*`, `N`, `N-M` or a comma list of them.
pub fn allows(policy: &Policy, src: &str, dst_tag: &str, port: u16) -> bool {
    policy.acls.iter().any(|acl| {
        acl.action == "accept"
            && acl.src.iter().any(|s| s == "*" || s == src)
            && acl.dst.iter().any(|d| dst_matches(d, dst_tag, port))
    })
}

fn dst_matches(dst: &str, tag: &str, port: u16) -> bool {
    let Some((host, ports)) = dst.rsplit_once(':') else {
        return false;
    };
    (host == "*" || host == tag)
        && ports.split(',').any(|range| match range.split_once('-') {
            _ if range == "*" => true,
            Some((lo, hi)) => match (lo.parse::<u16>(), hi.parse::<u16>()) {
                (Ok(lo), Ok(hi)) => (lo..=hi).contains(&port),
                _ => false,
            },
            None => range.parse::<u16>() == Ok(port),
        })
}

/// HuJSON to JSON: drops `//` and `/* */` comments and trailing commas,
/// leaving strings untouched.
fn hujson_to_json(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        if let Some(end) = comment_end(&chars, i) {
            i = end;
            continue;
        }
        let c = chars[i];
        match c {
            '"' => {
                out.push(c);
                i += 1;
                while i < chars.len() {
                    out.push(chars[i]);
                    if chars[i] == '\\' && i + 1 < chars.len() {
                        out.push(chars[i + 1]);
                        i += 2;
                        continue;
                    }
                    i += 1;
                    if chars[i - 1] == '"' {
                        break;
                    }
                }
            }
            ',' => {
                // A comma with only blanks and comments before `}` or `]` is trailing.
                if !matches!(next_significant(&chars, i + 1), Some('}' | ']')) {
                    out.push(c);
                }
                i += 1;
            }
            _ => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}

/// Compact JSON of a policy value, for one-line entries.
fn compact<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("policy values serialize")
}

/// `items` one a line, each after `indent`, separated by commas.
fn rows(indent: &str, items: impl Iterator<Item = String>) -> String {
    items
        .map(|i| format!("{indent}{i}"))
        .collect::<Vec<_>>()
        .join(",\n")
}

/// The first character at or after `i` that is neither blank nor in a comment.
fn next_significant(chars: &[char], mut i: usize) -> Option<char> {
    while i < chars.len() {
        if let Some(end) = comment_end(chars, i) {
            i = end;
            continue;
        }
        match chars[i] {
            c if c.is_whitespace() => i += 1,
            c => return Some(c),
        }
    }
    None
}

/// When a `//` or `/* */` comment starts at `i`: the index just after it
/// (a line comment ends before its newline; an unclosed block comment
/// runs past the end).
fn comment_end(chars: &[char], mut i: usize) -> Option<usize> {
    if chars.get(i) != Some(&'/') {
        return None;
    }
    match chars.get(i + 1) {
        Some('/') => {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        }
        Some('*') => {
            i += 2;
            while i < chars.len() && !(chars[i] == '*' && chars.get(i + 1) == Some(&'/')) {
                i += 1;
            }
            i += 2;
        }
        _ => return None,
    }
    Some(i)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(acls: &[(&[&str], &[&str])]) -> Policy {
        Policy {
            auto_approvers: AutoApprovers::default(),
            tag_owners: BTreeMap::new(),
            tests: Vec::new(),
            acls: acls
                .iter()
                .map(|(s, d)| Acl {
                    action: "accept".into(),
                    src: s.iter().map(|x| x.to_string()).collect(),
                    dst: d.iter().map(|x| x.to_string()).collect(),
                })
                .collect(),
        }
    }

    #[test]
    fn destination_forms() {
        let p = policy(&[
            (&["tag:a"], &["*:*"]),
            (&["tag:b"], &["tag:c:22,80-90"]),
            (&["*"], &["tag:d:443"]),
            (&["tag:e"], &["tag:c:*"]),
        ]);
        assert!(allows(&p, "tag:a", "tag:x", 1));
        assert!(allows(&p, "tag:b", "tag:c", 22));
        assert!(allows(&p, "tag:b", "tag:c", 85));
        assert!(!allows(&p, "tag:b", "tag:c", 91));
        assert!(!allows(&p, "tag:b", "tag:d", 22));
        assert!(allows(&p, "tag:b", "tag:d", 443));
        assert!(allows(&p, "alice@example.com", "tag:d", 443));
        assert!(allows(&p, "tag:e", "tag:c", 65535));
        assert!(!allows(&p, "tag:e", "tag:d", 80));
        assert!(!allows(&p, "tag:x", "tag:a", 80));
    }

    #[test]
    fn hujson_comments_and_trailing_commas() {
        let text = "// top\n{\n \"tagOwners\": {\"tag:a\": [\"autogroup:admin\",],},\n /* block */ \"acls\": [\n  // rule\n  {\"action\": \"accept\", \"src\": [\"tag:a\"], \"dst\": [\"http://x//y:*\"],},\n ],\n}\n";
        let p = Policy::parse(text).unwrap();
        assert_eq!(p.tag_owners["tag:a"], vec!["autogroup:admin"]);
        assert_eq!(p.acls[0].dst, vec!["http://x//y:*"]);
    }

    #[test]
    fn rendered_policy_parses_back() {
        let p = policy(&[(&["tag:a"], &["tag:b:1"])]);
        assert_eq!(Policy::parse(&p.render(&["x.toml".into()])).unwrap(), p);
    }
}

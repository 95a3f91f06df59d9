//! `nodeforge tailnet policy` and `nodeforge tailnet mint-key`, run as the
//! real binary on temp project trees.

mod common;

use std::os::unix::fs::PermissionsExt;

use common::{stderr, stdout, Project};
use nodeforge::tailnet::testapi::{FakeApi, CLIENT_ID, CLIENT_SECRET};
use nodeforge::tailnet::{allows, Policy};

const ROLES: &[(&str, &str, &str)] = &[
    (
        "core",
        "tag:core",
        "[[tailscale.allow]]\nto = \"*\"\n\n[[tailscale.accept]]\nfrom = \"*\"\nports = [80, 443]\n\n[[tailscale.accept]]\nfrom = \"fleet\"\nports = [9090, 3100]\n",
    ),
    ("data", "tag:data", ""),
    (
        "ai",
        "tag:ai",
        "[[tailscale.allow]]\nto = \"tag:data\"\nports = [5432, 6379, 9000]\n",
    ),
    (
        "workspace",
        "tag:workspace",
        "[[tailscale.allow]]\nto = \"tag:data\"\nports = [5432, 9000]\n",
    ),
    ("media", "tag:media", ""),
    ("sentinel", "tag:edge", ""),
];

const TAGS: &[&str] = &[
    "tag:core",
    "tag:data",
    "tag:ai",
    "tag:workspace",
    "tag:media",
    "tag:edge",
];
const PORTS: &[u16] = &[
    1, 22, 53, 80, 443, 3000, 3100, 5432, 6333, 6379, 8080, 9000, 9090, 9100, 9187, 65535,
];

/// A project with the AeroVista roles' profiles (tailnet parts only).
fn aerovista() -> Project {
    let p = Project::new();
    p.write(
        "profiles/base.toml",
        &format!(
            "name = \"base\"\nhardware = \"pc\"\n{}",
            common::TAILSCALE_CLIENT
        ),
    );
    for (name, tag, rules) in ROLES {
        p.write(
            &format!("profiles/{name}.toml"),
            &format!(
                "extends = \"base.toml\"\nname = \"{name}\"\n\n[tailscale]\ntags = [\"{tag}\"]\nfleet = \"aerovista\"\n\n{rules}"
            ),
        );
    }
    // A single-host role outside the fleet: not among core's metrics senders.
    p.write(
        "profiles/cloud.toml",
        "extends = \"base.toml\"\nname = \"cloud\"\n[tailscale]\ntags = [\"tag:cloud\"]\n",
    );
    p
}

/// The access the seed describes, written out rule by rule.
fn seed_semantics(src: &str, dst: &str, port: u16) -> bool {
    src == "tag:core"
        || (src == "tag:ai" && dst == "tag:data" && [5432, 6379, 9000].contains(&port))
        || (src == "tag:workspace" && dst == "tag:data" && [5432, 9000].contains(&port))
        || (dst == "tag:core" && [80, 443].contains(&port))
        || (dst == "tag:core" && [9090, 3100].contains(&port) && TAGS.contains(&src))
}

#[test]
fn generated_policy_gives_the_seeds_access_and_nothing_else() {
    let p = aerovista();
    let out = p.nodeforge(&["tailnet", "policy", "profiles", "-o", "policy.hujson"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = std::fs::read_to_string(p.path("policy.hujson")).unwrap();
    let policy = Policy::parse(&text).unwrap();
    let seed = Policy::parse(include_str!("fixtures/aerovista-acl.hujson")).unwrap();
    let mut owners = policy.tag_owners.clone();
    assert_eq!(
        owners.remove("tag:cloud"),
        Some(vec!["autogroup:admin".to_owned()])
    );
    assert_eq!(owners, seed.tag_owners);

    // A user (not a tagged node) is a source too: only `*` rules apply.
    // tag:cloud is outside the fleet: it reaches core's gateway only.
    let sources: Vec<&str> = TAGS
        .iter()
        .copied()
        .chain(["alice@example.com", "tag:cloud"])
        .collect();
    let mut allowed = 0;
    for src in &sources {
        for dst in TAGS {
            for &port in PORTS {
                let want = seed_semantics(src, dst, port);
                assert_eq!(
                    allows(&policy, src, dst, port),
                    want,
                    "generated policy: {src} -> {dst}:{port}\n{text}"
                );
                assert_eq!(
                    allows(&seed, src, dst, port),
                    want,
                    "seed policy: {src} -> {dst}:{port}"
                );
                allowed += want as usize;
            }
        }
    }
    // core: 6 tags × 16 ports; ai 3, workspace 2 on data; 5 other tags ×
    // 4 core ports; the user and tag:cloud 2 each.
    assert_eq!(allowed, 96 + 3 + 2 + 5 * 4 + 2 + 2);
    assert!(allows(&policy, "tag:core", "tag:cloud", 22));

    // The policy carries tests for Tailscale to run when it is saved: the
    // evaluator's view, which the control server then confirms.
    let ai = policy.tests.iter().find(|t| t.src == "tag:ai").unwrap();
    assert!(ai.accept.contains(&"tag:data:6379".to_owned()));
    assert!(ai.accept.contains(&"tag:core:443".to_owned()));
    assert!(ai.deny.contains(&"tag:data:22".to_owned()));
    assert!(ai.deny.contains(&"tag:workspace:5432".to_owned()));
    for t in &policy.tests {
        for d in &t.accept {
            let (host, port) = d.rsplit_once(':').unwrap();
            assert!(
                allows(&seed, &t.src, host, port.parse().unwrap()),
                "{} -> {d}",
                t.src
            );
        }
        for d in &t.deny {
            let (host, port) = d.rsplit_once(':').unwrap();
            assert!(
                !allows(&seed, &t.src, host, port.parse().unwrap()),
                "{} -> {d}",
                t.src
            );
        }
    }

    // Without -o the policy goes to stdout, the same text.
    let out = p.nodeforge(&["tailnet", "policy", "profiles"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(Policy::parse(&stdout(&out)).unwrap(), policy);
}

#[test]
fn unknown_tag_in_a_rule_names_the_profile() {
    let p = aerovista();
    p.write(
        "profiles/ai.toml",
        "extends = \"base.toml\"\nname = \"ai\"\n[tailscale]\ntags = [\"tag:ai\"]\n[[tailscale.allow]]\nto = \"tag:dta\"\nports = [5432]\n",
    );
    let out = p.nodeforge(&["tailnet", "policy", "profiles"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("profiles/ai.toml") && err.contains("`tag:dta`") && err.contains("tag:data"),
        "{err}"
    );
}

/// A role that routes a subnet ([tailnet.routes] in the fleet's table)
/// gets it approved for its tags; a malformed route is located.
#[test]
fn routed_subnets_are_auto_approved_for_the_routing_role() {
    let p = aerovista();
    let base = std::fs::read_to_string(p.path("profiles/base.toml")).unwrap();
    p.write(
        "profiles/base.toml",
        &format!("{base}\n[tailnet]\ndomain = \"tail1.ts.net\"\n[tailnet.routes]\nsentinel = [\"192.168.1.0/24\"]\n"),
    );
    p.write(
        "profiles/sentinel.toml",
        "extends = \"base.toml\"\nname = \"sentinel\"\n[tailscale]\ntags = [\"tag:edge\"]\nfleet = \"aerovista\"\n",
    );
    let out = p.nodeforge(&["tailnet", "policy", "profiles", "-o", "policy.hujson"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let policy = Policy::parse(&std::fs::read_to_string(p.path("policy.hujson")).unwrap()).unwrap();
    assert_eq!(
        policy.auto_approvers.routes,
        [("192.168.1.0/24".to_owned(), vec!["tag:edge".to_owned()])].into()
    );

    p.write(
        "profiles/base.toml",
        &format!("{base}\n[tailnet]\ndomain = \"tail1.ts.net\"\n[tailnet.routes]\nsentinel = [\"192.168.1.1/24\"]\n"),
    );
    let out = p.nodeforge(&["check", "profiles/sentinel.toml"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("profiles/base.toml:")
            && err.contains("route `192.168.1.1/24` has host bits set"),
        "{err}"
    );
}

/// Regression: a misspelt role in [tailnet.routes] was ignored (no
/// routes, no approval), and a gateway whose profile has errors was
/// reported as missing without saying why.
#[test]
fn the_tailnet_table_names_roles_that_exist() {
    let p = aerovista();
    let base = std::fs::read_to_string(p.path("profiles/base.toml")).unwrap();
    p.write(
        "profiles/base.toml",
        &format!("{base}\n[tailnet]\ndomain = \"tail1.ts.net\"\ngateway = \"core\"\n[tailnet.routes]\nsentinal = [\"192.168.1.0/24\"]\n"),
    );
    let out = p.nodeforge(&["check", "profiles/data.toml"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("profiles/base.toml")
            && err.contains("[tailnet.routes] names role `sentinal`")
            && err.contains("roles: ")
            && err.contains("core"),
        "{err}"
    );

    p.write(
        "profiles/base.toml",
        &format!("{base}\n[tailnet]\ndomain = \"tail1.ts.net\"\ngateway = \"core\"\n"),
    );
    let out = p.nodeforge(&["check", "profiles/data.toml"]);
    assert!(out.status.success(), "{}", stderr(&out));
    p.write(
        "profiles/core.toml",
        "extends = \"base.toml\"\nname = \"core\"\n[tailscale]\ntags = [\"tag:core\"]\nfleet = \"aerovista\"\nbogus = 1\n",
    );
    let out = p.nodeforge(&["check", "profiles/data.toml"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("[tailnet] gateway is role `core`")
            && err.contains("left out for their errors")
            && err.contains("core.toml"),
        "{err}"
    );
}

#[test]
fn bad_rules_are_located_in_the_profile() {
    let p = Project::new();
    p.write(
        "profiles/x.toml",
        "name = \"x\"\nhardware = \"pc\"\n[tailscale]\ntags = [\"tag:x\"]\nowners = [\"admins\"]\n[[tailscale.allow]]\nto = \"data\"\n[[tailscale.accept]]\nfrom = \"*\"\nports = [0]\n[[tailscale.accept]]\nfrom = \"*\"\nports = [70000]\n",
    );
    let out = p.nodeforge(&["check", "profiles/x.toml"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("profiles/x.toml:13:10"), "{err}");
    p.write(
        "profiles/x.toml",
        "name = \"x\"\nhardware = \"pc\"\n[tailscale]\ntags = [\"tag:x\"]\nowners = [\"admins\"]\n[[tailscale.allow]]\nto = \"data\"\n[[tailscale.accept]]\nfrom = \"*\"\nports = [0]\n",
    );
    let out = p.nodeforge(&["check", "profiles/x.toml"]);
    let err = stderr(&out);
    for want in [
        "profiles/x.toml:5:11: tag owner `admins`",
        "profiles/x.toml:7:6: allow.to",
        "profiles/x.toml:10:10: port 0",
    ] {
        assert!(err.contains(want), "{want:?} missing from:\n{err}");
    }
}

/// `nodeforge tailnet mint-key core` with the test client against `url`.
fn mint(p: &Project, secret: &str, url: &str, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "tailnet",
        "mint-key",
        "core",
        "--oauth-client-id",
        CLIENT_ID,
        "--oauth-secret-file",
        secret,
        "--api",
        url,
    ];
    args.extend_from_slice(extra);
    p.nodeforge(&args)
}

fn secret_file(p: &Project, secret: &str) -> String {
    p.write("oauth-secret", &format!("{secret}\n"));
    "oauth-secret".into()
}

#[test]
fn mint_key_writes_a_private_key_file_and_never_prints_the_key() {
    let p = aerovista();
    let api = FakeApi::start(&["tag:core", "tag:data"]).unwrap();
    let secret = secret_file(&p, CLIENT_SECRET);
    let url = api.url();
    let out = mint(&p, &secret, &url, &["--expiry", "2h", "-o", "core.key"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let key = std::fs::read_to_string(p.path("core.key")).unwrap();
    let key = key.trim();
    assert!(key.starts_with("tskey-auth-"), "{key}");
    let mode = std::fs::metadata(p.path("core.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let shown = format!("{}{}", stdout(&out), stderr(&out));
    assert!(!shown.contains(key), "the key was printed: {shown}");
    assert!(!shown.contains("s3cr3t"), "the secret was printed: {shown}");
    let (id, _) = api.live_keys().into_iter().next().unwrap();
    assert!(shown.contains(&id), "{shown}");
    let body: serde_json::Value = serde_json::from_str(&api.requests()[1].body).unwrap();
    assert_eq!(
        body["capabilities"]["devices"]["create"]["tags"],
        serde_json::json!(["tag:core"])
    );
    assert_eq!(body["expirySeconds"], 7200);

    // --revoke deletes it.
    let out = p.nodeforge(&[
        "tailnet",
        "mint-key",
        "--revoke",
        &id,
        "--oauth-client-id",
        CLIENT_ID,
        "--oauth-secret-file",
        &secret,
        "--api",
        &url,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(api.live_keys().is_empty());
}

#[test]
fn mint_key_errors_say_what_to_fix() {
    let p = aerovista();
    let api = FakeApi::start(&["tag:core"]).unwrap();
    let url = api.url();
    // No destination for the key: refused before any request.
    let secret = secret_file(&p, CLIENT_SECRET);
    let base = [
        "tailnet",
        "mint-key",
        "--oauth-client-id",
        CLIENT_ID,
        "--api",
        &url,
    ];
    let run = |extra: &[&str]| {
        let mut args: Vec<&str> = base.to_vec();
        args.extend_from_slice(extra);
        p.nodeforge(&args)
    };
    let out = run(&["core", "--oauth-secret-file", &secret]);
    assert!(stderr(&out).contains("-o FILE"), "{}", stderr(&out));
    assert!(api.requests().is_empty());
    // No secret anywhere.
    let out = run(&["core", "-o", "k"]);
    assert!(
        stderr(&out).contains("TS_OAUTH_CLIENT_SECRET"),
        "{}",
        stderr(&out)
    );
    // Wrong secret.
    let wrong = secret_file(&p, "tskey-client-wrong");
    let out = run(&["core", "--oauth-secret-file", &wrong, "-o", "k"]);
    let err = stderr(&out);
    assert!(
        !out.status.success() && err.contains("401") && err.contains(CLIENT_ID),
        "{err}"
    );
    // Tag not permitted for this client.
    let secret = secret_file(&p, CLIENT_SECRET);
    let out = run(&["ai", "--oauth-secret-file", &secret, "-o", "k"]);
    let err = stderr(&out);
    assert!(
        err.contains("tag:ai") && err.contains("not permitted"),
        "{err}"
    );
    // Unknown role.
    let out = run(&["gpu", "--oauth-secret-file", &secret, "-o", "k"]);
    assert!(
        stderr(&out).contains("no profile has name or role `gpu`"),
        "{}",
        stderr(&out)
    );
    assert!(!p.path("k").exists());
    // Unreachable API.
    drop(api);
    let out = run(&["core", "--oauth-secret-file", &secret, "-o", "k"]);
    let err = stderr(&out);
    assert!(
        err.contains("cannot reach the Tailscale API") && err.contains(&url),
        "{err}"
    );
}

#[test]
fn mint_key_replace_removes_the_reflashed_machines_stale_device_first() {
    let p = aerovista();
    let api = FakeApi::start(&["tag:core"]).unwrap();
    api.add_device("44444", "nxcore", "nxcore", false);
    let secret = secret_file(&p, CLIENT_SECRET);
    let url = api.url();
    let replace = |host: &str| mint(&p, &secret, &url, &["--replace", host, "-o", "core.key"]);
    let out = replace("nxcore");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(api.device_ids().is_empty(), "the stale device is gone");
    assert!(
        stderr(&out).contains("removed the stale device nxcore (44444)"),
        "{}",
        stderr(&out)
    );
    let order: Vec<String> = api
        .requests()
        .iter()
        .filter(|r| !r.path.ends_with("/oauth/token"))
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    assert_eq!(
        order,
        [
            "GET /api/v2/tailnet/-/devices",
            "DELETE /api/v2/device/44444",
            "POST /api/v2/tailnet/-/keys"
        ],
        "the device goes before the key is minted"
    );
    // An online machine of that name: refused, and no key is minted.
    api.add_device("55555", "nxcore", "nxcore", true);
    let keys = api.live_keys().len();
    let out = replace("nxcore");
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("connected to the tailnet right now"),
        "{}",
        stderr(&out)
    );
    assert_eq!(api.live_keys().len(), keys);
}

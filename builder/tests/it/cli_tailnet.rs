//! `nodeforge tailnet policy` and `nodeforge tailnet mint-key`, run as the
//! real binary on temp project trees whose roles are the repository's
//! (their `[tailscale]` tables only).

use std::os::unix::fs::PermissionsExt;

use crate::roles::seed_policy;
use crate::support::cli::Cli;
use crate::support::fake::TAILSCALE_CLIENT;
use crate::support::roles::{roles, tags, AccessMatrix};
use crate::support::{repo_root, Project, Run};
use nodeforge::profile::Tailscale;
use nodeforge::tailnet::testapi::{FakeApi, CLIENT_ID, CLIENT_SECRET};
use nodeforge::tailnet::{allows, Policy};

/// `t` written back as a profile's `[tailscale]` table.
fn tailscale_table(t: &Tailscale) -> String {
    let mut s = format!("[tailscale]\ntags = {:?}\n", t.tags);
    if let Some(f) = &t.fleet {
        s += &format!("fleet = \"{f}\"\n");
    }
    let ports = |p: &[u16]| match p {
        [] => String::new(),
        p => format!("ports = {p:?}\n"),
    };
    for a in &t.allow {
        s += &format!(
            "\n[[tailscale.allow]]\nto = \"{}\"\n{}",
            a.to,
            ports(&a.ports)
        );
    }
    for a in &t.accept {
        s += &format!(
            "\n[[tailscale.accept]]\nfrom = \"{}\"\n{}",
            a.from,
            ports(&a.ports)
        );
    }
    s
}

/// A project with the repository's roles, each a profile on a small base
/// with only its name and `[tailscale]` table.
fn aerovista() -> Project {
    let p = Project::new();
    write_base(&p, "");
    for role in roles(&repo_root()) {
        let t = role
            .profile
            .tailscale
            .as_ref()
            .expect("a role has [tailscale]");
        p.write(
            &format!("profiles/{}.toml", role.role()),
            &format!(
                "extends = \"base.toml\"\nname = \"{}\"\n\n{}",
                role.profile.name,
                tailscale_table(t)
            ),
        );
    }
    p
}

/// aerovista's base profile, with `extra` at its end.
fn write_base(p: &Project, extra: &str) {
    p.write(
        "profiles/base.toml",
        &format!("name = \"base\"\nhardware = \"pc\"\n{TAILSCALE_CLIENT}{extra}"),
    );
}

/// aerovista's base profile with a `[tailnet]` table: the domain
/// tail1.ts.net, then `rest`.
fn set_tailnet(p: &Project, rest: &str) {
    write_base(
        p,
        &format!("\n[tailnet]\ndomain = \"tail1.ts.net\"\n{rest}"),
    );
}

/// `nodeforge ARGS` fails naming each of `wants`.
fn fails_with(p: &Project, args: &[&str], wants: &[&str]) -> Run {
    let run = p.fails(args);
    run.stderr_has(wants);
    run
}

#[test]
fn generated_policy_gives_the_seeds_access_and_nothing_else() {
    let p = aerovista();
    p.ok(&["tailnet", "policy", "profiles", "-o", "policy.hujson"]);
    let text = p.read("policy.hujson");
    let policy = Policy::parse(&text).unwrap();
    let seed = seed_policy();
    // The seed's tags have the seed's owners; the roles it does not know
    // have the default owner.
    let mut owners = policy.tag_owners.clone();
    owners.retain(|tag, owner| {
        seed.tag_owners.contains_key(tag) || owner != &["autogroup:admin".to_owned()]
    });
    assert_eq!(owners, seed.tag_owners);

    // Both policies give the matrix's access: the seed's own between its
    // tags, the generated one between all roles. A user (not a tagged
    // node) is a source too: only `*` rules apply to it.
    let roles = roles(p.root());
    let matrix = AccessMatrix::load();
    let all = tags(&roles);
    let sources: Vec<String> = all.iter().cloned().chain([matrix.user.clone()]).collect();
    let seed_tags: Vec<String> = seed.tag_owners.keys().cloned().collect();
    matrix.check(
        &policy,
        &format!("generated policy\n{text}"),
        &roles,
        &sources,
        &all,
    );
    matrix.check(&seed, "the seed's policy", &roles, &sources, &seed_tags);
    matrix.assert_every_row_used(&roles, &sources, &all);
    assert!(allows(&policy, "tag:core", "tag:cloud", 22));

    // The policy carries tests for Tailscale to run when it is saved: the
    // evaluator's view, which the control server then confirms.
    let ai = policy.tests.iter().find(|t| t.src == "tag:ai").unwrap();
    assert!(ai.accept.contains(&"tag:data:6379".to_owned()));
    assert!(ai.accept.contains(&"tag:core:443".to_owned()));
    assert!(ai.deny.contains(&"tag:data:22".to_owned()));
    assert!(ai.deny.contains(&"tag:workspace:5432".to_owned()));
    for t in &policy.tests {
        for (dests, want) in [(&t.accept, true), (&t.deny, false)] {
            for d in dests {
                let (host, port) = d.rsplit_once(':').unwrap();
                let port = port.parse().unwrap();
                if seed.tag_owners.contains_key(host) {
                    assert_eq!(allows(&seed, &t.src, host, port), want, "{} -> {d}", t.src);
                }
            }
        }
    }

    // Without -o the policy goes to stdout, the same text.
    let out = p.ok(&["tailnet", "policy", "profiles"]);
    assert_eq!(Policy::parse(&out.stdout()).unwrap(), policy);
}

#[test]
fn unknown_tag_in_a_rule_names_the_profile() {
    let p = aerovista();
    p.write(
        "profiles/ai.toml",
        "extends = \"base.toml\"\nname = \"ai\"\n[tailscale]\ntags = [\"tag:ai\"]\n[[tailscale.allow]]\nto = \"tag:dta\"\nports = [5432]\n",
    );
    fails_with(
        &p,
        &["tailnet", "policy", "profiles"],
        &["profiles/ai.toml", "`tag:dta`", "tag:data"],
    );
}

/// A role that routes a subnet ([tailnet.routes] in the fleet's table)
/// gets it approved for its tags; a malformed route is located.
#[test]
fn routed_subnets_are_auto_approved_for_the_routing_role() {
    let p = aerovista();
    set_tailnet(&p, "[tailnet.routes]\nsentinel = [\"192.168.1.0/24\"]\n");
    p.write(
        "profiles/sentinel.toml",
        "extends = \"base.toml\"\nname = \"sentinel\"\n[tailscale]\ntags = [\"tag:edge\"]\nfleet = \"aerovista\"\n",
    );
    p.ok(&["tailnet", "policy", "profiles", "-o", "policy.hujson"]);
    let policy = Policy::parse(&p.read("policy.hujson")).unwrap();
    assert_eq!(
        policy.auto_approvers.routes,
        [("192.168.1.0/24".to_owned(), vec!["tag:edge".to_owned()])].into()
    );

    set_tailnet(&p, "[tailnet.routes]\nsentinel = [\"192.168.1.1/24\"]\n");
    fails_with(
        &p,
        &["check", "profiles/sentinel.toml"],
        &[
            "profiles/base.toml:",
            "route `192.168.1.1/24` has host bits set",
        ],
    );
}

/// Regression: a misspelt role in [tailnet.routes] was ignored (no
/// routes, no approval), and a gateway whose profile has errors was
/// reported as missing without saying why.
#[test]
fn the_tailnet_table_names_roles_that_exist() {
    let p = aerovista();
    set_tailnet(
        &p,
        "gateway = \"core\"\n[tailnet.routes]\nsentinal = [\"192.168.1.0/24\"]\n",
    );
    fails_with(
        &p,
        &["check", "profiles/data.toml"],
        &[
            "profiles/base.toml",
            "[tailnet.routes] names role `sentinal`",
            "roles: ",
            "core",
        ],
    );

    set_tailnet(&p, "gateway = \"core\"\n");
    p.ok(&["check", "profiles/data.toml"]);
    p.write(
        "profiles/core.toml",
        "extends = \"base.toml\"\nname = \"core\"\n[tailscale]\ntags = [\"tag:core\"]\nfleet = \"aerovista\"\nbogus = 1\n",
    );
    fails_with(
        &p,
        &["check", "profiles/data.toml"],
        &[
            "[tailnet] gateway is role `core`",
            "left out for their errors",
            "core.toml",
        ],
    );
}

#[test]
fn bad_rules_are_located_in_the_profile() {
    let p = Project::new();
    p.write(
        "profiles/x.toml",
        "name = \"x\"\nhardware = \"pc\"\n[tailscale]\ntags = [\"tag:x\"]\nowners = [\"admins\"]\n[[tailscale.allow]]\nto = \"data\"\n[[tailscale.accept]]\nfrom = \"*\"\nports = [0]\n[[tailscale.accept]]\nfrom = \"*\"\nports = [70000]\n",
    );
    fails_with(
        &p,
        &["check", "profiles/x.toml"],
        &["profiles/x.toml:13:10"],
    );
    p.write(
        "profiles/x.toml",
        "name = \"x\"\nhardware = \"pc\"\n[tailscale]\ntags = [\"tag:x\"]\nowners = [\"admins\"]\n[[tailscale.allow]]\nto = \"data\"\n[[tailscale.accept]]\nfrom = \"*\"\nports = [0]\n",
    );
    fails_with(
        &p,
        &["check", "profiles/x.toml"],
        &[
            "profiles/x.toml:5:11: tag owner `admins`",
            "profiles/x.toml:7:6: allow.to",
            "profiles/x.toml:10:10: port 0",
        ],
    );
}

/// `nodeforge tailnet mint-key core` with the test client against `url`.
fn mint(p: &Project, secret: &str, url: &str, extra: &[&str]) -> Cli {
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
    p.cmd(&args)
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
    let out = mint(&p, &secret, &url, &["--expiry", "2h", "-o", "core.key"]).ok();
    let key = p.read("core.key");
    let key = key.trim();
    assert!(key.starts_with("tskey-auth-"), "{key}");
    let mode = std::fs::metadata(p.path("core.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let shown = format!("{}{}", out.stdout(), out.stderr());
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
    p.ok(&[
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
    let fails = |extra: &[&str], wants: &[&str]| {
        let mut args: Vec<&str> = base.to_vec();
        args.extend_from_slice(extra);
        fails_with(&p, &args, wants)
    };
    fails(&["core", "--oauth-secret-file", &secret], &["-o FILE"]);
    assert!(api.requests().is_empty());
    // No secret anywhere.
    fails(&["core", "-o", "k"], &["TS_OAUTH_CLIENT_SECRET"]);
    // Wrong secret.
    let wrong = secret_file(&p, "tskey-client-wrong");
    fails(
        &["core", "--oauth-secret-file", &wrong, "-o", "k"],
        &["401", CLIENT_ID],
    );
    // Tag not permitted for this client.
    let secret = secret_file(&p, CLIENT_SECRET);
    fails(
        &["ai", "--oauth-secret-file", &secret, "-o", "k"],
        &["tag:ai", "not permitted"],
    );
    // Unknown role.
    fails(
        &["gpu", "--oauth-secret-file", &secret, "-o", "k"],
        &["no profile has name or role `gpu`"],
    );
    assert!(!p.path("k").exists());
    // Unreachable API.
    drop(api);
    fails(
        &["core", "--oauth-secret-file", &secret, "-o", "k"],
        &["cannot reach the Tailscale API", &url],
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
    replace("nxcore")
        .ok()
        .stderr_has(&["removed the stale device nxcore (44444)"]);
    assert!(api.device_ids().is_empty(), "the stale device is gone");
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
    replace("nxcore")
        .fails()
        .stderr_has(&["connected to the tailnet right now"]);
    assert_eq!(api.live_keys().len(), keys);
}

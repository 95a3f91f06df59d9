//! `[firewall]`: merged along the extends chain, refused when it cannot
//! work, printed by `nodeforge plan`, and baked into the image as an
//! nftables ruleset (valid for the host's nft) and an enabled unit.

use std::process::Command;

use crate::support::fake::{build_args, install_fake_rootfs, write_agent};
use crate::support::image::Ext4;
use crate::support::{require_root, require_tool, Project, KEY};

const PARENT: &str = "name = \"parent\"\nhardware = \"pc\"\npackages = [\"nftables\"]\n\
[firewall]\nlan_tcp = [22, 80]\nlan_udp = [53]\n";

fn project(child_firewall: &str) -> Project {
    let p = Project::new();
    p.write("profiles/parent.toml", PARENT);
    p.write(
        "profiles/x.toml",
        &format!(
            "extends = \"parent.toml\"\nname = \"x\"\nrole = \"test\"\n[[users]]\nname = \"admin\"\n\
             sudo = true\nauthorized_keys = [\"{KEY}\"]\n[disk]\nsize = \"800MiB\"\nesp_size = \"64MiB\"\n\
             {child_firewall}"
        ),
    );
    p
}

#[test]
fn a_role_replaces_the_lists_it_names_and_keeps_the_others() {
    let p = project("[firewall]\nlan_tcp = []\n");
    let plan = p.ok(&["plan", "--json", "profiles/x.toml"]).json();
    let fw = &plan["profile"]["firewall"];
    assert_eq!(fw["lan_tcp"], serde_json::json!([]), "{plan:#}");
    assert_eq!(fw["lan_udp"], serde_json::json!([53]), "{plan:#}");
    p.ok(&["plan", "profiles/x.toml"]).stdout_has(&[
        "firewall\n",
        "  LAN (every interface but those below): TCP none; UDP 53; UDP 41641 (Tailscale); ICMP; \
         everything else refused, Docker's published ports included\n",
        "  tailscale0: open; the tailnet policy decides",
    ]);
}

#[test]
fn the_repositorys_data_role_prints_its_policy() {
    let p = Project::repo();
    p.ok(&["plan", "profiles/data.toml"]).stdout_has(&[
        "firewall\n",
        "  LAN (every interface but those below): TCP 22; UDP none;",
    ]);
    p.ok(&["plan", "profiles/sentinel.toml"])
        .stdout_has(&["  LAN (every interface but those below): TCP 22, 53; UDP 53;"]);
    p.ok(&["plan", "profiles/base.toml"])
        .stdout_has(&["firewall\n  none: the profile has no [firewall]"]);
}

#[test]
fn bad_firewalls_are_refused_naming_what_to_fix() {
    let p = project("[firewall]\nlan_tcp = [0]\n");
    p.fails(&["check", "profiles/x.toml"])
        .stderr_has(&["profiles/x.toml:", "port 0 is not a port: use 1 to 65535"]);
    let p = project("[firewall]\nlan_udp = [70000]\n");
    p.fails(&["check", "profiles/x.toml"])
        .stderr_has(&["profiles/x.toml:"]);
    let p = project("[firewall]\nlan_sctp = [1]\n");
    p.fails(&["check", "profiles/x.toml"])
        .stderr_has(&["profiles/x.toml:", "lan_sctp"]);
    let p = project("");
    p.edit("profiles/parent.toml", |t| {
        t.replace("packages = [\"nftables\"]\n", "")
    });
    p.fails(&["check", "profiles/x.toml"])
        .stderr_has(&["the profile has a [firewall] but does not install nftables"]);
}

#[test]
fn the_image_loads_the_ruleset_before_the_network_and_nft_accepts_it() {
    require_root();
    require_tool("debugfs", "e2fsprogs");
    require_tool("nft", "nftables");
    let p = project("");
    write_agent(&p);
    install_fake_rootfs(&p, "profiles/x.toml");
    p.ok(&build_args("profiles/x.toml", &["--quiet"]));
    let root = Ext4::root_of(&p.path("out/x.img"), p.root());
    let rules = root.text("/etc/nodeforge/firewall.nft");
    assert!(rules.contains("tcp dport { 22, 80 } accept"), "{rules}");
    assert!(rules.contains("udp dport 53 accept"), "{rules}");
    let unit = root.text("/etc/systemd/system/nodeforge-firewall.service");
    assert!(
        unit.contains("Before=network-pre.target docker.service"),
        "{unit}"
    );
    let wants = root.debugfs("ls -l /etc/systemd/system/sysinit.target.wants");
    assert!(wants.contains("nodeforge-firewall.service"), "{wants}");
    // The engine requires it: no rules, no published ports.
    let requires = root.debugfs("ls -l /etc/systemd/system/docker.service.requires");
    assert!(
        requires.contains("nodeforge-firewall.service"),
        "{requires}"
    );

    // The kernel's own parser, without applying anything (-c).
    let file = p.write("firewall.nft", &rules);
    let out = Command::new("nft")
        .args(["-c", "-f"])
        .arg(&file)
        .output()
        .expect("running nft");
    assert!(
        out.status.success(),
        "nft -c -f rejected the ruleset:\n{}\n{rules}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A profile with one stack whose `web` service publishes `ports`.
fn stack_project(firewall: &str, ports: &str) -> Project {
    let p = Project::new();
    p.write(
        "profiles/x.toml",
        &format!(
            "name = \"x\"\nhardware = \"pc\"\n\
             packages = [\"docker.io\", \"docker-cli\", \"docker-compose\", \"nftables\"]\n\
             {firewall}\n[[stacks]]\nname = \"site\"\ncompose = \"site/compose.yaml.tera\"\n\
             images = [\"nginx:1.27.2-alpine\"]\n"
        ),
    );
    p.write(
        "stacks/site/compose.yaml.tera",
        &format!(
            "services:\n  web:\n    image: {{{{ images[\"nginx:1.27.2-alpine\"] }}}}\n    ports:\n{ports}"
        ),
    );
    p
}

#[test]
fn check_refuses_a_port_the_lan_would_reach_undeclared_naming_stack_service_and_port() {
    // No firewall: only loopback may be published.
    let p = stack_project("", "      - \"8080:80\"\n");
    p.fails(&["check", "profiles/x.toml"]).stderr_has(&[
        "profiles/x.toml: stack `site`, service `web` publishes tcp port 8080 on every address, \
         and the profile has no [firewall], so the LAN reaches it",
        "1 of 1 profiles have errors",
    ]);
    stack_project("", "      - \"127.0.0.1:8080:80\"\n").ok(&["check", "profiles/x.toml"]);

    // With one, every address is the tailnet's (the LAN is refused by the
    // rules); a LAN address needs the port declared.
    let fw = "[firewall]\nlan_tcp = [22]\n";
    stack_project(fw, "      - \"8080:80\"\n").ok(&["check", "profiles/x.toml"]);
    let p = stack_project(fw, "      - \"192.168.1.5:8443:443\"\n");
    p.fails(&["check", "profiles/x.toml"]).stderr_has(&[
        "stack `site`, service `web` publishes tcp port 8443 on 192.168.1.5, a LAN address, \
         but [firewall] lan_tcp does not declare 8443",
    ]);
    let fw = "[firewall]\nlan_tcp = [22, 8443]\n";
    stack_project(fw, "      - \"192.168.1.5:8443:443\"\n").ok(&["check", "profiles/x.toml"]);
}

#[test]
fn every_profile_in_the_repository_passes_the_port_check() {
    let p = Project::repo();
    let mut profiles: Vec<String> = Vec::new();
    for dir in ["profiles", "qemu-tests/profiles"] {
        for e in std::fs::read_dir(p.path(dir)).expect("listing profiles") {
            let path = e.expect("a directory entry").path();
            // Lock files (written by `nodeforge lock` and the boot tests)
            // sit beside the profiles.
            let name = path.to_string_lossy();
            if name.ends_with(".toml") && !name.ends_with(".lock.toml") {
                profiles.push(path.to_string_lossy().into_owned());
            }
        }
    }
    let mut args = vec!["check".to_owned()];
    args.extend(profiles);
    p.ok(&args);
}

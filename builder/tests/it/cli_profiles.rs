//! `nodeforge check`/`plan`/`build` on broken profiles: each problem is
//! named with file, line and column, before anything is built.

use crate::support::cli::args_with_files;
use crate::support::fake::{BUILD_X, TAILSCALE_CLIENT};
use crate::support::{fixture_fpr, Project, FIXTURE_KEY, KEY};

/// `nodeforge check PROFILE` fails, its stderr holding each of `wants`.
fn check_fails_with(p: &Project, profile: &str, wants: &[&str]) {
    p.fails(&["check", profile]).stderr_has(wants);
}

#[test]
fn valid_profile_checks_and_plans() {
    let p = Project::new();
    p.write("profiles/base.toml", &format!(
        "name = \"base\"\nhardware = \"pc\"\noverlays = [\"base\"]\npackages = [\"sudo\"]\n\n[[users]]\nname = \"admin\"\nsudo = true\nauthorized_keys = [\"{KEY}\"]\n"
    ));
    p.write("profiles/core.toml", "extends = \"base.toml\"\nname = \"core\"\nrole = \"core\"\npackages = [\"curl\"]\n[disk]\nsize = \"3GiB\"\n");
    p.ok(&["check", "profiles/base.toml", "profiles/core.toml"]);
    let plan = p.ok(&["plan", "--json", "profiles/core.toml"]).json();
    let pkgs: Vec<&str> = plan["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    for want in ["curl", "sudo", "linux-image-amd64", "systemd"] {
        assert!(pkgs.contains(&want), "{want} missing from {pkgs:?}");
    }
    assert_eq!(plan["profile"]["role"], "core");
    assert_eq!(plan["profile"]["users"][0]["name"], "admin");
    assert_eq!(plan["profile"]["disk"]["size"], "3GiB");
    assert_eq!(plan["overlay_files"][0]["target"], "/etc/role");
    assert_eq!(plan["layout"]["partitions"].as_array().unwrap().len(), 2);
}

/// A project holding `files` (path, text) fails `nodeforge check PROFILE`
/// naming each of `wants`.
fn project_fails_check(files: &[(&str, &str)], profile: &str, wants: &[&str]) {
    let p = Project::new();
    for (path, text) in files {
        p.write(path, text);
    }
    check_fails_with(&p, profile, wants);
}

/// A project whose `profiles/x.toml` is `text` fails `check` naming each of
/// `wants`.
fn x_fails_with(text: &str, wants: &[&str]) {
    project_fails_check(&[("profiles/x.toml", text)], "profiles/x.toml", wants);
}

#[test]
fn unknown_key_is_named_with_line_and_column() {
    x_fails_with(
        "name = \"x\"\nhardware = \"pc\"\npakages = [\"vim\"]\n",
        &["profiles/x.toml:3:1:", "unknown field `pakages`"],
    );
}

#[test]
fn wrong_type_is_named_with_line() {
    x_fails_with(
        "name = \"x\"\nhardware = \"pc\"\n\n[disk]\nsize = 2048\n",
        &["profiles/x.toml:5:8:", "invalid type"],
    );
}

#[test]
fn bad_size_is_named_with_line() {
    x_fails_with(
        "name = \"x\"\nhardware = \"pc\"\n[disk]\nsize = \"two gigs\"\n",
        &["profiles/x.toml:4:8:", "not a size"],
    );
}

#[test]
fn missing_hardware_file_is_named() {
    x_fails_with(
        "name = \"x\"\nhardware = \"raspberry-pi-9\"\n",
        &[
            "profiles/x.toml:2:12:",
            "hardware `raspberry-pi-9` not found",
            "hardware/raspberry-pi-9.toml",
        ],
    );
}

#[test]
fn several_problems_are_reported_together() {
    x_fails_with(
        "name = \"x\"\nhardware = \"pc\"\nhostname = \"-bad-\"\npackages = [\"Not A Package\"]\noverlays = [\"nope\"]\n",
        &[
            "x.toml:3:12: hostname",
            "x.toml:4:13:",
            "x.toml:5:13: overlay `nope` not found",
        ],
    );
}

#[test]
fn missing_name_and_hardware_are_explained() {
    x_fails_with("packages = [\"vim\"]\n", &["no `name`", "no `hardware`"]);
}

#[test]
fn disk_too_small_for_esp_is_refused() {
    x_fails_with(
        "name = \"x\"\nhardware = \"pc\"\n[disk]\nsize = \"300MiB\"\nesp_size = \"256MiB\"\n",
        &["x.toml:4:8:", "no room for a root filesystem"],
    );
}

#[test]
fn broken_hardware_file_is_named() {
    project_fails_check(
        &[
            (
                "hardware/odd.toml",
                "arch = \"sparc\"\nfirmware = \"uefi\"\n",
            ),
            ("profiles/x.toml", "name = \"x\"\nhardware = \"odd\"\n"),
        ],
        "profiles/x.toml",
        &["hardware/odd.toml:1:8:", "sparc"],
    );
}

#[test]
fn malformed_ssh_key_is_named_with_its_line() {
    x_fails_with(
        &format!("name = \"x\"\nhardware = \"pc\"\n[[users]]\nname = \"ops\"\nauthorized_keys = [\n  \"{KEY}\",\n  \"ssh-ed25519 AAAAnotbase64!!! broken@laptop\",\n]\n"),
        &["profiles/x.toml:7:3:", "authorized key #2 of user `ops`"],
    );
}

#[test]
fn extends_cycle_is_refused() {
    project_fails_check(
        &[
            (
                "profiles/a.toml",
                "extends = \"b.toml\"\nname = \"a\"\nhardware = \"pc\"\n",
            ),
            ("profiles/b.toml", "extends = \"a.toml\"\nname = \"b\"\n"),
        ],
        "profiles/a.toml",
        &["extends cycle", "a.toml -> ", "b.toml:1:11:"],
    );
}

#[test]
fn missing_extends_target_is_named() {
    project_fails_check(
        &[(
            "profiles/a.toml",
            "extends = \"nope.toml\"\nname = \"a\"\nhardware = \"pc\"\n",
        )],
        "profiles/a.toml",
        &["profiles/a.toml:1:11:", "extends `nope.toml`"],
    );
}

#[test]
fn missing_profile_file_is_named() {
    check_fails_with(
        &Project::new(),
        "profiles/absent.toml",
        &["profiles/absent.toml", "cannot read"],
    );
}

#[test]
fn build_of_broken_profile_builds_nothing() {
    let p = Project::new();
    p.write(
        "profiles/x.toml",
        "name = \"x\"\nhardware = \"pc\"\nbogus = 1\n",
    );
    p.fails(BUILD_X).stderr_has(&["profiles/x.toml:3:1:"]);
    assert!(
        !p.path("out").exists(),
        "build created its output directory"
    );
    assert!(!p.path("cache").exists(), "build created its cache");
}

#[test]
fn repository_profiles_all_check() {
    let repo = Project::repo();
    let profiles = crate::support::roles::profile_files(repo.root());
    assert!(!profiles.is_empty());
    let out = repo.ok(&args_with_files(&["check"], &profiles));
    assert_eq!(
        out.stdout()
            .lines()
            .filter(|l| l.starts_with("ok "))
            .count(),
        profiles.len(),
        "{}",
        out.report()
    );
}

#[test]
fn repository_hardware_files_all_check() {
    let dir = crate::support::repo_root().join("hardware");
    let mut hardware: Vec<std::path::PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("listing {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    hardware.sort();
    let names: Vec<String> = hardware
        .iter()
        .map(|h| h.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    for want in ["rpi4", "rpi5", "arm64-virt", "x86-64-uefi"] {
        assert!(names.iter().any(|n| n == want), "hardware/{want}.toml");
    }
    let p = Project::new();
    for hw in &hardware {
        let profile = p.write(
            "profiles/hw.toml",
            &format!("name = \"hw\"\nhardware = \"{}\"\n", hw.display()),
        );
        let stem = hw.file_stem().unwrap().to_string_lossy();
        let table = if stem.starts_with("rpi") {
            "MBR signature"
        } else {
            "GPT "
        };
        p.ok(&["plan", profile.to_str().unwrap()])
            .stdout_has(&[table]);
    }
}

#[test]
fn an_included_fragment_overrides_a_repository_and_the_lock_stays_beside_the_profile() {
    let p = Project::new();
    p.write(
        "profiles/node.toml",
        &format!("name = \"node\"\nhardware = \"pc\"\n{TAILSCALE_CLIENT}"),
    );
    p.write("keys/test.asc", FIXTURE_KEY);
    let fpr = fixture_fpr();
    p.write(
        "profiles/fragments/repo.toml",
        &format!("[[apt.repositories]]\nname = \"tailscale\"\nurl = \"file:../../repo\"\nsuite = \"trixie\"\ncomponents = [\"main\"]\nkey = \"../../keys/test.asc\"\nfingerprint = \"{fpr}\"\n"),
    );
    p.write(
        "profiles/t.toml",
        "extends = \"node.toml\"\nname = \"t\"\ninclude = [\"fragments/repo.toml\"]\n[tailscale]\ntags = [\"tag:t\"]\n",
    );
    let plan = p.ok(&["plan", "--json", "profiles/t.toml"]).json();
    let repos = plan["profile"]["apt"]["repositories"].as_array().unwrap();
    assert_eq!(
        repos.len(),
        1,
        "the fragment's entry replaced node's: {repos:?}"
    );
    let repo_dir = p.path("repo");
    assert_eq!(repos[0]["url"], format!("file:{}", repo_dir.display()));
    assert_eq!(repos[0]["fingerprint"], fpr);
    let lock = plan["lock_path"].as_str().unwrap();
    assert!(lock.ends_with("profiles/t.lock.toml"), "{lock}");

    // A fragment may not pull in more files.
    p.write(
        "profiles/fragments/bad.toml",
        "extends = \"../node.toml\"\n",
    );
    p.write(
        "profiles/u.toml",
        "extends = \"node.toml\"\nname = \"u\"\ninclude = [\"fragments/bad.toml\"]\n",
    );
    check_fails_with(
        &p,
        "profiles/u.toml",
        &[
            "profiles/fragments/bad.toml:1:",
            "may not extend or include",
        ],
    );
    // A missing fragment is named where the profile names it.
    p.write(
        "profiles/v.toml",
        "extends = \"node.toml\"\nname = \"v\"\ninclude = [\"fragments/none.toml\"]\n",
    );
    check_fails_with(
        &p,
        "profiles/v.toml",
        &["profiles/v.toml:3:", "fragments/none.toml"],
    );
}

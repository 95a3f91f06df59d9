//! `[[storage]]` rules through `nodeforge check` and `plan`: bad rules are
//! named with file and line, good ones reach the plan and the agent's
//! baked config.

use crate::support::Project;

const TOOLS: &str = "packages = [\"e2fsprogs\", \"fdisk\", \"util-linux\"]\n";

fn profile(rules: &str) -> String {
    format!("name = \"x\"\nhardware = \"pc\"\n{TOOLS}{rules}")
}

fn check_fails_with(rules: &str, wants: &[&str]) {
    let p = Project::new();
    p.write("profiles/x.toml", &profile(rules));
    p.fails(&["check", "profiles/x.toml"]).stderr_has(wants);
}

#[test]
fn rule_without_a_matcher_is_named() {
    check_fails_with(
        "\n[[storage]]\nlabel = \"data\"\nmount = \"/srv/data\"\n",
        &["profiles/x.toml:6:9:", "storage `data`: no disk matcher"],
    );
    // An empty match table says nothing either.
    check_fails_with(
        "\n[[storage]]\nlabel = \"data\"\nmount = \"/srv/data\"\n[storage.match]\n",
        &["profiles/x.toml:", "no disk matcher"],
    );
}

#[test]
fn bad_size_is_named_with_line() {
    check_fails_with(
        "\n[[storage]]\nlabel = \"data\"\nmount = \"/srv/data\"\n[storage.match]\nmin_size = \"lots\"\n",
        &["profiles/x.toml:9:12:", "not a size"],
    );
}

#[test]
fn relative_mount_point_is_named() {
    check_fails_with(
        "\n[[storage]]\nlabel = \"data\"\nmount = \"srv/data\"\n[storage.match]\nlargest = true\n",
        &[
            "profiles/x.toml:7:9:",
            "mount point `srv/data` must be an absolute path",
        ],
    );
}

#[test]
fn duplicate_labels_and_mount_points_are_named() {
    let rule = |label: &str, mount: &str| {
        format!("\n[[storage]]\nlabel = \"{label}\"\nmount = \"{mount}\"\n[storage.match]\nlargest = true\n")
    };
    check_fails_with(
        &(rule("data", "/srv/a") + &rule("data", "/srv/b")),
        &[
            "profiles/x.toml:12:9:",
            "storage label `data` is used twice",
        ],
    );
    check_fails_with(
        &(rule("a", "/srv/data") + &rule("b", "/srv/data")),
        &[
            "profiles/x.toml:13:9:",
            "mount point /srv/data is already storage `a`'s",
        ],
    );
}

#[test]
fn bad_label_and_filesystem_are_named() {
    check_fails_with(
        "\n[[storage]]\nlabel = \"has space\"\nmount = \"/srv/d\"\n[storage.match]\nlargest = true\n",
        &["profiles/x.toml:6:9:", "storage label `has space`"],
    );
    check_fails_with(
        "\n[[storage]]\nlabel = \"d\"\nfilesystem = \"ntfs\"\nmount = \"/srv/d\"\n[storage.match]\nlargest = true\n",
        &["profiles/x.toml:7:14:", "unknown variant `ntfs`"],
    );
}

#[test]
fn missing_tools_are_named() {
    let p = Project::new();
    p.write(
        "profiles/x.toml",
        "name = \"x\"\nhardware = \"pc\"\n[[storage]]\nlabel = \"d\"\nfilesystem = \"xfs\"\nmount = \"/srv/d\"\n[storage.match]\nlargest = true\n",
    );
    p.fails(&["check", "profiles/x.toml"]).stderr_has(&[
        "storage rules but its packages",
        "fdisk, util-linux, xfsprogs",
    ]);
}

#[test]
fn good_rule_reaches_the_plan_and_a_child_replaces_it_by_label() {
    let p = Project::new();
    p.write(
        "profiles/base.toml",
        &profile("\n[[storage]]\nlabel = \"data\"\nmount = \"/srv/data\"\n[storage.match]\nlargest = true\n"),
    );
    p.write(
        "profiles/child.toml",
        "extends = \"base.toml\"\nname = \"child\"\n[[storage]]\nlabel = \"data\"\nmount = \"/srv/bulk\"\noptions = [\"noatime\"]\n[storage.match]\nserial = \"WD-*\"\nmin_size = \"4TiB\"\n",
    );
    let plan = p.ok(&["plan", "--json", "profiles/child.toml"]).json();
    let rules = plan["profile"]["storage"].as_array().unwrap();
    assert_eq!(rules.len(), 1, "{rules:?}");
    assert_eq!(rules[0]["mount"], "/srv/bulk");
    assert_eq!(rules[0]["filesystem"], "ext4");
    assert_eq!(rules[0]["match"]["serial"], "WD-*");
    assert_eq!(rules[0]["match"]["min_bytes"], 4u64 << 40);
    p.ok(&["plan", "profiles/child.toml"])
        .stdout_has(&["storage data: ext4 at /srv/bulk (formatted only if blank)"]);
}

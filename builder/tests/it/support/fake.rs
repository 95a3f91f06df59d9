//! Builds without a network: a small fake base rootfs stored in a
//! project's cache under the key the plan computes (so every later step
//! runs for real), fake host tools on PATH, and the usual test profile.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{make_executable, write_file, Project, Run, KEY};

/// What a profile that joins a tailnet needs (profiles/node.toml has the
/// same): the client and Tailscale's repository, its key by URL (nothing
/// is fetched unless a build runs).
pub const TAILSCALE_CLIENT: &str = "packages = [\"tailscale\"]\n\
[[apt.repositories]]\nname = \"tailscale\"\nurl = \"https://pkgs.tailscale.com/stable/debian\"\n\
suite = \"trixie\"\ncomponents = [\"main\"]\n\
key_url = \"https://pkgs.tailscale.com/stable/debian/trixie.noarmor.gpg\"\n\
fingerprint = \"2596A99EAAB33821893C0A79458CA832957F5868\"\n";

/// The SOURCE_DATE_EPOCH of the tests that fix one.
pub const TEST_EPOCH: &str = "1763600000";

/// The files of the fake amd64 base rootfs: accounts, dpkg status, a
/// kernel, an initrd and systemd-boot.
pub const BASE_TREE: &[(&str, &str)] = &[
    ("etc/passwd", "root:x:0:0:root:/root:/bin/bash\n"),
    ("etc/group", "root:x:0:\nsudo:x:27:\nshadow:x:42:\n"),
    ("etc/shadow", "root:*:19000:0:99999:7:::\n"),
    ("etc/gshadow", "root:*::\nsudo:*::\n"),
    ("etc/skel/.profile", "# profile\n"),
    (
        "var/lib/dpkg/status",
        "Package: systemd\nStatus: install ok installed\nArchitecture: amd64\nVersion: 257.9-1\n\n",
    ),
    ("boot/vmlinuz-6.1.0-test", "kernel"),
    ("boot/initrd.img-6.1.0-test", "initrd"),
    ("usr/lib/systemd/boot/efi/systemd-bootx64.efi", "sd-boot"),
];

/// Writes `files` (relative path, text) below `dir`.
pub fn write_tree(dir: &Path, files: &[(&str, &str)]) {
    for (rel, text) in files {
        write_file(&dir.join(rel), text);
    }
}

/// `nodeforge build profiles/x.toml` into out/ with cache/ and the fake
/// agent file `agent` (see [`install_fake_rootfs`]).
pub const BUILD_X: &[&str] = &[
    "build",
    "profiles/x.toml",
    "--output",
    "out",
    "--cache-dir",
    "cache",
    "--agent",
    "agent",
];

/// [`BUILD_X`] for `profile`, with `extra` arguments.
pub fn build_args<'a>(profile: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = BUILD_X.to_vec();
    args[1] = profile;
    args.extend_from_slice(extra);
    args
}

/// Runs [`build_args`]; the build must succeed.
pub fn offline_build(p: &Project, profile: &str, extra: &[&str]) -> Run {
    p.ok(&build_args(profile, extra))
}

/// The `Date:` of the fake archive's Release file ([`write_mirror`]),
/// and that time in seconds (`date -u -d "$MIRROR_DATE" +%s`).
pub const MIRROR_DATE: &str = "Sat, 21 Nov 2026 09:15:44 UTC";
pub const MIRROR_EPOCH: i64 = 1_795_252_544;

/// A local archive with only trixie's InRelease, which the fake builds'
/// plans read their epoch from (nothing else reads the mirror: the
/// rootfs comes from the cache), so they need no network.
pub fn write_mirror(p: &Project) {
    p.write(
        "mirror/dists/trixie/InRelease",
        &format!("Origin: Debian\nSuite: stable\nCodename: trixie\nDate: {MIRROR_DATE}\n"),
    );
}

/// The fake agent file every offline build bakes.
pub fn write_agent(p: &Project) {
    p.write("agent", "#!/bin/sh\necho fake agent\n");
}

/// A project with `profiles/x.toml` (one sudo user, an overlay), a fake
/// agent file `agent` and the fake rootfs in its cache: what [`BUILD_X`]
/// builds.
pub fn x_project() -> Project {
    let p = Project::new();
    write_mirror(&p);
    p.write(
        "profiles/x.toml",
        &format!("name = \"x\"\nrole = \"test\"\nhardware = \"pc\"\noverlays = [\"base\"]\n[[users]]\nname = \"admin\"\nsudo = true\nauthorized_keys = [\"{KEY}\"]\n[debian]\nmirror = \"file://{}\"\n[disk]\nsize = \"800MiB\"\nesp_size = \"64MiB\"\n", p.path("mirror").display()),
    );
    write_agent(&p);
    install_fake_rootfs(&p, "profiles/x.toml");
    p
}

/// Writes [`BASE_TREE`] to `p`'s fake-rootfs/ and stores it as the cached
/// base rootfs of `profile`, so a build runs every later step for real
/// without mmdebstrap. (A profile on the default mirror still asks it for
/// its Release date; x_project's has a local archive.)
pub fn install_fake_rootfs(p: &Project, profile: &str) {
    let tree = p.path("fake-rootfs");
    write_tree(&tree, BASE_TREE);
    store_rootfs_tree(p, &tree, profile);
}

/// Stores `tree` as the cached base rootfs of `profile` in `p`'s cache/,
/// under the keys the plan computes without an epoch and with
/// [`TEST_EPOCH`] (the epoch is part of the key).
pub fn store_rootfs_tree(p: &Project, tree: &Path, profile: &str) {
    std::fs::create_dir_all(p.path("cache/rootfs")).expect("creating cache/rootfs");
    for epoch in [None, Some(TEST_EPOCH)] {
        // The builds' own cache: an archive that does not answer falls
        // back to the date that cache remembers, as the builds do.
        let plan = p.cmd(&["plan", "--json", profile, "--cache-dir", "cache"]);
        let plan = match epoch {
            Some(e) => plan.env("SOURCE_DATE_EPOCH", e),
            None => plan.env_remove("SOURCE_DATE_EPOCH"),
        };
        let key = rootfs_key(&plan.ok());
        let tar = p.path(&format!("cache/rootfs/{key}.tar.zst"));
        let ok = Command::new("tar")
            .arg("--zstd")
            .arg("-cf")
            .arg(&tar)
            .arg("-C")
            .arg(tree)
            .arg(".")
            .status()
            .unwrap_or_else(|e| panic!("running tar: {e}"));
        assert!(
            ok.success(),
            "packing {} into {}",
            tree.display(),
            tar.display()
        );
    }
}

/// The `rootfs_key` of a `plan --json` run.
pub fn rootfs_key(plan: &Run) -> String {
    plan.json()["rootfs_key"]
        .as_str()
        .unwrap_or_else(|| panic!("no rootfs_key\n{}", plan.report()))
        .to_owned()
}

/// Writes `fakebin/NAME` running `script` under sh; returns fakebin/, to
/// put in front of PATH.
pub fn fake_tool(p: &Project, name: &str, script: &str) -> PathBuf {
    let f = p.write(
        &format!("fakebin/{name}"),
        &format!("#!/bin/sh\n{script}\n"),
    );
    make_executable(&f);
    p.path("fakebin")
}

//! Regression (#24): a base rootfs cached by a build without
//! SOURCE_DATE_EPOCH was reused by a build with one, so the image depended
//! on the cache's history. The bootstrap here is a stand-in `mmdebstrap`
//! on PATH that packs a small fake tree, so the test shows the key logic
//! without a network; benches/epoch-cache.sh does the same with the real
//! bootstrap.
//!
//! And (#21) reproducible by default: without the variable, the epoch is
//! the archive's Release date (here a local archive's).

use crate::support::fake::{
    build_args, fake_tool, install_fake_rootfs, x_project, MIRROR_DATE, MIRROR_EPOCH,
};
use crate::support::{require_root, Project};

const EPOCH: &str = "1764547200";

/// x_project with a bootstrap that packs the same fake tree and logs each
/// run's epoch.
fn project() -> Project {
    let p = x_project();
    let tree = p.path("fake-rootfs");
    let log = p.path("mmdebstrap.log");
    let script = format!(
        "echo \"epoch=${{SOURCE_DATE_EPOCH:-none}}\" >> '{}'\n\
         for a in \"$@\"; do case \"$a\" in *.tar.zst) out=$a;; esac; done\n\
         exec tar --zstd -cf \"$out\" -C '{}' .",
        log.display(),
        tree.display()
    );
    fake_tool(&p, "mmdebstrap", &script);
    p
}

/// A project whose archive gives no date: its builds without the variable
/// have no epoch (its cache holds the entry "a" leaves: made with none).
fn project_without_archive_date() -> Project {
    let p = project();
    std::fs::remove_file(p.path("mirror/dists/trixie/InRelease")).unwrap();
    install_fake_rootfs(&p, "profiles/x.toml");
    p
}

/// Builds into `out` and returns (rootfs step status, image sha256).
fn build(p: &Project, out: &str, epoch: Option<&str>, extra: &[&str]) -> (String, String) {
    let mut args = build_args("profiles/x.toml", &["--json"]);
    let at = args.iter().position(|a| *a == "--output").unwrap();
    args[at + 1] = out;
    args.extend_from_slice(extra);
    let cmd = p.cmd(&args).path_prepend(&p.path("fakebin"));
    let cmd = match epoch {
        Some(e) => cmd.env("SOURCE_DATE_EPOCH", e),
        None => cmd.env_remove("SOURCE_DATE_EPOCH"),
    };
    let status = cmd.ok().steps().status("rootfs").to_owned();
    let sha = p.read(&format!("{out}/x.img.sha256"));
    (status, sha.split_whitespace().next().unwrap().to_owned())
}

#[test]
fn a_rootfs_cached_without_an_epoch_is_not_reused_by_a_build_with_one() {
    require_root();
    let p = project_without_archive_date();
    let (a, _) = build(&p, "a", None, &[]);
    assert_eq!(a, "reused", "build a takes the entry made without an epoch");
    let (b, b_sha) = build(&p, "b", Some(EPOCH), &[]);
    assert_eq!(b, "done", "build b must bootstrap anew, not reuse a's tree");
    let (c, c_sha) = build(&p, "c", Some(EPOCH), &["--no-cache"]);
    assert_eq!(c, "done");
    assert_eq!(b_sha, c_sha, "b (cache of a) and c (--no-cache) differ");
    let log = p.read("mmdebstrap.log");
    assert_eq!(log, format!("epoch={EPOCH}\nepoch={EPOCH}\n"));
    // A build with the epoch again reuses b's entry, and the reverse
    // direction holds too: no epoch takes a's.
    assert_eq!(build(&p, "d", Some(EPOCH), &[]).0, "reused");
    assert_eq!(build(&p, "e", None, &[]).0, "reused");
    // `cache ls` shows each rootfs entry's epoch.
    p.ok(&["cache", "ls", "--cache-dir", "cache"])
        .stdout_has(&[&format!("epoch {EPOCH}")]);
}

#[test]
fn without_the_variable_the_archive_date_is_the_epoch_of_cached_and_uncached_builds() {
    require_root();
    let p = project();
    let plan = p
        .cmd(&["plan", "--json", "profiles/x.toml"])
        .env_remove("SOURCE_DATE_EPOCH")
        .ok()
        .json();
    let release = format!(
        "file://{}/dists/trixie/InRelease",
        p.path("mirror").display()
    );
    assert_eq!(plan["epoch"], MIRROR_EPOCH, "{plan:#}");
    assert_eq!(plan["epoch_source"]["from"], "archive", "{plan:#}");
    assert_eq!(plan["epoch_source"]["release"], release.as_str());
    assert_eq!(plan["epoch_source"]["date"], MIRROR_DATE);

    // The fake rootfs is cached under the archive epoch's key: reused.
    let (a, a_sha) = build(&p, "a", None, &[]);
    assert_eq!(a, "reused");
    let (b, b_sha) = build(&p, "b", None, &["--no-cache"]);
    assert_eq!(b, "done");
    assert_eq!(a_sha, b_sha, "cached and --no-cache builds differ");
    assert_eq!(p.read("mmdebstrap.log"), format!("epoch={MIRROR_EPOCH}\n"));
    let manifest: serde_json::Value = serde_json::from_str(&p.read("b/x.manifest.json")).unwrap();
    assert_eq!(manifest["epoch"], MIRROR_EPOCH, "{manifest:#}");
    assert_eq!(manifest["epoch_source"]["from"], "archive");
    assert_eq!(manifest["epoch_source"]["remembered"], false);

    // The archive gone: the build's cache remembers its date (a build
    // warns), and the human plan says where the epoch came from.
    std::fs::remove_dir_all(p.path("mirror")).unwrap();
    p.cmd(&["plan", "profiles/x.toml", "--cache-dir", "cache"])
        .env_remove("SOURCE_DATE_EPOCH")
        .ok()
        .stdout_has(&[&format!(
            "epoch      {MIRROR_EPOCH} (Date: {MIRROR_DATE} of {release}, remembered by the cache)"
        )]);
    let (c, c_sha) = build(&p, "c", None, &[]);
    assert_eq!(c, "reused");
    assert_eq!(c_sha, a_sha);
    let mut args = build_args("profiles/x.toml", &[]);
    let at = args.iter().position(|a| *a == "--output").unwrap();
    args[at + 1] = "d";
    p.cmd(&args)
        .path_prepend(&p.path("fakebin"))
        .env_remove("SOURCE_DATE_EPOCH")
        .ok()
        .stderr_has(&["warning: the archive's date could not be read", "InRelease"]);
}

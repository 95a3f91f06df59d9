//! Regression (#24): a base rootfs cached by a build without
//! SOURCE_DATE_EPOCH was reused by a build with one, so the image depended
//! on the cache's history. The bootstrap here is a stand-in `mmdebstrap`
//! on PATH that packs a small fake tree, so the test shows the key logic
//! without a network; benches/epoch-cache.sh does the same with the real
//! bootstrap.

use crate::support::fake::{build_args, fake_tool, x_project};
use crate::support::{require_root, Project};

const EPOCH: &str = "1764547200";

fn project() -> Project {
    // Its cache holds the entry "a" leaves: made with no epoch.
    let p = x_project();
    // A bootstrap that packs the same fake tree and logs each run.
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
    let p = project();
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

//! Regression (#24): a base rootfs cached by a build without
//! SOURCE_DATE_EPOCH was reused by a build with one, so the image depended
//! on the cache's history. The bootstrap here is a stand-in `mmdebstrap`
//! on PATH that packs a small fake tree, so the test shows the key logic
//! without a network; benches/epoch-cache.sh does the same with the real
//! bootstrap.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;

use common::{is_root, stderr, Project};

const EPOCH: &str = "1764547200";

fn project() -> Project {
    // Its cache holds the entry "a" leaves: made with no epoch.
    let p = common::x_project();
    // A bootstrap that packs the same fake tree and logs each run.
    let tree = p.path("fake-rootfs");
    let log = p.path("mmdebstrap.log");
    let script = format!(
        "#!/bin/sh\necho \"epoch=${{SOURCE_DATE_EPOCH:-none}}\" >> '{}'\n\
         for a in \"$@\"; do case \"$a\" in *.tar.zst) out=$a;; esac; done\n\
         exec tar --zstd -cf \"$out\" -C '{}' .\n",
        log.display(),
        tree.display()
    );
    let bin = p.path("fakebin/mmdebstrap");
    p.write("fakebin/mmdebstrap", &script);
    fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).unwrap();
    p
}

/// Builds into `out` and returns (rootfs step status, image sha256).
fn build(p: &Project, out: &str, epoch: Option<&str>, extra: &[&str]) -> (String, String) {
    let path = format!(
        "{}:{}",
        p.path("fakebin").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut env = vec![("PATH", path.as_str())];
    if let Some(e) = epoch {
        env.push(("SOURCE_DATE_EPOCH", e));
    }
    let mut args = vec![
        "build",
        "profiles/x.toml",
        "--output",
        out,
        "--cache-dir",
        "cache",
        "--agent",
        "agent",
        "--json",
    ];
    args.extend_from_slice(extra);
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_nodeforge"));
    cmd.args(&args).current_dir(p.dir.path());
    if epoch.is_none() {
        cmd.env_remove("SOURCE_DATE_EPOCH");
    }
    let o = cmd.envs(env).output().unwrap();
    assert!(
        o.status.success(),
        "nodeforge {}: {}",
        args.join(" "),
        stderr(&o)
    );
    let text = String::from_utf8_lossy(&o.stdout);
    let rootfs = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|e| e["event"] == "step-end" && e["report"]["name"] == "rootfs")
        .unwrap_or_else(|| panic!("no rootfs step in:\n{text}"));
    let status = rootfs["report"]["status"].as_str().unwrap().to_owned();
    let sha = fs::read_to_string(p.path(&format!("{out}/x.img.sha256"))).unwrap();
    (status, sha.split_whitespace().next().unwrap().to_owned())
}

#[test]
fn a_rootfs_cached_without_an_epoch_is_not_reused_by_a_build_with_one() {
    assert!(
        is_root(),
        "builds need root: run the suite as root (.ci/run does)"
    );
    let p = project();
    let (a, _) = build(&p, "a", None, &[]);
    assert_eq!(a, "reused", "build a takes the entry made without an epoch");
    let (b, b_sha) = build(&p, "b", Some(EPOCH), &[]);
    assert_eq!(b, "done", "build b must bootstrap anew, not reuse a's tree");
    let (c, c_sha) = build(&p, "c", Some(EPOCH), &["--no-cache"]);
    assert_eq!(c, "done");
    assert_eq!(b_sha, c_sha, "b (cache of a) and c (--no-cache) differ");
    let log = fs::read_to_string(p.path("mmdebstrap.log")).unwrap();
    assert_eq!(log, format!("epoch={EPOCH}\nepoch={EPOCH}\n"));
    // A build with the epoch again reuses b's entry, and the reverse
    // direction holds too: no epoch takes a's.
    assert_eq!(build(&p, "d", Some(EPOCH), &[]).0, "reused");
    assert_eq!(build(&p, "e", None, &[]).0, "reused");
    let ls = p.nodeforge(&["cache", "ls", "--cache-dir", "cache"]);
    let listing = String::from_utf8_lossy(&ls.stdout);
    assert!(
        listing.contains(&format!("epoch {EPOCH}")),
        "cache ls shows each rootfs entry's epoch:\n{listing}"
    );
}

//! Interop with Debian's bmaptool (package bmap-tools). Skipped, saying
//! why, when it is not installed.

mod flash_support;

use flash_support::*;
use nodeforge::bmap::{self, Bmap};

macro_rules! need_bmaptool {
    () => {
        if let Err(e) = cmd("bmaptool", &["--version"]) {
            eprintln!("skipping: bmaptool unavailable ({e:#}); apt-get install bmap-tools");
            return;
        }
    };
}

#[test]
fn bmaptool_create_agrees_with_ours_and_we_flash_with_it() {
    need_bmaptool!();
    let dir = tempfile::tempdir().unwrap();
    let image = standard_image(dir.path());
    let theirs = dir.path().join("theirs.bmap");
    cmd(
        "bmaptool",
        &[
            "create",
            "-o",
            theirs.to_str().unwrap(),
            image.to_str().unwrap(),
        ],
    )
    .unwrap();
    let parsed = Bmap::load(&theirs).unwrap();
    assert_eq!(
        parsed,
        Bmap::create(&image).unwrap(),
        "same ranges and checksums as bmaptool"
    );

    let target = dir.path().join("out.img");
    let mut a = args(&image, &target);
    a.bmap = Some(theirs.clone());
    let report = flash_with(&a, "", None).0.unwrap();
    assert_eq!(report.verify.unwrap().bytes, parsed.mapped_bytes());
    assert_mapped_equal(&image, &target, &parsed);

    // A damaged bmaptool file fails its BmapFileChecksum.
    let text = std::fs::read_to_string(&theirs).unwrap().replacen(
        "<BlockSize> 4096",
        "<BlockSize> 4097",
        1,
    );
    let damaged = dir.path().join("damaged.bmap");
    std::fs::write(&damaged, text).unwrap();
    let err = format!("{:#}", Bmap::load(&damaged).unwrap_err());
    assert!(err.contains("checksum mismatch"), "{err}");
}

#[test]
fn bmaptool_copies_with_our_bmap_to_a_file_and_a_loop_device() {
    need_bmaptool!();
    let dir = tempfile::tempdir().unwrap();
    let image = standard_image(dir.path());
    let ours = dir.path().join("node.img.bmap");
    let bmap = bmap::write_bmap(&image, &ours).unwrap();
    let target = dir.path().join("copy.img");
    // bmaptool verifies every range's sha256 while copying.
    cmd(
        "bmaptool",
        &[
            "copy",
            "--bmap",
            ours.to_str().unwrap(),
            image.to_str().unwrap(),
            target.to_str().unwrap(),
        ],
    )
    .unwrap();
    assert_mapped_equal(&image, &target, &bmap);

    if let Some(why) = loop_unavailable() {
        eprintln!("skipping the loop-device half: {why}");
        return;
    }
    let backing = used_disk(&dir.path().join("disk"), 64 * MIB, 0xEE);
    let dev = LoopDev::attach(&backing).unwrap();
    cmd(
        "bmaptool",
        &[
            "copy",
            "--bmap",
            ours.to_str().unwrap(),
            image.to_str().unwrap(),
            dev.path.to_str().unwrap(),
        ],
    )
    .unwrap();
    assert_mapped_equal(&image, &dev.path, &bmap);
}

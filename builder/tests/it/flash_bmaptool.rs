//! Interop with Debian's bmaptool (package bmap-tools), which the tests
//! need: without it they fail saying how to install it.

use std::path::Path;

use crate::support::flash::*;
use crate::support::scratch::{standard_image, standard_image_with_bmap, MIB};
use crate::support::{require_loop, require_tool};
use nodeforge::bmap::Bmap;

/// `bmaptool ARGS`, which must succeed.
fn bmaptool(args: &[&Path]) {
    let args: Vec<&str> = args.iter().map(|a| a.to_str().unwrap()).collect();
    cmd("bmaptool", &args).unwrap_or_else(|e| panic!("{e:#}"));
}

/// `bmaptool copy --bmap BMAP IMAGE TARGET`: it verifies every range's
/// sha256 while copying.
fn bmaptool_copy(bmap: &Path, image: &Path, target: &Path) {
    bmaptool(&[Path::new("copy"), Path::new("--bmap"), bmap, image, target]);
}

#[test]
fn bmaptool_create_agrees_with_ours_and_we_flash_with_it() {
    require_tool("bmaptool", "bmap-tools");
    let (dir, image) = standard_image();
    let theirs = dir.path().join("theirs.bmap");
    bmaptool(&[Path::new("create"), Path::new("-o"), &theirs, &image]);
    let parsed = Bmap::load(&theirs).unwrap();
    assert_eq!(
        parsed,
        Bmap::create(&image).unwrap(),
        "same ranges and checksums as bmaptool"
    );

    let target = dir.path().join("out.img");
    let mut a = args(&image, &target);
    a.bmap = Some(theirs.clone());
    let report = flash_ok(&a);
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
    require_tool("bmaptool", "bmap-tools");
    let (dir, image, bmap) = standard_image_with_bmap();
    let ours = dir.path().join("node.img.bmap");
    let target = dir.path().join("copy.img");
    bmaptool_copy(&ours, &image, &target);
    assert_mapped_equal(&image, &target, &bmap);

    require_loop();
    let dev = LoopDev::over_used_disk(dir.path(), 64 * MIB);
    bmaptool_copy(&ours, &image, &dev.path);
    assert_mapped_equal(&image, &dev.path, &bmap);
}

//! Flashing to regular files: the whole pipeline without root.

use crate::support::flash::*;
use crate::support::scratch::{
    read_at, scratch_image, standard_image, standard_image_with_bmap, used_disk, MIB,
};
use anyhow::Result;
use indicatif::ProgressBar;
use nodeforge::bmap::{self, Bmap};
use nodeforge::flash::device::{SafetyRefusal, TargetKind};
use nodeforge::flash::source::ImageSource;
use nodeforge::flash::verify::{self, VerifyMismatch};
use nodeforge::flash::write::{self, Target};
use nodeforge::flash::Stamp;
use std::fs::File;
use std::io::Write;
use std::ops::Range;
use std::os::unix::fs::FileExt;

#[test]
fn flashes_into_a_new_file_and_verifies() {
    let (dir, image, bmap) = standard_image_with_bmap();
    let target = dir.path().join("out.img");
    let report = flash_ok(&args(&image, &target));
    assert_eq!(std::fs::metadata(&target).unwrap().len(), 64 * MIB);
    assert_eq!(report.write.bytes, bmap.mapped_bytes());
    assert_eq!(report.verify.unwrap().bytes, bmap.mapped_bytes());
    assert_mapped_equal(&image, &target, &bmap);
}

#[test]
fn leaves_unmapped_data_but_wipes_old_partition_tables() {
    let (dir, image, bmap) = standard_image_with_bmap();
    // A "card" larger than the image that held something else.
    let target = used_disk(&dir.path().join("card"), 80 * MIB, 0xEE);
    flash_ok(&args(&image, &target));
    assert_mapped_equal(&image, &target, &bmap);
    assert_eq!(
        std::fs::metadata(&target).unwrap().len(),
        80 * MIB,
        "a larger target keeps its size"
    );
    // Unmapped middle: untouched, like bmaptool.
    assert!(read_at(&target, 45 * MIB, 4096).iter().all(|&b| b == 0xEE));
    // Unmapped parts of the table zones (start of the image, end of the old
    // disk) were zeroed so no stale table survives.
    assert!(read_at(&target, 512 * 1024, 4096).iter().all(|&b| b == 0));
    assert!(read_at(&target, 80 * MIB - 4096, 4096)
        .iter()
        .all(|&b| b == 0));
}

#[test]
fn reads_zstd_and_xz_images_with_the_bmap_of_the_raw_image() {
    // Little incompressible data: xz compresses noise at only a few MB/s.
    let (dir, image) = scratch_image(
        "node.img",
        24 * MIB,
        &[(4096, 20_000), (2 * MIB + 100, 600_000), (9 * MIB, MIB)],
    );
    // A mapped run longer than one 8 MiB chunk, of zeros so it compresses.
    File::options()
        .write(true)
        .open(&image)
        .unwrap()
        .write_all_at(&vec![0u8; 9 * MIB as usize], 12 * MIB)
        .unwrap();
    let bmap = bmap::write_bmap(&image, &dir.path().join("node.img.bmap")).unwrap();
    assert!(
        bmap.ranges.iter().any(|r| r.last - r.first + 1 > 2048),
        "a range spans chunks"
    );
    let raw = std::fs::read(&image).unwrap();
    let zst = dir.path().join("node.img.zst");
    std::fs::write(&zst, zstd::encode_all(&raw[..], 1).unwrap()).unwrap();
    let xz = dir.path().join("node.img.xz");
    let mut enc = xz2::write::XzEncoder::new(Vec::new(), 1);
    enc.write_all(&raw).unwrap();
    std::fs::write(&xz, enc.finish().unwrap()).unwrap();
    std::fs::remove_file(&image).unwrap();
    // Rebuild the reference for the comparison from memory.
    let reference = dir.path().join("reference.img");
    std::fs::write(&reference, &raw).unwrap();
    for src in [&zst, &xz] {
        let target = dir.path().join(format!(
            "{}.out",
            src.extension().unwrap().to_str().unwrap()
        ));
        let report = flash_ok(&args(src, &target));
        assert_eq!(report.verify.unwrap().bytes, bmap.mapped_bytes());
        assert_mapped_equal(&reference, &target, &bmap);
    }
}

#[test]
fn compressed_image_without_bmap_is_refused_and_raw_image_is_scanned() {
    let (dir, image) = standard_image();
    let zst = dir.path().join("other.img.zst");
    std::fs::write(
        &zst,
        zstd::encode_all(&std::fs::read(&image).unwrap()[..], 1).unwrap(),
    )
    .unwrap();
    let err = format!("{:#}", flash_err(&args(&zst, &dir.path().join("a"))));
    assert!(
        err.contains("no bmap found") && err.contains("--bmap"),
        "{err}"
    );

    let target = dir.path().join("b");
    let mut a = args(&image, &target);
    a.quiet = false;
    let (r, out) = flash_with(&a, "", None);
    r.unwrap();
    assert!(out.contains("scanning the image"), "{out}");
    assert_mapped_equal(&image, &target, &Bmap::create(&image).unwrap());
}

#[test]
fn corruption_between_write_and_verify_is_reported_with_its_range() {
    let (dir, image) = standard_image();
    let bmap = Bmap::create(&image).unwrap();
    let target = dir.path().join("out.img");
    let mut src = ImageSource::open(&image).unwrap();
    let mut t = Target::open(&target, TargetKind::RegularFile, bmap.image_size).unwrap();
    write::write_image(&mut src, &bmap, &mut t, &ProgressBar::hidden()).unwrap();
    drop(t);
    verify::verify(&target, &bmap, &[], &ProgressBar::hidden()).unwrap();

    let bad_at = 30 * MIB + 12345;
    let f = File::options().write(true).open(&target).unwrap();
    let old = read_at(&target, bad_at, 1)[0];
    f.write_all_at(&[!old], bad_at).unwrap();
    let err = verify::verify(&target, &bmap, &[], &ProgressBar::hidden()).unwrap_err();
    let mismatch = err
        .downcast_ref::<VerifyMismatch>()
        .expect("a VerifyMismatch");
    assert_eq!(mismatch.ranges.len(), 1);
    let r = &mismatch.ranges[0];
    assert!(
        r.bytes.contains(&bad_at),
        "{:?} should contain {bad_at}",
        r.bytes
    );
    let shown = err.to_string();
    assert!(
        shown.contains(&format!("bytes {}..{}", r.bytes.start, r.bytes.end)),
        "{shown}"
    );
}

#[test]
fn image_that_does_not_match_its_bmap_fails_before_the_tables_are_written() {
    let (dir, image, bmap) = standard_image_with_bmap();
    File::options()
        .write(true)
        .open(&image)
        .unwrap()
        .write_all_at(b"tampered", 21 * MIB)
        .unwrap();
    let target = used_disk(&dir.path().join("card"), 64 * MIB, 0xEE);
    let err = format!("{:#}", flash_err(&args(&image, &target)));
    let r = bmap
        .ranges
        .iter()
        .map(|r| bmap.byte_range(r))
        .find(|s| s.contains(&(21 * MIB)))
        .unwrap();
    assert!(
        err.contains("does not match its bmap")
            && err.contains(&format!("bytes {}..{}", r.start, r.end)),
        "{err}"
    );
    // No partition table on the half-written target.
    assert!(read_at(&target, 0, 1024).iter().all(|&b| b == 0));
    assert!(read_at(&target, 64 * MIB - 512, 512)
        .iter()
        .all(|&b| b == 0));
}

/// Writes a marker into a range it declares, like a seed written into the
/// boot partition; optionally also scribbles outside it.
struct MarkerStamp {
    at: u64,
    declared: Range<u64>,
    stray: Option<u64>,
}

impl Stamp for MarkerStamp {
    fn describe(&self) -> String {
        "test marker".into()
    }
    fn apply(&self, target: &mut File) -> Result<Vec<Range<u64>>> {
        target.write_all_at(b"nodeforge-seed", self.at)?;
        if let Some(s) = self.stray {
            target.write_all_at(b"oops", s)?;
        }
        Ok(vec![self.declared.clone()])
    }
    fn check(&self, target: &mut File) -> Result<()> {
        let mut b = [0u8; 14];
        target.read_exact_at(&mut b, self.at)?;
        anyhow::ensure!(&b == b"nodeforge-seed", "marker missing");
        Ok(())
    }
}

#[test]
fn stamp_runs_after_verify_and_is_reverified() {
    let (dir, image, bmap) = standard_image_with_bmap();
    let target = dir.path().join("out.img");
    let stamp = MarkerStamp {
        at: 2 * MIB,
        declared: MIB..4 * MIB,
        stray: None,
    };
    let report = flash_with(&args(&image, &target), "", Some(&stamp))
        .0
        .unwrap();
    assert_eq!(read_at(&target, 2 * MIB, 14), b"nodeforge-seed");
    let skipped: u64 = bmap
        .ranges
        .iter()
        .map(|r| bmap.byte_range(r))
        .filter(|s| s.start < 4 * MIB && s.end > MIB)
        .map(|s| s.end - s.start)
        .sum();
    assert_eq!(
        report.reverify.unwrap().bytes,
        bmap.mapped_bytes() - skipped
    );

    // A stamp that writes outside what it declared is caught.
    let target = dir.path().join("out2.img");
    let stamp = MarkerStamp {
        at: 2 * MIB,
        declared: MIB..4 * MIB,
        stray: Some(30 * MIB),
    };
    let err = flash_with(&args(&image, &target), "", Some(&stamp))
        .0
        .unwrap_err();
    let m = err
        .downcast_ref::<VerifyMismatch>()
        .expect("a VerifyMismatch");
    assert!(m.ranges[0].bytes.contains(&(30 * MIB)));
}

#[test]
fn asks_for_the_target_name_unless_yes() {
    let (dir, image) = standard_image();
    let target = used_disk(&dir.path().join("card"), 64 * MIB, 0xEE);
    let mut a = args(&image, &target);
    a.yes = false;
    let (r, out) = flash_with(&a, "sdb\n", None);
    let err = format!("{:#}", r.unwrap_err());
    assert!(
        err.contains("nothing was written") && out.contains("Type card"),
        "{err} / {out}"
    );
    assert!(
        read_at(&target, 0, 4096).iter().all(|&b| b == 0xEE),
        "target untouched"
    );
    let err = format!("{:#}", flash_err(&a));
    assert!(err.contains("--yes"), "{err}");
    flash_with(&a, "card\n", None).0.unwrap();
    assert_eq!(read_at(&target, 512, 8), b"EFI PART");
}

#[test]
fn refuses_to_flash_an_image_onto_itself() {
    let (_dir, image) = standard_image();
    let err = flash_err(&args(&image, &image));
    assert!(
        matches!(refusal(&err), SafetyRefusal::SameAsImage { .. }),
        "{err:#}"
    );
}

#[test]
fn bmap_lists_exactly_the_written_blocks() {
    let (dir, image) = scratch_image(
        "x.img",
        16 * MIB + 512,
        &[(3 * MIB + 10, 5000), (9 * MIB, 2 * MIB)],
    );
    let out = dir.path().join("x.img.bmap");
    let bmap = bmap::write_bmap(&image, &out).unwrap();
    assert_eq!(Bmap::load(&out).unwrap(), bmap);
    assert_eq!(bmap.blocks_count(), 4097);
    let ranges: Vec<(u64, u64)> = bmap.ranges.iter().map(|r| (r.first, r.last)).collect();
    // Filesystems allocate in their own block size (4 KiB here: ext4/tmpfs).
    assert_eq!(ranges, vec![(0, 0), (768, 769), (2304, 2815), (4096, 4096)]);
    assert!(bmap.ranges.iter().all(|r| r.sha256.is_some()));
}

#[test]
fn image_ending_mid_block_is_written_and_verified() {
    // 16 MiB + one sector: the last bmap block is 512 bytes long, so the
    // final write and read-back cannot use O_DIRECT's whole blocks.
    let (dir, image) = scratch_image(
        "odd.img",
        16 * MIB + 512,
        &[(3 * MIB, MIB), (16 * MIB - 4096, 4096)],
    );
    let bmap = bmap::write_bmap(&image, &dir.path().join("odd.img.bmap")).unwrap();
    assert_eq!(
        bmap.byte_range(bmap.ranges.last().unwrap()).end,
        16 * MIB + 512
    );
    let target = dir.path().join("out.img");
    let report = flash_ok(&args(&image, &target));
    assert_eq!(report.verify.unwrap().bytes, bmap.mapped_bytes());
    assert_eq!(std::fs::metadata(&target).unwrap().len(), 16 * MIB + 512);
    assert_mapped_equal(&image, &target, &bmap);
}

#[test]
fn missing_device_is_not_created_as_a_file() {
    let (_dir, image) = standard_image();
    let missing = std::path::Path::new("/dev/nodeforge-test-no-such-disk");
    let err = flash_err(&args(&image, missing));
    assert!(
        matches!(refusal(&err), SafetyRefusal::NoSuchDevice { .. }),
        "{err:#}"
    );
    assert!(!missing.exists());
}

#[test]
fn bmap_with_512_byte_blocks_is_written_and_verified() {
    use nodeforge::bmap::BmapRange;
    use sha2::{Digest, Sha256};
    let (dir, image) = standard_image();
    let data = std::fs::read(&image).unwrap();
    // Ranges that start and end mid-page, one longer than a chunk.
    let spans = [(0u64, 33u64), (2049, 2100), (40_001, 40_001 + 20_000)];
    let ranges = spans
        .iter()
        .map(|&(first, last)| BmapRange {
            first,
            last,
            sha256: Some(
                Sha256::digest(&data[first as usize * 512..(last as usize + 1) * 512]).into(),
            ),
        })
        .collect();
    let bmap = Bmap {
        image_size: 64 * MIB,
        block_size: 512,
        ranges,
    };
    let bmap_path = dir.path().join("small-blocks.bmap");
    std::fs::write(&bmap_path, bmap.to_xml()).unwrap();
    let target = used_disk(&dir.path().join("card"), 64 * MIB, 0xEE);
    let mut a = args(&image, &target);
    a.bmap = Some(bmap_path);
    let report = flash_ok(&a);
    assert_eq!(report.verify.unwrap().bytes, bmap.mapped_bytes());
    assert_mapped_equal(&image, &target, &bmap);
    // Just outside a range: old content (not in the table zones).
    assert_eq!(read_at(&target, 2101 * 512, 1), vec![0xEE]);
}

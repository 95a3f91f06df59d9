//! Flashing to real block devices (loop devices). Each test needs root and
//! a free loop device, and fails saying which is missing.

use crate::support::flash::*;
use crate::support::require_loop;
use crate::support::scratch::{read_at, standard_image, standard_image_with_bmap, MIB};
use nodeforge::flash::device::SafetyRefusal;
use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;

#[test]
fn flashes_a_used_loop_device_with_force() {
    require_loop();
    let (dir, image, bmap) = standard_image_with_bmap();
    let dev = LoopDev::over_used_disk(dir.path(), 96 * MIB);

    // Loop devices report removable=0: refused without --force.
    let mut a = args(&image, &dev.path);
    let err = flash_err(&a);
    assert!(
        matches!(refusal(&err), SafetyRefusal::NotRemovable { .. }),
        "{err:#}"
    );
    assert!(
        read_at(&dev.path, 0, 4096).iter().all(|&b| b == 0xEE),
        "refused flash wrote nothing"
    );

    a.force = true;
    a.quiet = false;
    let (r, out) = flash_with(&a, "", None);
    let report = r.unwrap_or_else(|e| panic!("{e:#}\n{out}"));
    assert!(
        out.contains("loop device backed by") && out.contains("Removable: NO"),
        "{out}"
    );
    assert_eq!(report.verify.unwrap().bytes, bmap.mapped_bytes());
    assert_mapped_equal(&image, &dev.path, &bmap);
    // Unmapped ranges keep old data; the old disk's tail (backup GPT) is gone.
    assert!(read_at(&dev.path, 45 * MIB, 4096)
        .iter()
        .all(|&b| b == 0xEE));
    assert!(read_at(&dev.path, 96 * MIB - 4096, 4096)
        .iter()
        .all(|&b| b == 0));
}

#[test]
fn too_small_loop_device_is_refused() {
    require_loop();
    let (dir, image) = standard_image();
    let dev = LoopDev::over_used_disk(dir.path(), 32 * MIB);
    let mut a = args(&image, &dev.path);
    a.force = true;
    let err = flash_err(&a);
    assert!(
        matches!(refusal(&err), SafetyRefusal::TooSmall { .. }),
        "{err:#}"
    );
}

#[test]
fn device_held_exclusively_elsewhere_is_busy() {
    require_loop();
    let (dir, image) = standard_image();
    let dev = LoopDev::over_used_disk(dir.path(), 64 * MIB);
    // Stands in for a mount or another flasher holding the device.
    let _holder = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_EXCL)
        .open(&dev.path)
        .unwrap();
    let mut a = args(&image, &dev.path);
    a.force = true;
    let err = format!("{:#}", flash_err(&a));
    assert!(err.contains("is busy"), "{err}");
}

#[test]
fn write_error_past_the_device_end_names_the_range() {
    use indicatif::ProgressBar;
    use nodeforge::flash::device::TargetKind;
    use nodeforge::flash::source::ImageSource;
    use nodeforge::flash::write::{self, Target};
    require_loop();
    let (dir, image) = standard_image();
    let bmap = nodeforge::bmap::Bmap::create(&image).unwrap();
    // Past the safety checks on purpose: a device that ends mid-image.
    let dev = LoopDev::over_used_disk(dir.path(), 24 * MIB);
    let mut src = ImageSource::open(&image).unwrap();
    let mut target = Target::open(&dev.path, TargetKind::BlockDevice, bmap.image_size).unwrap();
    let err = write::write_image(&mut src, &bmap, &mut target, &ProgressBar::hidden()).unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("writing range") && msg.contains(&dev.path.display().to_string()),
        "{msg}"
    );
}

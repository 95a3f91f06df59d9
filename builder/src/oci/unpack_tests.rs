use std::os::unix::fs::FileTypeExt;

use super::*;

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_uid(1000);
    h.set_gid(100);
    h.set_mtime(1_700_000_000);
    h
}

/// A layer with every kind of entry a real one has.
fn sample_layer() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let dir = |b: &mut tar::Builder<Vec<u8>>, name: &str| {
        let mut h = header(tar::EntryType::Directory, 0o755, 0);
        b.append_data(&mut h, name, &[][..]).unwrap();
    };
    dir(&mut b, "usr/");
    dir(&mut b, "usr/bin/");
    let mut h = header(tar::EntryType::Regular, 0o4755, 4);
    b.append_pax_extensions([("SCHILY.xattr.user.note", &b"kept"[..])])
        .unwrap();
    b.append_data(&mut h, "usr/bin/su", &b"\x7fELF"[..])
        .unwrap();
    let mut h = header(tar::EntryType::Link, 0o4755, 0);
    b.append_link(&mut h, "usr/bin/su-again", "usr/bin/su")
        .unwrap();
    let mut h = header(tar::EntryType::Symlink, 0o777, 0);
    b.append_link(&mut h, "bin", "usr/bin").unwrap();
    // Written through the symlink, as a chroot would.
    let mut h = header(tar::EntryType::Regular, 0o644, 2);
    b.append_data(&mut h, "bin/via-link", &b"ok"[..]).unwrap();
    let mut h = header(tar::EntryType::Char, 0o600, 0);
    h.set_device_major(1).unwrap();
    h.set_device_minor(3).unwrap();
    b.append_data(&mut h, "dev-null", &[][..]).unwrap();
    dir(&mut b, "etc/");
    let mut h = header(tar::EntryType::Regular, 0o644, 0);
    b.append_data(&mut h, "etc/.wh..wh..opq", &[][..]).unwrap();
    let mut h = header(tar::EntryType::Regular, 0o644, 0);
    b.append_data(&mut h, "etc/.wh.motd", &[][..]).unwrap();
    let big: Vec<u8> = (0..5000u32).map(|i| (i * 7) as u8).collect();
    let mut h = header(tar::EntryType::Regular, 0o640, big.len() as u64);
    b.append_data(&mut h, "etc/big", &big[..]).unwrap();
    b.into_inner().unwrap()
}

#[test]
fn a_layer_unpacks_as_overlay2_does_and_its_tar_split_gives_the_stream_back() {
    let layer = sample_layer();
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("diff");
    fs::create_dir(&dest).unwrap();
    let mut split = Vec::new();
    let got = unpack_layer(&layer[..], &dest, &mut split).unwrap();

    assert_eq!(got.diff_id_hex, crate::fsutil::sha256_bytes(&layer));
    let rebuilt = reassemble(&split[..], |name| Ok(fs::read(dest.join(name))?)).unwrap();
    assert_eq!(rebuilt, layer);
    fs::write(dest.join("etc/big"), b"changed").unwrap();
    let e = reassemble(&split[..], |name| Ok(fs::read(dest.join(name))?)).unwrap_err();
    assert!(e.to_string().contains("file etc/big does not match"), "{e}");

    let su = fs::metadata(dest.join("usr/bin/su")).unwrap();
    assert_eq!(
        (su.mode() & 0o7777, su.uid(), su.gid()),
        (0o4755, 1000, 100)
    );
    assert_eq!(su.mtime(), 1_700_000_000);
    assert_eq!(su.nlink(), 2, "the hard link shares the inode");
    let mut note = [0u8; 16];
    let p = CString::new(dest.join("usr/bin/su").as_os_str().as_bytes()).unwrap();
    let k = CString::new("user.note").unwrap();
    // SAFETY: NUL-terminated strings and a live buffer of the given size.
    let n = unsafe { libc::lgetxattr(p.as_ptr(), k.as_ptr(), note.as_mut_ptr().cast(), 16) };
    assert_eq!(&note[..n as usize], b"kept");
    assert_eq!(fs::read(dest.join("usr/bin/via-link")).unwrap(), b"ok");
    assert!(fs::symlink_metadata(dest.join("bin"))
        .unwrap()
        .file_type()
        .is_symlink());

    let whiteout = fs::symlink_metadata(dest.join("etc/motd")).unwrap();
    assert!(whiteout.file_type().is_char_device());
    assert_eq!(whiteout.rdev(), 0);
    assert!(!dest.join("etc/.wh.motd").exists());
    assert!(!dest.join("etc/.wh..wh..opq").exists());
    let mut v = [0u8; 4];
    let p = CString::new(dest.join("etc").as_os_str().as_bytes()).unwrap();
    let k = CString::new(OPAQUE_XATTR).unwrap();
    // SAFETY: as above.
    let n = unsafe { libc::lgetxattr(p.as_ptr(), k.as_ptr(), v.as_mut_ptr().cast(), 4) };
    assert_eq!(&v[..n as usize], b"y");
    let null = fs::symlink_metadata(dest.join("dev-null")).unwrap();
    assert_eq!(null.rdev(), nix::sys::stat::makedev(1, 3));
    // su counted once for two links; big; via-link; the symlink's target
    // length ("usr/bin").
    assert_eq!(got.size, 4 + 5000 + 2 + 7);
    let usr = fs::metadata(dest.join("usr")).unwrap();
    assert_eq!(usr.mtime(), 1_700_000_000, "directory times are set last");
}

#[test]
fn entries_that_would_leave_the_layer_are_refused() {
    for (what, kind, name, link) in [
        ("name", tar::EntryType::Regular, "../escape", ""),
        ("symlink", tar::EntryType::Symlink, "up", "../../etc"),
        ("hard link", tar::EntryType::Link, "h", "../outside"),
    ] {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = header(kind, 0o644, 0);
        // Set raw bytes: the tar crate itself refuses `..` in names.
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
        h.set_cksum();
        b.append(&h, &[][..]).unwrap();
        let layer = b.into_inner().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let e = unpack_layer(&layer[..], dir.path(), Vec::new()).unwrap_err();
        let e = format!("{e:#}");
        assert!(e.contains("outside"), "{what}: {e}");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0, "{what}");
    }
}

#[test]
fn a_duplicate_path_is_refused_like_docker_does() {
    let mut b = tar::Builder::new(Vec::new());
    for _ in 0..2 {
        let mut h = header(tar::EntryType::Regular, 0o644, 1);
        b.append_data(&mut h, "twice", &b"x"[..]).unwrap();
    }
    let layer = b.into_inner().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let e = unpack_layer(&layer[..], dir.path(), Vec::new()).unwrap_err();
    assert!(format!("{e:#}").contains("twice appears twice"), "{e:#}");
}

#[test]
fn crc_is_gos_iso_crc64() {
    // The CRC-64/GO-ISO catalogue check value.
    assert_eq!(CRC64.checksum(b"123456789"), 0xb909_56c7_75a4_1001);
}

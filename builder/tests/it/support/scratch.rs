//! Scratch disk images made in a test's temp dir: sparse files with data at
//! chosen offsets, a "used card", and a small GPT disk with a FAT ESP like
//! a build's (for the seed-stamping commands).

use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use nodeforge::bmap::{self, Bmap};
use nodeforge::disk::esp::{self, Content, Volume};
use nodeforge::disk::{gpt_table, DiskLayout, PartitionKind};
use nodeforge::profile::Arch;
use tempfile::TempDir;

pub const MIB: u64 = 1 << 20;

/// Deterministic, incompressible-looking bytes.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

fn create(path: &Path) -> File {
    File::create(path).unwrap_or_else(|e| panic!("creating {}: {e}", path.display()))
}

fn write_at(f: &File, path: &Path, data: &[u8], off: u64) {
    f.write_all_at(data, off)
        .unwrap_or_else(|e| panic!("writing {} at {off}: {e}", path.display()));
}

/// A sparse file of `size` bytes holding each `(offset, data)`.
pub fn sparse_file(path: &Path, size: u64, data: &[(u64, &[u8])]) -> PathBuf {
    let f = create(path);
    f.set_len(size)
        .unwrap_or_else(|e| panic!("sizing {}: {e}", path.display()));
    for (off, bytes) in data {
        write_at(&f, path, bytes, *off);
    }
    f.sync_all()
        .unwrap_or_else(|e| panic!("syncing {}: {e}", path.display()));
    path.to_path_buf()
}

/// A sparse image of `size` bytes with noise at `extents` (offset, length),
/// plus a GPT-like signature in its first and last sectors.
pub fn make_image(path: &Path, size: u64, extents: &[(u64, u64)]) -> PathBuf {
    let mut data: Vec<(u64, Vec<u8>)> = extents
        .iter()
        .enumerate()
        .map(|(i, (off, len))| (*off, noise(i as u64 + 1, *len as usize)))
        .collect();
    let mut mbr = noise(99, 512);
    mbr[510] = 0x55;
    mbr[511] = 0xAA;
    data.push((0, mbr));
    data.push((512, b"EFI PART".to_vec()));
    data.push((size - 512, b"EFI PART".to_vec()));
    let refs: Vec<(u64, &[u8])> = data.iter().map(|(o, d)| (*o, d.as_slice())).collect();
    sparse_file(path, size, &refs)
}

/// [`make_image`] as `name` in a scratch directory of its own, for the
/// test's other files.
pub fn scratch_image(name: &str, size: u64, extents: &[(u64, u64)]) -> (TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("creating a scratch directory");
    let image = make_image(&dir.path().join(name), size, extents);
    (dir, image)
}

/// The usual small test image, `node.img` in a scratch directory: 64 MiB,
/// data at the start, in the middle (more than one 8 MiB chunk, not
/// block-aligned) and at the end.
pub fn standard_image() -> (TempDir, PathBuf) {
    scratch_image(
        "node.img",
        64 * MIB,
        &[
            (4096, 60_000),
            (MIB, 3 * MIB),
            (20 * MIB + 100, 17 * MIB),
            (50 * MIB, 4096),
        ],
    )
}

/// [`standard_image`] with its bmap written beside it, `node.img.bmap`,
/// where flashing looks for it.
pub fn standard_image_with_bmap() -> (TempDir, PathBuf, Bmap) {
    let (dir, image) = standard_image();
    let bmap = bmap::write_bmap(&image, &dir.path().join("node.img.bmap"))
        .unwrap_or_else(|e| panic!("writing the bmap of {}: {e:#}", image.display()));
    (dir, image, bmap)
}

/// A file of `size` bytes filled with a repeating byte, standing in for a
/// card that held something else before.
pub fn used_disk(path: &Path, size: u64, fill: u8) -> PathBuf {
    let f = create(path);
    let block = vec![fill; MIB as usize];
    let mut off = 0;
    while off < size {
        let n = (size - off).min(MIB) as usize;
        write_at(&f, path, &block[..n], off);
        off += n as u64;
    }
    f.sync_all()
        .unwrap_or_else(|e| panic!("syncing {}: {e}", path.display()));
    path.to_path_buf()
}

/// `dir/node.img`: a 160 MiB GPT disk with a 64 MiB FAT32 ESP holding
/// loader/loader.conf, like a build's, for `flash` and `customize`.
pub fn esp_disk_image(dir: &Path) -> PathBuf {
    let path = dir.join("node.img");
    let f = fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
    let layout = DiskLayout::esp_and_root(160 << 20, 64 << 20, Arch::Amd64, "flash-seed")
        .expect("the scratch disk's layout");
    f.set_len(layout.size)
        .unwrap_or_else(|e| panic!("sizing {}: {e}", path.display()));
    let part = layout.partition(PartitionKind::Esp);
    let volume = Volume {
        id: 1,
        label: "ESP",
        epoch: Some(1_700_000_000),
    };
    let files = [(
        "loader/loader.conf".into(),
        Content::Bytes(b"timeout 0\n".to_vec()),
    )];
    esp::write(&f, part.offset, part.size, &volume, &files)
        .unwrap_or_else(|e| panic!("writing the ESP of {}: {e:#}", path.display()));
    gpt_table::write(&f, &path, &layout)
        .unwrap_or_else(|e| panic!("writing the GPT of {}: {e:#}", path.display()));
    path
}

/// `len` bytes of `path` at `off`.
pub fn read_at(path: &Path, off: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    File::open(path)
        .and_then(|f| f.read_exact_at(&mut v, off))
        .unwrap_or_else(|e| panic!("reading {} bytes of {} at {off}: {e}", len, path.display()));
    v
}

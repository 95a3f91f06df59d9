//! Repairs what fatfs 0.3 gets wrong in new directories, so `fsck.vfat`
//! and strict firmware accept the ESP: it writes long-name (LFN) slots in
//! front of the `.` and `..` entries (they must be the first two slots),
//! and points `..` of a top-level directory at the root's cluster instead
//! of 0. No later fatfs release exists, so the fix is a pass over the
//! directory tree after the filesystem is closed.

use std::io::{self, Read, Seek, SeekFrom, Write};

const ENTRY: usize = 32;
const ATTR_LFN: u8 = 0x0F;
const ATTR_DIR: u8 = 0x10;
const DELETED: u8 = 0xE5;
const END_OF_CHAIN: u32 = 0x0FFF_FFF8;

struct Geometry {
    cluster_bytes: u64,
    fat_start: u64,
    data_start: u64,
    root_cluster: u32,
}

impl Geometry {
    fn read(dev: &mut (impl Read + Seek)) -> io::Result<Self> {
        let mut bs = [0u8; 512];
        dev.seek(SeekFrom::Start(0))?;
        dev.read_exact(&mut bs)?;
        let u16_at = |o: usize| u16::from_le_bytes([bs[o], bs[o + 1]]) as u64;
        let u32_at = |o: usize| u32::from_le_bytes([bs[o], bs[o + 1], bs[o + 2], bs[o + 3]]);
        let bytes_per_sector = u16_at(11);
        let fat_size = u32_at(36) as u64;
        if bytes_per_sector == 0 || fat_size == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "not a FAT32 boot sector",
            ));
        }
        let reserved = u16_at(14);
        let fats = bs[16] as u64;
        Ok(Geometry {
            cluster_bytes: bytes_per_sector * bs[13] as u64,
            fat_start: reserved * bytes_per_sector,
            data_start: (reserved + fats * fat_size) * bytes_per_sector,
            root_cluster: u32_at(44),
        })
    }

    fn cluster_offset(&self, cluster: u32) -> u64 {
        self.data_start + (cluster as u64 - 2) * self.cluster_bytes
    }

    fn chain(&self, dev: &mut (impl Read + Seek), first: u32) -> io::Result<Vec<u32>> {
        let mut chain = vec![first];
        let mut c = first;
        loop {
            dev.seek(SeekFrom::Start(self.fat_start + 4 * c as u64))?;
            let mut b = [0u8; 4];
            dev.read_exact(&mut b)?;
            let next = u32::from_le_bytes(b) & 0x0FFF_FFFF;
            if !(2..END_OF_CHAIN).contains(&next) || chain.len() > 1 << 20 {
                return Ok(chain);
            }
            chain.push(next);
            c = next;
        }
    }
}

/// Walks every directory below the root and repairs its dot entries.
pub fn fix_dot_entries(dev: &mut (impl Read + Write + Seek)) -> io::Result<()> {
    let geo = Geometry::read(dev)?;
    let mut pending = vec![(geo.root_cluster, true)];
    while let Some((cluster, is_root)) = pending.pop() {
        let chain = geo.chain(dev, cluster)?;
        let mut bytes = Vec::with_capacity(chain.len() * geo.cluster_bytes as usize);
        for c in &chain {
            let mut buf = vec![0u8; geo.cluster_bytes as usize];
            dev.seek(SeekFrom::Start(geo.cluster_offset(*c)))?;
            dev.read_exact(&mut buf)?;
            bytes.extend_from_slice(&buf);
        }
        let (fixed, subdirs) = repair(&bytes, is_root, geo.root_cluster);
        pending.extend(subdirs.into_iter().map(|c| (c, false)));
        if fixed != bytes {
            for (i, c) in chain.iter().enumerate() {
                let part =
                    &fixed[i * geo.cluster_bytes as usize..(i + 1) * geo.cluster_bytes as usize];
                dev.seek(SeekFrom::Start(geo.cluster_offset(*c)))?;
                dev.write_all(part)?;
            }
        }
    }
    dev.flush()
}

/// Returns the directory's entries without LFN slots on `.`/`..` (and
/// with `..` → 0 where it meant the root), plus its subdirectories'
/// first clusters.
fn repair(bytes: &[u8], is_root: bool, root_cluster: u32) -> (Vec<u8>, Vec<u32>) {
    let mut out = Vec::with_capacity(bytes.len());
    let mut lfn_run: Vec<&[u8]> = Vec::new();
    let mut subdirs = Vec::new();
    for e in bytes.chunks_exact(ENTRY) {
        if e[0] == 0 {
            break;
        }
        if e[11] == ATTR_LFN && e[0] != DELETED {
            lfn_run.push(e);
            continue;
        }
        let name = &e[..11];
        let is_dot = name == b".          ";
        let is_dotdot = name == b"..         ";
        if is_dot || is_dotdot {
            lfn_run.clear();
            let mut entry = e.to_vec();
            if is_dotdot && !is_root && cluster_of(e) == root_cluster {
                entry[20..22].copy_from_slice(&[0, 0]);
                entry[26..28].copy_from_slice(&[0, 0]);
            }
            out.extend_from_slice(&entry);
            continue;
        }
        for l in lfn_run.drain(..) {
            out.extend_from_slice(l);
        }
        out.extend_from_slice(e);
        if e[0] != DELETED && e[11] & ATTR_DIR != 0 && cluster_of(e) >= 2 {
            subdirs.push(cluster_of(e));
        }
    }
    out.resize(bytes.len(), 0);
    (out, subdirs)
}

fn cluster_of(e: &[u8]) -> u32 {
    (u16::from_le_bytes([e[20], e[21]]) as u32) << 16 | u16::from_le_bytes([e[26], e[27]]) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sfn(name: &[u8; 11], attr: u8, cluster: u32) -> Vec<u8> {
        let mut e = vec![0u8; 32];
        e[..11].copy_from_slice(name);
        e[11] = attr;
        e[20..22].copy_from_slice(&((cluster >> 16) as u16).to_le_bytes());
        e[26..28].copy_from_slice(&(cluster as u16).to_le_bytes());
        e
    }

    fn lfn() -> Vec<u8> {
        let mut e = vec![0x41u8; 32];
        e[11] = ATTR_LFN;
        e
    }

    #[test]
    fn dot_entries_lose_their_lfn_slots_and_dotdot_points_to_zero() {
        let mut dir = [
            lfn(),
            sfn(b".          ", ATTR_DIR, 5),
            lfn(),
            sfn(b"..         ", ATTR_DIR, 2),
            lfn(),
            sfn(b"SUB        ", ATTR_DIR, 9),
        ]
        .concat();
        dir.resize(512, 0);
        let (fixed, subdirs) = repair(&dir, false, 2);
        assert_eq!(&fixed[..11], b".          ");
        assert_eq!(&fixed[32..43], b"..         ");
        assert_eq!(cluster_of(&fixed[32..64]), 0);
        assert_eq!(
            fixed[64 + 11],
            ATTR_LFN,
            "the real file keeps its long name"
        );
        assert_eq!(&fixed[96..107], b"SUB        ");
        assert_eq!(subdirs, vec![9]);
        assert!(fixed[128..].iter().all(|b| *b == 0));
    }
}

//! nodeforge-delta: the chunk index of an update: a root slot's bytes cut into
//! content-defined chunks (a gear rolling hash, as FastCDC and casync
//! cut), each named by its sha256. A node holding an older slot cuts its
//! own the same way, looks each new chunk up by hash among its own (so
//! data that merely moved is not fetched again) and fetches only the rest
//! by HTTP Range.
//!
//! Cut points depend on the bytes alone, so an edit that shifts what
//! follows it (a longer file in the root filesystem) changes only the
//! chunks around it; fixed-size chunks would all change after it.

pub mod assemble;

use std::io::{self, Read};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// How chunks are cut; recorded in the index, since a node must cut its
/// own slot the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cutting {
    /// No cut before this many bytes into a chunk.
    pub min: u32,
    /// A cut where the rolling hash's top this many bits are zero: chunks
    /// of about 2^bits bytes past `min`. The top bits, since with the
    /// hash shifted left by one per byte they depend on the last 64
    /// bytes, the low ones only on the last few (FastCDC does the same).
    pub bits: u32,
    /// A cut at this many bytes at the latest.
    pub max: u32,
}

/// 16 KiB to 256 KiB chunks, about 80 KiB on average where there is data
/// (runs of zeros, free space, are cut at 256 KiB): a 2.7 GiB slot with a
/// Debian system, Docker and a 64 MiB container image had 17,339 chunks,
/// an index of about 1.7 MB of JSON.
pub const DEFAULT_CUTTING: Cutting = Cutting {
    min: 16 << 10,
    bits: 16,
    max: 256 << 10,
};

/// One chunk: where it is in the slot and its sha256 (hex).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chunk {
    pub offset: u64,
    pub len: u32,
    pub sha256: String,
}

/// A slot's chunks in order; together they are the slot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkIndex {
    pub cutting: Cutting,
    pub size: u64,
    /// Every chunk's sha256 pins its bytes, so a slot rebuilt from chunks
    /// that each match is the slot (no second pass over it for a hash of
    /// the whole).
    pub chunks: Vec<Chunk>,
}

impl ChunkIndex {
    /// Why this index cannot describe a slot, if it cannot: a cutting the
    /// chunker refuses, or chunks that do not cover `0..size` exactly in
    /// order (an index from elsewhere must not steer writes or panic).
    pub fn problem(&self) -> Option<String> {
        let c = self.cutting;
        if !(1..=63).contains(&c.bits) || c.min == 0 || c.min > c.max {
            return Some(format!("its cutting {c:?} is not one nodeforge makes"));
        }
        let mut at = 0u64;
        for ch in &self.chunks {
            if ch.offset != at || ch.len == 0 || ch.len > c.max {
                return Some(format!(
                    "its chunk at offset {} ({} bytes) does not follow on from {at}",
                    ch.offset, ch.len
                ));
            }
            at += u64::from(ch.len);
        }
        (at != self.size).then(|| format!("its chunks cover {at} bytes, its size is {}", self.size))
    }
}

/// The gear table: 256 fixed pseudo-random words (splitmix64 from a fixed
/// seed), the same in every build and on every node.
fn gear() -> [u64; 256] {
    let mut table = [0u64; 256];
    let mut state: u64 = 0x6e6f_6465_666f_7267; // "nodeforg"
    for slot in table.iter_mut() {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        *slot = z ^ (z >> 31);
    }
    table
}

/// Cuts everything `r` yields into chunks. Reads that come back all
/// zeros (a partition's free space) are fed as zeros, which costs no
/// hashing of their bytes; the chunks are the same.
pub fn index(r: &mut impl Read, cutting: Cutting) -> io::Result<ChunkIndex> {
    let mut c = Chunker::new(cutting);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if buf[..n].iter().all(|&b| b == 0) {
            c.zeros(n as u64);
        } else {
            c.data(&buf[..n]);
        }
    }
    Ok(c.finish())
}

/// Zeros the slow path feeds byte by byte.
static ZEROS: [u8; 4096] = [0; 4096];

/// The chunker as a stream: bytes go in as `data` or, where the caller
/// knows they are zeros (a disk image's holes: the root filesystem's free
/// space, most of a slot), as `zeros`, which costs next to nothing. Both
/// cut the same chunks from the same bytes.
pub struct Chunker {
    cutting: Cutting,
    gear: [u64; 256],
    shift: u32,
    /// The rolling hash after a long run of zeros (it then depends on
    /// nothing before it), and whether it makes a cut.
    zero_hash: u64,
    hash: u64,
    len: u32,
    offset: u64,
    /// Consecutive zero bytes last fed, up to 64.
    trailing_zeros: u32,
    sha: Sha256,
    /// The chunk so far is this many zeros, not yet fed to `sha`.
    pending_zeros: Option<u32>,
    zero_sums: std::collections::HashMap<u32, String>,
    chunks: Vec<Chunk>,
}

impl Chunker {
    pub fn new(cutting: Cutting) -> Self {
        let gear = gear();
        Chunker {
            cutting,
            gear,
            shift: 64 - cutting.bits,
            zero_hash: gear[0].wrapping_neg(),
            hash: 0,
            len: 0,
            offset: 0,
            trailing_zeros: 0,
            sha: Sha256::new(),
            pending_zeros: Some(0),
            zero_sums: Default::default(),
            chunks: Vec::new(),
        }
    }

    pub fn data(&mut self, buf: &[u8]) {
        self.feed(buf, false);
    }

    /// `n` zero bytes.
    pub fn zeros(&mut self, mut n: u64) {
        let zero_run_cuts = self.zero_hash >> self.shift == 0;
        while n > 0 {
            if self.trailing_zeros >= 64 && !zero_run_cuts {
                // The hash stays `zero_hash` and cuts nothing: the chunk
                // runs on to its longest.
                let k = n.min(u64::from(self.cutting.max - self.len)) as u32;
                self.absorb_zeros(k);
                self.len += k;
                n -= u64::from(k);
                if self.len == self.cutting.max {
                    self.cut();
                }
            } else {
                let k = n.min(ZEROS.len() as u64) as usize;
                self.feed(&ZEROS[..k], true);
                n -= k as u64;
            }
        }
    }

    /// Rolls the gear hash over `buf`, cutting where it says. Two things
    /// keep this cheap (it is most of an update's time on a small node):
    /// no cut comes before `min`, and the hash at a byte depends on the 64
    /// bytes before it only (each step shifts the older ones out), so a
    /// chunk's bytes below `min - 64` are skipped; and the loop that looks
    /// for a cut does nothing else (no per-byte zero count: that is taken
    /// from the buffer's tail once). The cuts are the byte-by-byte ones
    /// (`tests::feed_cuts_where_the_byte_by_byte_chunker_cuts`).
    fn feed(&mut self, buf: &[u8], zeros: bool) {
        let gear = self.gear;
        let shift = self.shift;
        let (min, max) = (self.cutting.min as usize, self.cutting.max as usize);
        let mut hash = self.hash;
        let mut len = self.len as usize;
        // The first byte not yet absorbed into the chunk's sha256, and
        // where the last cut in `buf` was.
        let mut start = 0;
        let mut last_cut = None;
        let mut i = 0;
        while i < buf.len() {
            if len + 1 < min {
                // Skip what cannot reach the hash at `min`, but roll the
                // buffer's last 64 bytes so that the hash left behind is
                // exact (the zero-run fast path relies on it).
                let skip = min
                    .saturating_sub(64)
                    .saturating_sub(len)
                    .min(buf.len().saturating_sub(i + 64));
                i += skip;
                len += skip;
                let stop = buf.len().min(i + (min - 1 - len));
                for &b in &buf[i..stop] {
                    hash = (hash << 1).wrapping_add(gear[b as usize]);
                }
                len += stop - i;
                i = stop;
                continue;
            }
            let stop = buf.len().min(i + (max - len));
            let mut found = None;
            for (k, &b) in buf[i..stop].iter().enumerate() {
                hash = (hash << 1).wrapping_add(gear[b as usize]);
                if hash >> shift == 0 {
                    found = Some(k);
                    break;
                }
            }
            let end = found.map_or(stop, |k| i + k + 1);
            len += end - i;
            i = end;
            if found.is_some() || len == max {
                self.absorb(&buf[start..i], zeros);
                self.len = len as u32;
                self.cut();
                hash = 0;
                len = 0;
                start = i;
                last_cut = Some(i);
            }
        }
        self.absorb(&buf[start..], zeros);
        self.hash = hash;
        self.len = len as u32;
        // Zero bytes since the last nonzero one or the last cut, up to 64.
        let tail = &buf[last_cut.unwrap_or(0)..];
        let run = tail.iter().rev().take(64).take_while(|&&b| b == 0).count() as u32;
        self.trailing_zeros = if last_cut.is_none() && run as usize == tail.len() {
            (self.trailing_zeros + run).min(64)
        } else {
            run
        };
    }

    fn absorb(&mut self, bytes: &[u8], zeros: bool) {
        if zeros {
            self.absorb_zeros(bytes.len() as u32);
            return;
        }
        if let Some(n) = self.pending_zeros.take() {
            feed_zeros(&mut self.sha, n);
        }
        self.sha.update(bytes);
    }

    fn absorb_zeros(&mut self, n: u32) {
        match &mut self.pending_zeros {
            Some(p) => *p += n,
            None => feed_zeros(&mut self.sha, n),
        }
    }

    fn cut(&mut self) {
        let sha256 = match self.pending_zeros {
            Some(n) => self
                .zero_sums
                .entry(n)
                .or_insert_with(|| {
                    let mut h = Sha256::new();
                    feed_zeros(&mut h, n);
                    hex::encode(h.finalize())
                })
                .clone(),
            None => hex::encode(self.sha.finalize_reset()),
        };
        self.chunks.push(Chunk {
            offset: self.offset,
            len: self.len,
            sha256,
        });
        self.offset += u64::from(self.len);
        self.len = 0;
        self.hash = 0;
        self.trailing_zeros = 0;
        self.pending_zeros = Some(0);
    }

    pub fn finish(mut self) -> ChunkIndex {
        if self.len > 0 {
            self.cut();
        }
        ChunkIndex {
            cutting: self.cutting,
            size: self.offset,
            chunks: self.chunks,
        }
    }
}

fn feed_zeros(h: &mut Sha256, mut n: u32) {
    while n > 0 {
        let k = n.min(ZEROS.len() as u32);
        h.update(&ZEROS[..k as usize]);
        n -= k;
    }
}

/// Whether two indexes were cut alike, so their chunks can be compared
/// (indexes cut differently share no cut points).
fn same_cutting(a: &ChunkIndex, b: &ChunkIndex) -> bool {
    a.cutting == b.cutting
}

/// Deterministic incompressible bytes for the tests.
#[cfg(test)]
mod test_noise {
    pub fn noise(n: usize, seed: u64) -> Vec<u8> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                s as u8
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_index_that_cannot_describe_a_slot_is_named_as_such() {
        let good = index(&mut &test_noise::noise(2_000_000, 3)[..], DEFAULT_CUTTING).unwrap();
        assert_eq!(good.problem(), None);
        let mut gap = good.clone();
        gap.chunks.remove(1);
        assert!(
            gap.problem().unwrap().contains("does not follow on"),
            "{:?}",
            gap.problem()
        );
        let mut short = good.clone();
        short.size += 1;
        assert!(short.problem().unwrap().contains("its size is"));
        let mut cut = good.clone();
        cut.cutting.bits = 0;
        assert!(cut.problem().unwrap().contains("cutting"));
    }

    #[test]
    fn zeros_said_to_be_zeros_cut_as_zeros_read() {
        // Data, a long run of zeros (a hole), data, a short run, data.
        let mut bytes = noise(100_000, 3);
        bytes.extend(vec![0u8; 3_000_000]);
        bytes.extend(noise(50_000, 4));
        bytes.extend(vec![0u8; 70]);
        bytes.extend(noise(300_000, 5));
        let read = idx(&bytes);
        let mut c = Chunker::new(DEFAULT_CUTTING);
        c.data(&bytes[..100_000]);
        c.zeros(3_000_000);
        c.data(&bytes[3_100_000..3_150_000]);
        c.zeros(70);
        c.data(&bytes[3_150_070..]);
        assert_eq!(c.finish(), read);
        // A slot of nothing but zeros.
        let mut c = Chunker::new(DEFAULT_CUTTING);
        c.zeros(1 << 22);
        assert_eq!(c.finish(), idx(&vec![0u8; 1 << 22]));
    }

    /// The chunker as first written, a byte at a time: the cut points
    /// `Chunker::feed` must give.
    fn reference_cuts(data: &[u8], c: Cutting) -> Vec<(u64, u32)> {
        let gear = gear();
        let (mut hash, mut len, mut offset, mut cuts) = (0u64, 0u32, 0u64, Vec::new());
        for &b in data {
            hash = (hash << 1).wrapping_add(gear[b as usize]);
            len += 1;
            if (len >= c.min && hash >> (64 - c.bits) == 0) || len >= c.max {
                cuts.push((offset, len));
                offset += u64::from(len);
                (hash, len) = (0, 0);
            }
        }
        if len > 0 {
            cuts.push((offset, len));
        }
        cuts
    }

    #[test]
    fn feed_cuts_where_the_byte_by_byte_chunker_cuts() {
        // Noise, zeros, short runs, and cuttings with a small `min` and a
        // `max` that cuts often; fed whole, in odd pieces, and as zeros.
        let mut data = noise(700_000, 21);
        data.extend(vec![0u8; 600_000]);
        data.extend(noise(90, 22));
        data.extend(vec![0u8; 63]);
        data.extend(noise(400_000, 23));
        for (n, run) in [300, 4500, 170, 9000, 260].into_iter().enumerate() {
            data.extend(vec![0u8; run]);
            data.extend(noise(1000 + 37 * n, 30 + n as u64));
        }
        let tiny = Cutting {
            min: 40,
            bits: 6,
            max: 300,
        };
        let small = Cutting {
            min: 64,
            bits: 9,
            max: 70,
        };
        // Cuts soon after `min`, so a hash left wrong after a zero run shows.
        let eager = Cutting {
            min: 200,
            bits: 4,
            max: 5000,
        };
        for c in [DEFAULT_CUTTING, tiny, small, eager] {
            let want = reference_cuts(&data, c);
            for piece in [1 << 20, 4096, 1000, 100, 77, 1] {
                let mut ch = Chunker::new(c);
                let mut at = 0;
                for (n, p) in data.chunks(piece).enumerate() {
                    // Every third piece that is all zeros goes in as zeros.
                    if n % 3 == 0 && p.iter().all(|&b| b == 0) {
                        ch.zeros(p.len() as u64);
                    } else {
                        ch.data(p);
                    }
                    at += p.len();
                }
                assert_eq!(at, data.len());
                let got: Vec<(u64, u32)> = ch
                    .finish()
                    .chunks
                    .iter()
                    .map(|k| (k.offset, k.len))
                    .collect();
                assert_eq!(got, want, "{c:?}, pieces of {piece}");
            }
        }
    }

    use crate::test_noise::noise;

    fn idx(data: &[u8]) -> ChunkIndex {
        index(&mut &data[..], DEFAULT_CUTTING).unwrap()
    }

    #[test]
    fn chunks_cover_the_input_within_their_bounds() {
        let data = noise(3 << 20, 7);
        let i = idx(&data);
        assert_eq!(i.size, data.len() as u64);
        let mut at = 0;
        for (n, c) in i.chunks.iter().enumerate() {
            assert_eq!(c.offset, at);
            assert!(c.len <= DEFAULT_CUTTING.max);
            if n + 1 < i.chunks.len() {
                assert!(c.len >= DEFAULT_CUTTING.min);
            }
            let bytes = &data[c.offset as usize..][..c.len as usize];
            assert_eq!(c.sha256, hex::encode(Sha256::digest(bytes)));
            at += u64::from(c.len);
        }
        // Some 40 chunks of about 80 KiB, not a handful of maximal ones.
        assert!((20..80).contains(&i.chunks.len()), "{}", i.chunks.len());
        // Read in pieces or whole, the cut is the same.
        let mut pieces = std::io::Read::chain(&data[..1000], &data[1000..]);
        assert_eq!(index(&mut pieces, DEFAULT_CUTTING).unwrap(), i);
    }

    #[test]
    fn an_insertion_costs_the_chunks_around_it_not_all_after_it() {
        let old = noise(4 << 20, 11);
        let mut new = old.clone();
        // A file grew by 4 KiB in the middle: everything after it moved.
        let extra = noise(4096, 99);
        new.splice(2 << 20..2 << 20, extra);
        let cost = |have: &[u8], want: &[u8]| assemble::plan(&idx(have), &idx(want)).unwrap();
        let d = cost(&old, &new);
        assert!(
            d.fetch_bytes < 600 << 10,
            "fetched {} of {} bytes",
            d.fetch_bytes,
            d.size
        );
        // Identical slots cost nothing; long runs of zeros are never fetched.
        assert_eq!(cost(&old, &old).fetch_bytes, 0);
        let zeros = vec![0u8; 8 << 20];
        let z = cost(&old, &zeros);
        assert_eq!(z.fetch_chunks, 0, "{z:?}");
    }
}

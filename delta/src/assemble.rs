//! Rebuilding a new slot from the running one: each chunk of the new
//! index is copied from where the old slot has the same bytes, written as
//! zeros when it is zeros, or fetched. A fetched chunk is checked against
//! its sha256 before it is written; then the written slot is read back and
//! every chunk checked (`verify`), so a slot that verifies is the slot the
//! (signed) index describes. Copies are checked by that read-back only:
//! hashing them on the way too would read and hash the running slot a
//! third time, which on a small node is most of an update's time.

use std::collections::HashMap;
use std::io;

use sha2::{Digest, Sha256};

use crate::{same_cutting, Chunk, ChunkIndex};

/// Where one chunk of the new slot comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The same bytes at this offset of the old slot.
    Local(u64),
    /// All zeros: written without reading or fetching.
    Zeros,
    /// Fetched (an HTTP Range of the released image).
    Remote,
}

/// What assembling the new slot will do, before any byte is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub steps: Vec<(Chunk, Source)>,
    pub fetch_chunks: usize,
    pub fetch_bytes: u64,
    pub local_bytes: u64,
    pub size: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum AssembleError {
    #[error(
        "the two indexes were cut differently ({have:?} and {want:?}): the old slot cannot \
         be matched chunk by chunk"
    )]
    Cutting {
        have: crate::Cutting,
        want: crate::Cutting,
    },
    #[error(
        "the new slot is {want} bytes but its target holds {room}: it does not fit (nothing \
         was written)"
    )]
    TooLarge { want: u64, room: u64 },
    #[error(
        "the chunk at {offset} ({len} bytes) arrived with sha256 {got}, the index says {want}"
    )]
    BadChunk {
        offset: u64,
        len: u32,
        got: String,
        want: String,
    },
    #[error(
        "the chunk at {offset} ({len} bytes) reads back with sha256 {got}, {want} was written: \
         the disk may be failing"
    )]
    ReadBack {
        offset: u64,
        len: u32,
        got: String,
        want: String,
    },
    #[error("{what} the chunk at {offset}: {source}")]
    Io {
        what: &'static str,
        offset: u64,
        source: io::Error,
    },
}

/// sha256 (hex) of `len` zero bytes.
fn zero_sum(len: u32, cache: &mut HashMap<u32, String>) -> String {
    cache
        .entry(len)
        .or_insert_with(|| {
            let mut h = Sha256::new();
            crate::feed_zeros(&mut h, len);
            hex::encode(h.finalize())
        })
        .clone()
}

/// Decides each chunk's source. `have` is the index of the running slot
/// as it is now (cut by the node itself).
pub fn plan(have: &ChunkIndex, want: &ChunkIndex) -> Result<Plan, AssembleError> {
    if !same_cutting(have, want) {
        return Err(AssembleError::Cutting {
            have: have.cutting,
            want: want.cutting,
        });
    }
    let local: HashMap<&str, u64> = have
        .chunks
        .iter()
        .map(|c| (c.sha256.as_str(), c.offset))
        .collect();
    let mut zeros = HashMap::new();
    let (mut fetch_chunks, mut fetch_bytes, mut local_bytes) = (0, 0, 0);
    let steps = want
        .chunks
        .iter()
        .map(|c| {
            let source = if c.sha256 == zero_sum(c.len, &mut zeros) {
                Source::Zeros
            } else if let Some(&at) = local.get(c.sha256.as_str()) {
                local_bytes += u64::from(c.len);
                Source::Local(at)
            } else {
                fetch_chunks += 1;
                fetch_bytes += u64::from(c.len);
                Source::Remote
            };
            (c.clone(), source)
        })
        .collect();
    Ok(Plan {
        steps,
        fetch_chunks,
        fetch_bytes,
        local_bytes,
        size: want.size,
    })
}

/// What assembling did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Assembled {
    pub fetched_bytes: u64,
    pub copied_bytes: u64,
}

/// Writes the new slot into `write_at` (a device or file of `room`
/// bytes): local chunks read with `read_local` and written as they are
/// (`verify` checks them), the rest with `fetch`, each fetched chunk
/// checked before it is written.
pub fn assemble(
    plan: &Plan,
    room: u64,
    mut read_local: impl FnMut(u64, &mut [u8]) -> io::Result<()>,
    mut fetch: impl FnMut(u64, &mut [u8]) -> io::Result<()>,
    mut write_at: impl FnMut(u64, &[u8]) -> io::Result<()>,
) -> Result<Assembled, AssembleError> {
    if plan.size > room {
        return Err(AssembleError::TooLarge {
            want: plan.size,
            room,
        });
    }
    let mut done = Assembled::default();
    let mut buf = Vec::new();
    for (chunk, source) in &plan.steps {
        buf.clear();
        buf.resize(chunk.len as usize, 0);
        match source {
            Source::Zeros => {}
            Source::Local(at) => {
                read_local(*at, &mut buf)
                    .map_err(|e| io_error("reading the old slot for", chunk, e))?;
                done.copied_bytes += u64::from(chunk.len);
            }
            Source::Remote => {
                fetch_checked(chunk, &mut buf, &mut fetch)?;
                done.fetched_bytes += u64::from(chunk.len);
            }
        }
        write_at(chunk.offset, &buf).map_err(|e| io_error("writing", chunk, e))?;
    }
    Ok(done)
}

/// What the read-back found and mended.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verified {
    /// Copied chunks that did not read back as the index says (the
    /// running slot is written to, and changed after it was indexed):
    /// fetched, written again and read back again.
    pub refetched_chunks: usize,
    pub refetched_bytes: u64,
}

/// Reads the written slot back with `read_at` and checks every chunk:
/// zeros are zeros, the rest has its sha256. A copied chunk that does not
/// match is fetched (checked), written again and read back once more; any
/// other mismatch means the disk did not keep what it was given.
pub fn verify(
    plan: &Plan,
    mut read_at: impl FnMut(u64, &mut [u8]) -> io::Result<()>,
    mut fetch: impl FnMut(u64, &mut [u8]) -> io::Result<()>,
    mut write_at: impl FnMut(u64, &[u8]) -> io::Result<()>,
) -> Result<Verified, AssembleError> {
    let mut done = Verified::default();
    let mut buf = Vec::new();
    for (chunk, source) in &plan.steps {
        buf.clear();
        buf.resize(chunk.len as usize, 0);
        read_at(chunk.offset, &mut buf).map_err(|e| io_error("reading back", chunk, e))?;
        let Some(got) = mismatch(chunk, *source, &buf) else {
            continue;
        };
        if !matches!(source, Source::Local(_)) {
            return Err(read_back_error(chunk, got));
        }
        fetch_checked(chunk, &mut buf, &mut fetch)?;
        write_at(chunk.offset, &buf).map_err(|e| io_error("writing", chunk, e))?;
        read_at(chunk.offset, &mut buf).map_err(|e| io_error("reading back", chunk, e))?;
        if let Some(got) = mismatch(chunk, *source, &buf) {
            return Err(read_back_error(chunk, got));
        }
        done.refetched_chunks += 1;
        done.refetched_bytes += u64::from(chunk.len);
    }
    Ok(done)
}

/// The sha256 of `bytes` when they are not `chunk`'s; zeros are checked
/// as zeros, which costs no hashing (most of a slot is free space).
fn mismatch(chunk: &Chunk, source: Source, bytes: &[u8]) -> Option<String> {
    if source == Source::Zeros && bytes.iter().all(|&b| b == 0) {
        return None;
    }
    let got = hex::encode(Sha256::digest(bytes));
    (got != chunk.sha256).then_some(got)
}

fn fetch_checked(
    chunk: &Chunk,
    buf: &mut [u8],
    fetch: &mut impl FnMut(u64, &mut [u8]) -> io::Result<()>,
) -> Result<(), AssembleError> {
    fetch(chunk.offset, buf).map_err(|e| io_error("fetching", chunk, e))?;
    let got = hex::encode(Sha256::digest(&*buf));
    if got != chunk.sha256 {
        return Err(AssembleError::BadChunk {
            offset: chunk.offset,
            len: chunk.len,
            got,
            want: chunk.sha256.clone(),
        });
    }
    Ok(())
}

fn io_error(what: &'static str, chunk: &Chunk, source: io::Error) -> AssembleError {
    AssembleError::Io {
        what,
        offset: chunk.offset,
        source,
    }
}

fn read_back_error(chunk: &Chunk, got: String) -> AssembleError {
    AssembleError::ReadBack {
        offset: chunk.offset,
        len: chunk.len,
        got,
        want: chunk.sha256.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_noise::noise;
    use crate::{index, DEFAULT_CUTTING};

    fn slot(parts: &[&[u8]]) -> Vec<u8> {
        parts.concat()
    }

    fn at(data: &[u8], offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let start = offset as usize;
        buf.copy_from_slice(&data[start..start + buf.len()]);
        Ok(())
    }

    #[test]
    fn a_new_slot_is_built_from_old_chunks_zeros_and_fetched_ones() {
        let a = noise(600_000, 1);
        let b = noise(400_000, 2);
        let zeros = vec![0u8; 1 << 20];
        let old = slot(&[&a, &zeros, &b]);
        // The new slot: b moved to the front, a new file, a's data again.
        let fresh = noise(100_000, 3);
        let new = slot(&[&b, &fresh, &zeros, &a]);
        let (have, want) = (
            index(&mut &old[..], DEFAULT_CUTTING).unwrap(),
            index(&mut &new[..], DEFAULT_CUTTING).unwrap(),
        );
        let p = plan(&have, &want).unwrap();
        assert!(p.steps.iter().any(|(_, s)| *s == Source::Zeros));
        // The new file and the chunks across each seam (up to 256 KiB
        // each, where they run into zeros) are fetched; most of a and b
        // is copied.
        assert!(p.fetch_bytes < 800_000, "{p:?}");
        assert!(p.local_bytes > 600_000, "{p:?}");
        let mut out = vec![0xAAu8; new.len()];
        let mut fetched = 0;
        let done = assemble(
            &p,
            out.len() as u64,
            |o, buf| at(&old, o, buf),
            |o, buf| {
                fetched += buf.len();
                at(&new, o, buf)
            },
            |o, bytes| {
                out[o as usize..o as usize + bytes.len()].copy_from_slice(bytes);
                Ok(())
            },
        )
        .unwrap();
        assert!(out == new, "the assembled slot differs");
        assert_eq!(done.fetched_bytes, fetched as u64);
        assert_eq!(done.fetched_bytes, p.fetch_bytes);
        let checked = verify(
            &p,
            |o, buf| at(&out, o, buf),
            |_, _| panic!("nothing to fetch again"),
            |_, _| panic!("nothing to write again"),
        )
        .unwrap();
        assert_eq!(checked, Verified::default());
    }

    #[test]
    fn a_damaged_fetch_stops_and_a_changed_old_slot_is_fetched_instead() {
        let old = noise(500_000, 5);
        let mut new = old.clone();
        new.extend(noise(200_000, 6));
        let (have, want) = (
            index(&mut &old[..], DEFAULT_CUTTING).unwrap(),
            index(&mut &new[..], DEFAULT_CUTTING).unwrap(),
        );
        let p = plan(&have, &want).unwrap();
        // One flipped byte on the wire.
        let err = assemble(
            &p,
            new.len() as u64,
            |o, buf| at(&old, o, buf),
            |o, buf| {
                at(&new, o, buf)?;
                buf[0] ^= 1;
                Ok(())
            },
            |_, _| Ok(()),
        )
        .unwrap_err();
        assert!(matches!(err, AssembleError::BadChunk { .. }), "{err}");
        // The old slot changed after it was indexed: the copy is wrong,
        // the read-back finds it, fetches that chunk, and the result is
        // the new slot.
        let mut changed = old.clone();
        changed[10] ^= 1;
        let out = std::cell::RefCell::new(vec![0u8; new.len()]);
        let write = |o: u64, bytes: &[u8]| {
            out.borrow_mut()[o as usize..o as usize + bytes.len()].copy_from_slice(bytes);
            Ok(())
        };
        let done = assemble(
            &p,
            new.len() as u64,
            |o, buf| at(&changed, o, buf),
            |o, buf| at(&new, o, buf),
            write,
        )
        .unwrap();
        assert_eq!(done.fetched_bytes, p.fetch_bytes);
        assert!(*out.borrow() != new);
        let checked = verify(
            &p,
            |o, buf| at(&out.borrow(), o, buf),
            |o, buf| at(&new, o, buf),
            write,
        )
        .unwrap();
        assert!(*out.borrow() == new);
        assert_eq!(checked.refetched_chunks, 1);
        // A disk that does not keep a fetched chunk (or zeros) is named.
        let mut bad = new.clone();
        let last = p.steps.last().unwrap().0.clone();
        bad[last.offset as usize] ^= 1;
        let err = verify(
            &p,
            |o, buf| at(&bad, o, buf),
            |o, buf| at(&new, o, buf),
            |_, _| Ok(()),
        )
        .unwrap_err();
        assert!(
            matches!(err, AssembleError::ReadBack { offset, .. } if offset == last.offset),
            "{err}"
        );
        // A copied chunk that still reads back wrong after it was fetched
        // again: the disk, too.
        let err = verify(
            &p,
            |o, buf| at(&changed, o, buf),
            |o, buf| at(&new, o, buf),
            |_, _| Ok(()),
        )
        .unwrap_err();
        assert!(matches!(err, AssembleError::ReadBack { .. }), "{err}");
        // Too large for its target: refused before writing.
        let mut wrote = false;
        let err = assemble(
            &p,
            new.len() as u64 - 1,
            |o, buf| at(&old, o, buf),
            |o, buf| at(&new, o, buf),
            |_, _| {
                wrote = true;
                Ok(())
            },
        )
        .unwrap_err();
        assert!(matches!(err, AssembleError::TooLarge { .. }), "{err}");
        assert!(!wrote);
    }
}

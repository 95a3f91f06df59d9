//! Rebuilding a new slot from the running one: each chunk of the new
//! index is copied from where the old slot has the same bytes, written as
//! zeros when it is zeros, or fetched; every chunk is checked against its
//! sha256 before it is written, so a slot that assembles is the slot the
//! (signed) index describes.

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
    /// Local chunks that no longer matched (the old slot changed since it
    /// was indexed) and were fetched instead.
    pub refetched_chunks: usize,
}

/// Writes the new slot into `write_at` (a device or file of `room`
/// bytes): local chunks read with `read_local`, the rest with `fetch`.
/// Each chunk is checked before it is written; a local chunk that fails
/// its check is fetched instead.
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
        let io = |what, source| AssembleError::Io {
            what,
            offset: chunk.offset,
            source,
        };
        let mut from_remote = true;
        match source {
            Source::Zeros => from_remote = false,
            Source::Local(at) => {
                read_local(*at, &mut buf).map_err(|e| io("reading the old slot for", e))?;
                if hex::encode(Sha256::digest(&buf)) == chunk.sha256 {
                    from_remote = false;
                    done.copied_bytes += u64::from(chunk.len);
                } else {
                    done.refetched_chunks += 1;
                }
            }
            Source::Remote => {}
        }
        if from_remote {
            fetch(chunk.offset, &mut buf).map_err(|e| io("fetching", e))?;
            let got = hex::encode(Sha256::digest(&buf));
            if got != chunk.sha256 {
                return Err(AssembleError::BadChunk {
                    offset: chunk.offset,
                    len: chunk.len,
                    got,
                    want: chunk.sha256.clone(),
                });
            }
            done.fetched_bytes += u64::from(chunk.len);
        }
        write_at(chunk.offset, &buf).map_err(|e| io("writing", e))?;
    }
    Ok(done)
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
        assert_eq!(done.refetched_chunks, 0);
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
        // The old slot changed after it was indexed: those chunks are
        // fetched, and the result is still the new slot.
        let mut changed = old.clone();
        changed[10] ^= 1;
        let mut out = vec![0u8; new.len()];
        let done = assemble(
            &p,
            new.len() as u64,
            |o, buf| at(&changed, o, buf),
            |o, buf| at(&new, o, buf),
            |o, bytes| {
                out[o as usize..o as usize + bytes.len()].copy_from_slice(bytes);
                Ok(())
            },
        )
        .unwrap();
        assert!(out == new);
        assert_eq!(done.refetched_chunks, 1);
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

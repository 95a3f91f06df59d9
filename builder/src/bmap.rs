//! bmap files (bmaptool format 2.0): which ranges of an image hold data.
//!
//! A raw disk image is mostly holes; the bmap lists the mapped block ranges
//! with a sha256 per range so `nodeforge flash` (and Debian's `bmaptool
//! copy`) write only those and can prove what they wrote.

use anyhow::{bail, ensure, Context, Result};
use quick_xml::events::Event;
use sha2::{Digest, Sha256};
use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::Path;

mod extents;

/// Block size used for the bmaps we create (bmaptool's default too).
pub const BLOCK_SIZE: u64 = 4096;

/// One mapped range of blocks, `first..=last`, as in the XML.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BmapRange {
    pub first: u64,
    pub last: u64,
    /// sha256 of the range's bytes (cut at the image end); bmap 2.0 files
    /// made without checksums omit it.
    pub sha256: Option<[u8; 32]>,
}

/// A parsed or generated block map.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bmap {
    pub image_size: u64,
    pub block_size: u64,
    pub ranges: Vec<BmapRange>,
}

impl Bmap {
    pub fn blocks_count(&self) -> u64 {
        self.image_size.div_ceil(self.block_size)
    }

    pub fn mapped_blocks(&self) -> u64 {
        self.ranges.iter().map(|r| r.last - r.first + 1).sum()
    }

    /// Bytes that a copy writes (the last block may be short).
    pub fn mapped_bytes(&self) -> u64 {
        self.ranges
            .iter()
            .map(|r| self.byte_range(r).end - self.byte_range(r).start)
            .sum()
    }

    /// The bytes a range covers, cut at the image end.
    pub fn byte_range(&self, r: &BmapRange) -> Range<u64> {
        let start = r.first * self.block_size;
        let end = ((r.last + 1) * self.block_size).min(self.image_size);
        start..end
    }

    /// Scans `image` for mapped ranges and hashes each one.
    pub fn create(image: &Path) -> Result<Bmap> {
        Ok(Bmap::create_with_image_sha256(image)?.0)
    }

    /// [`Bmap::create`] that also returns the sha256 of the whole image,
    /// from the same single read of its mapped ranges: holes are fed to
    /// the whole-image hash as zeros without reading them.
    pub fn create_with_image_sha256(image: &Path) -> Result<(Bmap, String)> {
        let file =
            File::open(image).with_context(|| format!("opening image {}", image.display()))?;
        let image_size = file
            .metadata()
            .with_context(|| format!("reading size of {}", image.display()))?
            .len();
        ensure!(image_size > 0, "image {} is empty", image.display());
        let extents = extents::data_extents(&file, image_size)
            .with_context(|| format!("finding mapped ranges of {}", image.display()))?;
        let mut ranges = extents::to_block_ranges(&extents, BLOCK_SIZE);
        let mut bmap = Bmap {
            image_size,
            block_size: BLOCK_SIZE,
            ranges: Vec::new(),
        };
        let mut whole = Sha256::new();
        let mut hashed_to = 0u64;
        let mut buf = vec![0u8; 4 << 20];
        for r in &mut ranges {
            let span = bmap.byte_range(r);
            feed_zeros(&mut whole, span.start - hashed_to);
            r.sha256 = Some(
                hash_file_range(&file, span.clone(), &mut buf, &mut whole).with_context(|| {
                    format!(
                        "hashing bytes {}..{} of {}",
                        span.start,
                        span.end,
                        image.display()
                    )
                })?,
            );
            hashed_to = span.end;
        }
        feed_zeros(&mut whole, image_size - hashed_to);
        bmap.ranges = ranges;
        Ok((bmap, hex::encode(whole.finalize())))
    }

    /// Reads and checks a bmap file (ours or `bmaptool create`'s).
    pub fn load(path: &Path) -> Result<Bmap> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading bmap {}", path.display()))?;
        Bmap::parse(&text).with_context(|| format!("parsing bmap {}", path.display()))
    }

    /// Parses bmap XML, checking its BmapFileChecksum as bmaptool does.
    pub fn parse(text: &str) -> Result<Bmap> {
        let doc = parse_xml(text)?;
        let version = doc.version.context("no <bmap version=...> attribute")?;
        let major = version.split('.').next().unwrap_or("");
        // 1.4 was a misnumbered 2.0; older versions hash with sha1 and are
        // not written by any bmaptool still in use.
        ensure!(
            major == "2" || version == "1.4",
            "bmap format version {version} is not supported (only 2.x)"
        );
        let cs_type = doc.checksum_type.as_deref().map(str::trim).unwrap_or("");
        ensure!(
            cs_type == "sha256",
            "checksum type {cs_type:?} is not supported (only sha256)"
        );
        // Before the fields, so a damaged file is reported as damaged.
        let file_sum = doc
            .file_checksum
            .as_deref()
            .map(str::trim)
            .context("missing <BmapFileChecksum>")?;
        verify_file_checksum(text, file_sum)?;

        let field = |name: &str, v: &Option<String>| -> Result<u64> {
            let v = v.as_deref().with_context(|| format!("missing <{name}>"))?;
            v.trim()
                .parse()
                .with_context(|| format!("<{name}> {v:?} is not a number"))
        };
        let image_size = field("ImageSize", &doc.image_size)?;
        let block_size = field("BlockSize", &doc.block_size)?;
        let blocks_count = field("BlocksCount", &doc.blocks_count)?;
        let mapped = field("MappedBlocksCount", &doc.mapped_count)?;
        ensure!(
            block_size > 0 && block_size % 512 == 0,
            "block size {block_size} is not a multiple of 512"
        );

        let bmap_ranges = doc
            .ranges
            .iter()
            .map(|(text, chksum)| parse_range(text, chksum.as_deref()))
            .collect::<Result<Vec<_>>>()?;
        let bmap = Bmap {
            image_size,
            block_size,
            ranges: bmap_ranges,
        };
        ensure!(
            bmap.blocks_count() == blocks_count,
            "BlocksCount {blocks_count} does not match ImageSize {image_size} / BlockSize {block_size}"
        );
        ensure!(
            bmap.mapped_blocks() == mapped,
            "MappedBlocksCount {mapped} does not match the ranges ({})",
            bmap.mapped_blocks()
        );
        let mut next = 0;
        for r in &bmap.ranges {
            ensure!(
                r.first >= next && r.last < blocks_count,
                "range {}-{} overlaps another, is out of order or lies past the image end",
                r.first,
                r.last
            );
            next = r.last + 1;
        }
        Ok(bmap)
    }

    /// Renders the XML in bmaptool's layout, with BmapFileChecksum filled in.
    pub fn to_xml(&self) -> String {
        let mapped = self.mapped_blocks();
        let percent = if self.blocks_count() == 0 {
            0.0
        } else {
            mapped as f64 * 100.0 / self.blocks_count() as f64
        };
        let mut x = String::new();
        x.push_str("<?xml version=\"1.0\" ?>\n");
        x.push_str("<!-- Block map of a raw disk image, written by nodeforge in bmaptool's\n");
        x.push_str("     format: only the listed (mapped) blocks need copying to a device;\n");
        x.push_str("     the chksum attribute is the sha256 of each range. -->\n\n");
        x.push_str("<bmap version=\"2.0\">\n");
        x.push_str(&format!(
            "    <!-- Image size in bytes: {} -->\n",
            human_size(self.image_size)
        ));
        x.push_str(&format!(
            "    <ImageSize> {} </ImageSize>\n\n",
            self.image_size
        ));
        x.push_str("    <!-- Size of a block in bytes -->\n");
        x.push_str(&format!(
            "    <BlockSize> {} </BlockSize>\n\n",
            self.block_size
        ));
        x.push_str("    <!-- Count of blocks in the image file -->\n");
        x.push_str(&format!(
            "    <BlocksCount> {} </BlocksCount>\n\n",
            self.blocks_count()
        ));
        x.push_str(&format!(
            "    <!-- Count of mapped blocks: {} or {percent:.1}% -->\n",
            human_size(self.mapped_bytes())
        ));
        x.push_str(&format!(
            "    <MappedBlocksCount> {mapped} </MappedBlocksCount>\n\n"
        ));
        x.push_str("    <!-- Type of checksum used in this file -->\n");
        x.push_str("    <ChecksumType> sha256 </ChecksumType>\n\n");
        x.push_str(
            "    <!-- The checksum of this bmap file. When it is calculated, the value of\n",
        );
        x.push_str("         the checksum has be zero (all ASCII \"0\" symbols).  -->\n");
        let sum_at = x.len() + "    <BmapFileChecksum> ".len();
        x.push_str(&format!(
            "    <BmapFileChecksum> {} </BmapFileChecksum>\n\n",
            "0".repeat(64)
        ));
        x.push_str("    <BlockMap>\n");
        for r in &self.ranges {
            let span = if r.first == r.last {
                r.first.to_string()
            } else {
                format!("{}-{}", r.first, r.last)
            };
            match &r.sha256 {
                Some(h) => x.push_str(&format!(
                    "        <Range chksum=\"{}\"> {span} </Range>\n",
                    hex::encode(h)
                )),
                None => x.push_str(&format!("        <Range> {span} </Range>\n")),
            }
        }
        x.push_str("    </BlockMap>\n</bmap>\n");
        let sum = hex::encode(Sha256::digest(x.as_bytes()));
        x.replace_range(sum_at..sum_at + 64, &sum);
        x
    }
}

/// Creates the bmap of `image` and writes it to `out`; returns it.
pub fn write_bmap(image: &Path, out: &Path) -> Result<Bmap> {
    let bmap = Bmap::create(image)?;
    save(&bmap, out)?;
    Ok(bmap)
}

/// Writes `bmap` to `out` atomically.
pub fn save(bmap: &Bmap, out: &Path) -> Result<()> {
    crate::fsutil::atomic_write(out, bmap.to_xml().as_bytes())
        .with_context(|| format!("writing bmap {}", out.display()))
}

/// The bmap path for an image: `X.img.bmap`, or for `X.img.zst`/`X.img.xz`
/// the first of `X.img.zst.bmap` and `X.img.bmap` that exists.
pub fn bmap_path_for(image: &Path) -> Option<std::path::PathBuf> {
    let name = image.file_name()?.to_str()?;
    let mut candidates = vec![image.with_file_name(format!("{name}.bmap"))];
    for ext in [".zst", ".xz"] {
        if let Some(stem) = name.strip_suffix(ext) {
            candidates.push(image.with_file_name(format!("{stem}.bmap")));
        }
    }
    candidates.into_iter().find(|p| p.is_file())
}

/// Hashes `span` of `file`, feeding the same bytes to `whole` too.
fn hash_file_range(
    file: &File,
    span: Range<u64>,
    buf: &mut [u8],
    whole: &mut Sha256,
) -> Result<[u8; 32]> {
    let mut h = Sha256::new();
    let mut pos = span.start;
    while pos < span.end {
        let n = ((span.end - pos) as usize).min(buf.len());
        file.read_exact_at(&mut buf[..n], pos)?;
        h.update(&buf[..n]);
        whole.update(&buf[..n]);
        pos += n as u64;
    }
    Ok(h.finalize().into())
}

/// Feeds `len` zero bytes (a hole of the image) to `h`.
fn feed_zeros(h: &mut Sha256, mut len: u64) {
    static ZEROS: [u8; 64 << 10] = [0; 64 << 10];
    while len > 0 {
        let n = len.min(ZEROS.len() as u64) as usize;
        h.update(&ZEROS[..n]);
        len -= n as u64;
    }
}

/// bmaptool's rule: hash the file with the first occurrence of the stored
/// checksum replaced by zeros.
fn verify_file_checksum(text: &str, stored: &str) -> Result<()> {
    ensure!(
        stored.len() == 64 && stored.bytes().all(|b| b.is_ascii_hexdigit()),
        "BmapFileChecksum {stored:?} is not a sha256"
    );
    let at = text
        .find(stored)
        .context("BmapFileChecksum not found in the file text")?;
    let mut zeroed = text.as_bytes().to_vec();
    zeroed[at..at + 64].fill(b'0');
    let actual = hex::encode(Sha256::digest(&zeroed));
    ensure!(
        actual.eq_ignore_ascii_case(stored),
        "bmap file checksum mismatch: file hashes to {actual}, BmapFileChecksum says {stored}; the bmap was edited or damaged"
    );
    Ok(())
}

fn parse_range(text: &str, chksum: Option<&str>) -> Result<BmapRange> {
    let text = text.trim();
    let num = |s: &str| {
        s.trim()
            .parse::<u64>()
            .with_context(|| format!("bad block number in range {text:?}"))
    };
    let (first, last) = match text.split_once('-') {
        Some((a, b)) => (num(a)?, num(b)?),
        None => (num(text)?, num(text)?),
    };
    ensure!(first <= last, "range {text:?} ends before it starts");
    let sha256 = match chksum {
        None => None,
        Some(c) => {
            let mut out = [0u8; 32];
            hex::decode_to_slice(c.trim(), &mut out)
                .with_context(|| format!("chksum {c:?} of range {text:?} is not a sha256"))?;
            Some(out)
        }
    };
    Ok(BmapRange {
        first,
        last,
        sha256,
    })
}

#[derive(Default)]
struct RawDoc {
    version: Option<String>,
    image_size: Option<String>,
    block_size: Option<String>,
    blocks_count: Option<String>,
    mapped_count: Option<String>,
    checksum_type: Option<String>,
    file_checksum: Option<String>,
    ranges: Vec<(String, Option<String>)>,
}

fn parse_xml(text: &str) -> Result<RawDoc> {
    let mut reader = quick_xml::Reader::from_str(text);
    let mut doc = RawDoc::default();
    let mut range_sum: Option<String> = None;
    let mut value = String::new();
    loop {
        match reader.read_event().context("reading bmap XML")? {
            Event::Start(e) => {
                let name = String::from_utf8_lossy(e.name().as_ref()).into_owned();
                for a in e.attributes() {
                    let a = a.context("reading an XML attribute")?;
                    let v = a
                        .unescape_value()
                        .context("reading an XML attribute value")?
                        .into_owned();
                    match (name.as_str(), a.key.as_ref()) {
                        ("bmap", b"version") => doc.version = Some(v),
                        ("Range", b"chksum") => range_sum = Some(v),
                        _ => {}
                    }
                }
                value.clear();
            }
            Event::Text(t) => value.push_str(&t.unescape().context("reading XML text")?),
            Event::End(e) => {
                let name = e.name();
                let v = std::mem::take(&mut value);
                match name.as_ref() {
                    b"ImageSize" => doc.image_size = Some(v),
                    b"BlockSize" => doc.block_size = Some(v),
                    b"BlocksCount" => doc.blocks_count = Some(v),
                    b"MappedBlocksCount" => doc.mapped_count = Some(v),
                    b"ChecksumType" => doc.checksum_type = Some(v),
                    b"BmapFileChecksum" => doc.file_checksum = Some(v),
                    b"Range" => doc.ranges.push((v, range_sum.take())),
                    _ => {}
                }
            }
            Event::Empty(e) if e.name().as_ref() == b"bmap" => bail!("empty <bmap/> element"),
            Event::Eof => break,
            _ => {}
        }
    }
    Ok(doc)
}

/// bmaptool's human_size, for the comments only.
fn human_size(n: u64) -> String {
    crate::fsutil::binary_size(n, "bytes")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Bmap {
        Bmap {
            image_size: 10 * 4096 + 512,
            block_size: 4096,
            ranges: vec![
                BmapRange {
                    first: 0,
                    last: 1,
                    sha256: Some([1; 32]),
                },
                BmapRange {
                    first: 5,
                    last: 5,
                    sha256: Some([2; 32]),
                },
                BmapRange {
                    first: 9,
                    last: 10,
                    sha256: None,
                },
            ],
        }
    }

    #[test]
    fn one_pass_image_hash_equals_hashing_every_byte() {
        use std::io::{Seek, SeekFrom, Write};
        let (_dir, path) = crate::testutil::scratch_path("sparse.img");
        let mut f = File::create(&path).unwrap();
        // Data, a hole, data not block-aligned, and a hole at the end.
        f.write_all(&[7u8; 5000]).unwrap();
        f.seek(SeekFrom::Start(3 << 20)).unwrap();
        f.write_all(b"middle").unwrap();
        f.set_len((8 << 20) + 100).unwrap();
        drop(f);
        let (bmap, sha) = Bmap::create_with_image_sha256(&path).unwrap();
        assert_eq!(sha, crate::fsutil::sha256_file(&path).unwrap());
        assert_eq!(bmap, Bmap::create(&path).unwrap());
        assert!(bmap.mapped_bytes() < 1 << 20, "holes are not mapped");
    }

    #[test]
    fn xml_round_trips_and_counts_short_last_block() {
        let b = sample();
        assert_eq!(b.blocks_count(), 11);
        assert_eq!(b.mapped_blocks(), 5);
        assert_eq!(b.mapped_bytes(), 4 * 4096 + 512);
        assert_eq!(Bmap::parse(&b.to_xml()).unwrap(), b);
    }

    #[test]
    fn edited_bmap_fails_its_file_checksum() {
        let xml = sample().to_xml().replace("> 5 </Range>", "> 6 </Range>");
        let err = format!("{:#}", Bmap::parse(&xml).unwrap_err());
        assert!(err.contains("checksum mismatch"), "{err}");
    }

    #[test]
    fn rejects_overlapping_ranges_and_other_versions() {
        let mut b = sample();
        b.ranges[1].first = 1;
        let err = format!("{:#}", Bmap::parse(&b.to_xml()).unwrap_err());
        assert!(err.contains("overlaps"), "{err}");
        let xml = sample()
            .to_xml()
            .replace("version=\"2.0\"", "version=\"3.0\"");
        let err = format!("{:#}", Bmap::parse(&xml).unwrap_err());
        assert!(err.contains("version 3.0"), "{err}");
    }
}

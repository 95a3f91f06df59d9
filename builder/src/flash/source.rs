//! Image readers: raw `.img` (random access) and `.img.zst` / `.img.xz`
//! (decompressed while streaming, so reads only go forward).

use anyhow::{bail, ensure, Context, Result};
use std::fs::File;
use std::io::{BufReader, Read};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    Zstd,
    Xz,
}

impl Compression {
    /// By file name: `.zst` and `.xz` are compressed, anything else is raw.
    pub fn of(path: &Path) -> Compression {
        match path.extension().and_then(|e| e.to_str()) {
            Some("zst") => Compression::Zstd,
            Some("xz") => Compression::Xz,
            _ => Compression::None,
        }
    }
}

enum Inner {
    Raw(File),
    Stream {
        reader: Box<dyn Read + Send>,
        pos: u64,
    },
}

/// An image to flash, read in increasing offset order.
pub struct ImageSource {
    path: PathBuf,
    compression: Compression,
    /// (st_dev, st_ino) of the file on disk; None for a stream from a
    /// registry.
    pub file_id: Option<(u64, u64)>,
    inner: Inner,
    /// A remote stream is read to its end after the flash, so the blob's
    /// digest is checked ([`ImageSource::finish`]).
    read_to_end: bool,
}

impl ImageSource {
    pub fn open(path: &Path) -> Result<ImageSource> {
        let file = File::open(path).with_context(|| format!("opening image {}", path.display()))?;
        let meta = file
            .metadata()
            .with_context(|| format!("reading metadata of {}", path.display()))?;
        ensure!(
            meta.is_file(),
            "image {} is not a regular file",
            path.display()
        );
        // SAFETY: advisory hint on a valid fd; failure is harmless.
        unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_SEQUENTIAL) };
        let compression = Compression::of(path);
        let inner = match compression {
            Compression::None => Inner::Raw(file),
            Compression::Zstd => {
                let d = zstd::stream::read::Decoder::new(file)
                    .with_context(|| format!("starting zstd decoder for {}", path.display()))?;
                Inner::Stream {
                    reader: Box::new(d),
                    pos: 0,
                }
            }
            Compression::Xz => {
                // Multi-stream: `xz -T` and concatenated files are common.
                let d = xz2::read::XzDecoder::new_multi_decoder(BufReader::with_capacity(
                    1 << 20,
                    file,
                ));
                Inner::Stream {
                    reader: Box::new(d),
                    pos: 0,
                }
            }
        };
        Ok(ImageSource {
            path: path.to_path_buf(),
            compression,
            file_id: Some((meta.dev(), meta.ino())),
            inner,
            read_to_end: false,
        })
    }

    /// A zstd-compressed image arriving as `reader` (a registry's blob,
    /// checked as it streams); `name` is how messages call it.
    pub fn zstd_stream(name: &str, reader: Box<dyn Read + Send>) -> Result<ImageSource> {
        let d = zstd::stream::read::Decoder::new(reader)
            .with_context(|| format!("starting zstd decoder for {name}"))?;
        Ok(ImageSource {
            path: PathBuf::from(name),
            compression: Compression::Zstd,
            file_id: None,
            inner: Inner::Stream {
                reader: Box::new(d),
                pos: 0,
            },
            read_to_end: true,
        })
    }

    /// Reads a remote stream to its end (the blob's digest is checked
    /// there); nothing for a file.
    pub fn finish(&mut self) -> Result<()> {
        if let (true, Inner::Stream { reader, .. }) = (self.read_to_end, &mut self.inner) {
            std::io::copy(reader, &mut std::io::sink())
                .with_context(|| format!("reading the rest of {}", self.path.display()))?;
        }
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn compression(&self) -> Compression {
        self.compression
    }

    /// The decompressed size when it is known without reading everything.
    pub fn known_size(&self) -> Result<Option<u64>> {
        match &self.inner {
            Inner::Raw(f) => Ok(Some(
                f.metadata()
                    .with_context(|| format!("reading size of {}", self.path.display()))?
                    .len(),
            )),
            Inner::Stream { .. } => Ok(None),
        }
    }

    /// Fills `buf` with the image bytes at `offset`. For compressed images
    /// `offset` must not be before the end of the previous read.
    pub fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let path = &self.path;
        match &mut self.inner {
            Inner::Raw(f) => f.read_exact_at(buf, offset).with_context(|| {
                format!(
                    "reading bytes {}..{} of {}",
                    offset,
                    offset + buf.len() as u64,
                    path.display()
                )
            }),
            Inner::Stream { reader, pos } => {
                if offset < *pos {
                    bail!(
                        "{}: compressed image read backwards ({} after {})",
                        path.display(),
                        offset,
                        pos
                    );
                }
                let skip = offset - *pos;
                let skipped = std::io::copy(&mut reader.by_ref().take(skip), &mut std::io::sink())
                    .with_context(|| format!("decompressing {}", path.display()))?;
                ensure!(
                    skipped == skip,
                    "{} ends at byte {} (decompressed), before {}",
                    path.display(),
                    *pos + skipped,
                    offset
                );
                read_full(reader, buf).with_context(|| {
                    format!(
                        "decompressing bytes {}..{} of {}",
                        offset,
                        offset + buf.len() as u64,
                        path.display()
                    )
                })?;
                *pos = offset + buf.len() as u64;
                Ok(())
            }
        }
    }
}

fn read_full(r: &mut dyn Read, mut buf: &mut [u8]) -> Result<()> {
    while !buf.is_empty() {
        match r.read(buf) {
            Ok(0) => bail!("image ended early, {} bytes short", buf.len()),
            Ok(n) => buf = &mut buf[n..],
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn data() -> Vec<u8> {
        (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect()
    }

    fn check_forward_reads(path: &Path, data: &[u8]) {
        let mut src = ImageSource::open(path).unwrap();
        let mut a = vec![0; 1000];
        src.read_at(5, &mut a).unwrap();
        assert_eq!(a, data[5..1005]);
        src.read_at(200_000, &mut a).unwrap();
        assert_eq!(a, data[200_000..201_000]);
        let err = src.read_at(299_500, &mut a).unwrap_err();
        assert!(format!("{err:#}").contains("299500..300500"), "{err:#}");
    }

    #[test]
    fn reads_raw_zstd_and_xz() {
        let dir = tempfile::tempdir().unwrap();
        let data = data();
        let raw = dir.path().join("a.img");
        std::fs::write(&raw, &data).unwrap();
        check_forward_reads(&raw, &data);

        let zst = dir.path().join("a.img.zst");
        std::fs::write(&zst, zstd::encode_all(&data[..], 3).unwrap()).unwrap();
        check_forward_reads(&zst, &data);
        let mut src = ImageSource::open(&zst).unwrap();
        let mut b = vec![0; 10];
        src.read_at(100, &mut b).unwrap();
        assert!(src.read_at(50, &mut b).is_err(), "backwards read must fail");

        let xz = dir.path().join("a.img.xz");
        let mut enc = xz2::write::XzEncoder::new(Vec::new(), 6);
        enc.write_all(&data).unwrap();
        std::fs::write(&xz, enc.finish().unwrap()).unwrap();
        check_forward_reads(&xz, &data);
    }
}

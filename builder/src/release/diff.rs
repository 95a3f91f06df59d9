//! `nodeforge release diff OLD NEW`: what a node running one build would
//! download to move to another, chunk by chunk (the chunks of NEW's root
//! slot whose hash OLD's lacks), against the slot's whole size and its
//! zstd-compressed size, the download without deltas.

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use nodeforge_delta::ChunkIndex;
use serde::Serialize;

use super::Release;
use crate::fsutil;

/// A release and the directory its files are in.
pub struct Build {
    pub release: Release,
    pub dir: PathBuf,
}

impl Build {
    /// `path` is a release (`DIR/NAME.release.json`) or a build directory
    /// holding exactly one.
    pub fn open(path: &Path) -> Result<Build> {
        let file = if path.is_dir() {
            let mut found: Vec<PathBuf> = fs::read_dir(path)
                .with_context(|| format!("listing {}", path.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.to_string_lossy().ends_with(".release.json"))
                .collect();
            found.sort();
            match found.len() {
                1 => found.remove(0),
                0 => bail!(
                    "{} holds no release (NAME.release.json): build into it with `nodeforge build -o {}`",
                    path.display(),
                    path.display()
                ),
                _ => bail!(
                    "{} holds several releases: name one, e.g. {}",
                    path.display(),
                    found[0].display()
                ),
            }
        } else {
            path.to_path_buf()
        };
        let text = fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
        let release = super::parse(&text, &file)?;
        let dir = file.parent().unwrap_or(Path::new(".")).to_path_buf();
        Ok(Build { release, dir })
    }

    /// The root slot's chunk index, checked against the release.
    pub fn chunk_index(&self) -> Result<ChunkIndex> {
        let r = &self.release;
        let Some(slot) = &r.root_slot else {
            bail!(
                "the release of {} names no root slot (built by an older nodeforge): rebuild it",
                r.name
            );
        };
        let path = self.dir.join(&slot.chunks);
        super::check_file(
            r,
            &self.dir,
            &slot.chunks,
            &super::release_path(&self.dir, &r.name),
        )?;
        let bytes = fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        let index: ChunkIndex = serde_json::from_slice(&bytes)
            .with_context(|| format!("{}: not a chunk index", path.display()))?;
        if index.size != slot.size {
            bail!(
                "{}: indexes {} bytes, but the release's root slot is {} bytes",
                path.display(),
                index.size,
                slot.size
            );
        }
        Ok(index)
    }

    /// The slot's size compressed as `push` compresses images (zstd level
    /// 3): what a node would download without deltas. None when the image
    /// is not beside the release.
    pub fn compressed_slot_size(&self) -> Result<Option<u64>> {
        let Some(slot) = &self.release.root_slot else {
            return Ok(None);
        };
        let image = self.dir.join(&slot.file);
        if !image.is_file() {
            return Ok(None);
        }
        let mut f =
            fs::File::open(&image).with_context(|| format!("opening {}", image.display()))?;
        f.seek(SeekFrom::Start(slot.offset))
            .with_context(|| format!("reading the root slot of {}", image.display()))?;
        let mut counter = Counter(0);
        zstd::stream::copy_encode(
            std::io::BufReader::with_capacity(1 << 20, f).take(slot.size),
            &mut counter,
            crate::oci::artifact::ZSTD_LEVEL,
        )
        .with_context(|| format!("compressing the root slot of {}", image.display()))?;
        Ok(Some(counter.0))
    }
}

struct Counter(u64);

impl Write for Counter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// What moving a node from one build to another downloads.
#[derive(Debug, Serialize)]
pub struct Report {
    pub name: String,
    pub from: String,
    pub to: String,
    pub chunks: usize,
    pub fetch_chunks: usize,
    pub fetch_bytes: u64,
    pub slot_size: u64,
    /// The new slot compressed (zstd level 3), when its image is there.
    pub compressed_slot_size: Option<u64>,
}

impl Report {
    pub fn of(old: &Build, new: &Build) -> Result<Report> {
        if old.release.name != new.release.name {
            eprintln!(
                "nodeforge: note: comparing different builds ({} and {})",
                old.release.name, new.release.name
            );
        }
        // What the updater would do: the same plan it runs.
        let d = nodeforge_delta::assemble::plan(&old.chunk_index()?, &new.chunk_index()?)
            .context("rebuild the older build with this nodeforge")?;
        Ok(Report {
            name: new.release.name.clone(),
            from: old.release.version.clone(),
            to: new.release.version.clone(),
            chunks: d.steps.len(),
            fetch_chunks: d.fetch_chunks,
            fetch_bytes: d.fetch_bytes,
            slot_size: d.size,
            compressed_slot_size: new.compressed_slot_size()?,
        })
    }

    pub fn text(&self) -> String {
        let short = |v: &str| v.chars().take(12).collect::<String>();
        let mut s = format!(
            "{} {} -> {}: fetch {} of {} chunks, {} of the {} root slot ({:.2} %)",
            self.name,
            short(&self.from),
            short(&self.to),
            self.fetch_chunks,
            self.chunks,
            fsutil::binary_size(self.fetch_bytes, "bytes"),
            fsutil::binary_size(self.slot_size, "bytes"),
            percent(self.fetch_bytes, self.slot_size),
        );
        if let Some(c) = self.compressed_slot_size {
            s += &format!(
                "; {:.2} % of the slot compressed ({})",
                percent(self.fetch_bytes, c),
                fsutil::binary_size(c, "bytes")
            );
        }
        s
    }
}

fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

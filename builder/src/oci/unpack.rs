//! Unpacks one container layer into a directory of its own the way Docker's
//! overlay2 driver does (moby v26.1 `pkg/archive`, overlay whiteout
//! format): whiteout files become character devices 0:0, opaque markers
//! the `trusted.overlay.opaque` xattr; owners are numeric; modes keep
//! setuid; directory times are set last. It writes the layer's tar-split
//! (`tar-split.json.gz`) beside, so the engine can hand out the layer's
//! exact bytes again (`docker save`, `docker push`).
//!
//! Safety: the layer cannot write outside `dest`. Names are cleaned and
//! may not climb out; a symlink met on the way to an entry is resolved
//! inside `dest` (as Docker's chroot does); hard links must point inside;
//! symlinks pointing outside are refused as Docker refuses them.

use std::collections::HashSet;
use std::ffi::{CString, OsStr};
use std::fs;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use anyhow::{bail, Context, Result};
use base64::Engine as _;
use nix::sys::stat::{mknod, utimensat, Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;

use super::tar_stream::{Entry, Kind, TarStream};

/// The CRC tar-split stores per file: Go's `hash/crc64` ISO table.
const CRC64: crc::Crc<u64> = crc::Crc::<u64>::new(&crc::CRC_64_GO_ISO);
const OPAQUE_XATTR: &str = "trusted.overlay.opaque";
const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_MARKER: &str = ".wh..wh..opq";

/// What unpacking a layer gave.
#[derive(Debug)]
pub struct Unpacked {
    /// sha256 of the whole uncompressed stream (hex).
    pub diff_id_hex: String,
    /// The layer's `size` as the engine computes it: bytes of the
    /// non-directory entries, each inode once.
    pub size: u64,
}

/// Unpacks the tar `stream` into the empty directory `dest` and writes
/// its tar-split to `tar_split` (gzip-compressed JSON lines).
pub fn unpack_layer(stream: impl Read, dest: &Path, tar_split: impl Write) -> Result<Unpacked> {
    let mut tar = TarStream::new(stream);
    let mut split = SplitWriter::new(tar_split);
    let mut seen = HashSet::new();
    let mut dirs: Vec<(PathBuf, i64)> = Vec::new();
    while let Some(entry) = tar.next_entry()? {
        split.segment(&tar.take_raw())?;
        let shown = String::from_utf8_lossy(&entry.name).into_owned();
        let clean = clean_name(&entry.name)
            .with_context(|| format!("layer entry {shown} would be written outside the layer"))?;
        if entry.kind != Kind::GlobalHeader && !seen.insert(clean.clone()) {
            bail!("layer entry {shown} appears twice (Docker refuses such layers too)");
        }
        let mut data = CrcReader {
            inner: &mut tar,
            crc: CRC64.digest(),
        };
        if entry.kind != Kind::GlobalHeader && clean != Path::new("") {
            apply(dest, &clean, &entry, &mut data, &mut dirs)
                .with_context(|| format!("unpacking layer entry {shown}"))?;
        }
        // What no file took (a whiteout's data, normally none) is still
        // part of the stream and its CRC.
        std::io::copy(&mut data, &mut std::io::sink())?;
        let payload = (entry.size > 0).then(|| data.crc.finalize().to_be_bytes());
        split.file(&entry.name, entry.size, payload.as_ref().map(|p| &p[..]))?;
    }
    split.segment(&tar.take_raw())?;
    let hash = tar.finish(|chunk| split.segment(chunk))?;
    split.finish()?;
    // Docker sets directory times after everything inside them exists.
    for (dir, mtime) in dirs.iter().rev() {
        set_times(dir, *mtime)?;
    }
    Ok(Unpacked {
        diff_id_hex: hex::encode(hash),
        size: native_size(dest)?,
    })
}

/// An entry's data, with the CRC of what was read from it.
struct CrcReader<'a, 'b, R> {
    inner: &'a mut R,
    crc: crc::Digest<'b, u64>,
}

impl<R: Read> Read for CrcReader<'_, '_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.crc.update(&buf[..n]);
        Ok(n)
    }
}

/// Writes one entry (a whiteout becomes its overlay2 form).
fn apply(
    dest: &Path,
    name: &Path,
    e: &Entry,
    data: &mut impl Read,
    dirs: &mut Vec<(PathBuf, i64)>,
) -> Result<()> {
    let parent_rel = name.parent().unwrap_or(Path::new(""));
    let base = name.file_name().context("entry has no name")?;
    let parent = resolve_in_root(dest, parent_rel)?;
    if fs::symlink_metadata(&parent).is_err() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    let base_str = base.to_string_lossy();
    if base_str == OPAQUE_MARKER {
        return set_xattr(&parent, OPAQUE_XATTR, b"y");
    }
    if let Some(hidden) = base_str.strip_prefix(WHITEOUT_PREFIX) {
        let path = parent.join(hidden);
        mknod(&path, SFlag::S_IFCHR, Mode::empty(), 0)
            .with_context(|| format!("creating the whiteout {}", path.display()))?;
        std::os::unix::fs::lchown(&path, Some(e.uid as u32), Some(e.gid as u32))?;
        return Ok(());
    }
    let path = parent.join(base);
    if let Ok(old) = fs::symlink_metadata(&path) {
        if !(old.is_dir() && e.kind == Kind::Directory) {
            match old.is_dir() {
                true => fs::remove_dir_all(&path)?,
                false => fs::remove_file(&path)?,
            }
        }
    }
    let mode = Mode::from_bits_truncate(e.mode & 0o777);
    match e.kind {
        Kind::Directory => {
            if !path.is_dir() {
                fs::DirBuilder::new().mode(e.mode & 0o777).create(&path)?;
            }
        }
        Kind::File => {
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(e.mode & 0o777)
                .open(&path)?;
            std::io::copy(data, &mut f)?;
        }
        Kind::HardLink => {
            let target_rel = clean_name(&e.link).context("hard link points outside the layer")?;
            let target = resolve_in_root(dest, &target_rel)?;
            fs::hard_link(&target, &path)
                .with_context(|| format!("linking to {}", String::from_utf8_lossy(&e.link)))?;
        }
        Kind::Symlink => {
            check_symlink_inside(name, &e.link)?;
            std::os::unix::fs::symlink(OsStr::from_bytes(&e.link), &path)?;
        }
        Kind::CharDevice | Kind::BlockDevice => {
            let kind = match e.kind {
                Kind::CharDevice => SFlag::S_IFCHR,
                _ => SFlag::S_IFBLK,
            };
            let dev = nix::sys::stat::makedev(e.dev_major, e.dev_minor);
            mknod(&path, kind, mode, dev)?;
        }
        Kind::Fifo => nix::unistd::mkfifo(&path, mode)?,
        Kind::GlobalHeader => unreachable!("global headers are skipped by the caller"),
    }
    std::os::unix::fs::lchown(&path, Some(e.uid as u32), Some(e.gid as u32))
        .with_context(|| format!("setting the owner of {}", path.display()))?;
    for (k, v) in &e.xattrs {
        match set_xattr(&path, k, v) {
            Err(err) if is_eperm(&err) => {}
            r => r?,
        }
    }
    // A hard link to a file gets the entry's mode and time like a file
    // (moby does the same; chown just cleared the shared inode's setuid).
    let to_symlink = e.kind == Kind::HardLink
        && fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink());
    if e.kind != Kind::Symlink && !to_symlink {
        // After chown, which clears setuid.
        fs::set_permissions(&path, fs::Permissions::from_mode(e.mode))?;
    }
    match e.kind {
        Kind::Directory => dirs.push((path, e.mtime)),
        _ if to_symlink => {}
        _ => set_times(&path, e.mtime)?,
    }
    Ok(())
}

/// The entry's path relative to the layer root: `.` and leading `/`
/// dropped, `..` applied; `None` if it climbs out.
fn clean_name(name: &[u8]) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in Path::new(OsStr::from_bytes(name)).components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    Some(out)
}

/// `rel` under `root` with every symlink on the way resolved inside
/// `root`, as a chroot would resolve it. The last component is followed
/// too: callers pass parents (or link targets).
fn resolve_in_root(root: &Path, rel: &Path) -> Result<PathBuf> {
    let mut done = PathBuf::new();
    let mut todo: Vec<PathBuf> = rel
        .components()
        .rev()
        .map(|c| PathBuf::from(c.as_os_str()))
        .collect();
    let mut links = 0;
    while let Some(c) = todo.pop() {
        match c.to_str() {
            Some("/") | Some(".") => continue,
            Some("..") => {
                done.pop();
                continue;
            }
            _ => {}
        }
        let candidate = done.join(&c);
        let full = root.join(&candidate);
        match fs::symlink_metadata(&full) {
            Ok(m) if m.file_type().is_symlink() => {
                links += 1;
                if links > 40 {
                    bail!("too many symlinks resolving {}", rel.display());
                }
                let target = fs::read_link(&full)?;
                if target.is_absolute() {
                    done = PathBuf::new();
                }
                todo.extend(
                    target
                        .components()
                        .rev()
                        .map(|c| PathBuf::from(c.as_os_str())),
                );
            }
            _ => done = candidate,
        }
    }
    Ok(root.join(done))
}

/// Docker refuses a symlink whose target, taken from the link's folder,
/// lies outside the layer root.
fn check_symlink_inside(name: &Path, target: &[u8]) -> Result<()> {
    let target = Path::new(OsStr::from_bytes(target));
    let joined = match target.is_absolute() {
        true => target.to_path_buf(),
        false => name.parent().unwrap_or(Path::new("")).join(target),
    };
    if clean_name(joined.as_os_str().as_bytes()).is_none() {
        bail!("symlink points outside the layer: {}", target.display());
    }
    Ok(())
}

fn set_times(path: &Path, mtime: i64) -> Result<()> {
    let t = TimeSpec::new(mtime, 0);
    utimensat(None, path, &t, &t, UtimensatFlags::NoFollowSymlink)
        .with_context(|| format!("setting the times of {}", path.display()))
}

fn set_xattr(path: &Path, key: &str, value: &[u8]) -> Result<()> {
    let p = CString::new(path.as_os_str().as_bytes())?;
    let k = CString::new(key)?;
    // SAFETY: both strings are NUL-terminated and outlive the call; the
    // value pointer and length describe one live slice.
    let rc = unsafe {
        libc::lsetxattr(
            p.as_ptr(),
            k.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("setting xattr {key} on {}", path.display()));
    }
    Ok(())
}

fn is_eperm(e: &anyhow::Error) -> bool {
    e.downcast_ref::<std::io::Error>()
        .and_then(|e| e.raw_os_error())
        .is_some_and(|c| c == libc::EPERM)
}

/// moby's `directory.Size`: Lstat sizes of non-directories, each inode once.
fn native_size(dir: &Path) -> Result<u64> {
    let mut inodes = HashSet::new();
    let mut total = 0;
    crate::fsutil::walk_tree(dir, |_, m| {
        if !m.is_dir() && m.size() > 0 && inodes.insert(m.ino()) {
            total += m.size();
        }
    })?;
    Ok(total)
}

/// tar-split's JSON lines (vbatts/tar-split `tar/storage`), gzipped.
struct SplitWriter<W: Write> {
    out: flate2::write::GzEncoder<W>,
    position: u64,
}

impl<W: Write> SplitWriter<W> {
    fn new(out: W) -> Self {
        SplitWriter {
            out: flate2::write::GzEncoder::new(out, flate2::Compression::default()),
            position: 0,
        }
    }

    fn segment(&mut self, raw: &[u8]) -> Result<()> {
        if raw.is_empty() {
            return Ok(());
        }
        let b64 = base64::engine::general_purpose::STANDARD.encode(raw);
        let line = format!(
            r#"{{"type":2,"payload":"{b64}","position":{}}}"#,
            self.position
        );
        self.raw_line(&line)
    }

    fn file(&mut self, name: &[u8], size: u64, crc: Option<&[u8]>) -> Result<()> {
        let mut line = String::from(r#"{"type":1,"#);
        match std::str::from_utf8(name) {
            Ok("") => {}
            Ok(n) => line += &format!(r#""name":{},"#, serde_json::Value::from(n)),
            Err(_) => {
                let raw = base64::engine::general_purpose::STANDARD.encode(name);
                line += &format!(r#""name_raw":"{raw}","#);
            }
        }
        if size > 0 {
            line += &format!(r#""size":{size},"#);
        }
        match crc {
            Some(c) => {
                let b64 = base64::engine::general_purpose::STANDARD.encode(c);
                line += &format!(r#""payload":"{b64}","#);
            }
            None => line += r#""payload":null,"#,
        }
        line += &format!(r#""position":{}}}"#, self.position);
        self.raw_line(&line)
    }

    fn raw_line(&mut self, line: &str) -> Result<()> {
        self.out.write_all(line.as_bytes())?;
        self.out.write_all(b"\n")?;
        self.position += 1;
        Ok(())
    }

    fn finish(self) -> Result<()> {
        self.out.finish()?.flush()?;
        Ok(())
    }
}

/// Puts a layer's tar stream back together from its tar-split and its
/// files (`open` gives a file's bytes by its name in the layer), checking
/// each file's CRC, as the engine does for `docker save` and `docker push`.
pub fn reassemble(
    tar_split_gz: impl Read,
    mut open: impl FnMut(&str) -> Result<Vec<u8>>,
) -> Result<Vec<u8>> {
    use std::io::BufRead;
    let lines = std::io::BufReader::new(flate2::read::MultiGzDecoder::new(tar_split_gz));
    let b64 = |v: &serde_json::Value| -> Result<Vec<u8>> {
        let s = v.as_str().context("payload is not a string")?;
        Ok(base64::engine::general_purpose::STANDARD.decode(s)?)
    };
    let mut out = Vec::new();
    for (i, line) in lines.lines().enumerate() {
        let v: serde_json::Value = serde_json::from_str(&line?)
            .with_context(|| format!("tar-split entry {i} is not JSON"))?;
        match v["type"].as_u64() {
            Some(2) => out.extend(b64(&v["payload"])?),
            Some(1) if v["size"].as_u64().unwrap_or(0) > 0 => {
                let name = v["name"].as_str().context("a file entry without a name")?;
                let data = open(name)?;
                let crc = CRC64.checksum(&data).to_be_bytes();
                if b64(&v["payload"])? != crc {
                    bail!("file {name} does not match the CRC its tar-split records");
                }
                out.extend(data);
            }
            Some(1) => {}
            t => bail!("tar-split entry {i} has type {t:?}"),
        }
    }
    Ok(out)
}

#[cfg(test)]
#[path = "unpack_tests.rs"]
mod tests;

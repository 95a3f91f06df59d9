//! A tar reader that keeps every byte it reads apart from file contents,
//! the way Docker's tar-split does (`RawAccounting` in vbatts/tar-split's
//! fork of Go's archive/tar), and hashes the whole stream as it goes. From
//! the raw bytes and each file's CRC the layer's exact tar stream can be
//! put back together later; the hash is the layer's diff ID.
//!
//! Header parsing follows Go's archive/tar reader (which Docker uses):
//! the name is PAX `path`, else a GNU long name, else the ustar prefix,
//! a slash and the name; PAX `size`, `uid`, `gid`, `mtime` and `linkpath`
//! override the header's. Sparse files are refused (their reassembly would not be
//! byte-identical, and Docker refuses them too).

use std::io::{self, Read};

use anyhow::{bail, Context, Result};
use sha2::{Digest as _, Sha256};

const BLOCK: usize = 512;

/// The kinds of entry a layer may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    HardLink,
    Symlink,
    CharDevice,
    BlockDevice,
    Directory,
    Fifo,
    /// A PAX global header: Go's reader returns it as an entry of size 0.
    GlobalHeader,
}

impl Kind {
    fn from_flag(flag: u8, name: &[u8]) -> Option<Kind> {
        Some(match flag {
            b'0' | b'7' => Kind::File,
            // Old tars mark directories by a trailing slash only.
            0 if name.ends_with(b"/") => Kind::Directory,
            0 => Kind::File,
            b'1' => Kind::HardLink,
            b'2' => Kind::Symlink,
            b'3' => Kind::CharDevice,
            b'4' => Kind::BlockDevice,
            b'5' => Kind::Directory,
            b'6' => Kind::Fifo,
            b'g' => Kind::GlobalHeader,
            _ => return None,
        })
    }

    /// Kinds whose data Go's reader never reads, whatever the size says.
    fn header_only(self) -> bool {
        !matches!(self, Kind::File | Kind::GlobalHeader)
    }
}

/// One entry's header, as the layer states it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The name as written (not cleaned): tar-split records it this way.
    pub name: Vec<u8>,
    pub kind: Kind,
    /// Permission bits with setuid, setgid and sticky.
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: i64,
    pub size: u64,
    pub link: Vec<u8>,
    pub dev_major: u64,
    pub dev_minor: u64,
    /// PAX `SCHILY.xattr.*` records: (attribute name, value).
    pub xattrs: Vec<(String, Vec<u8>)>,
}

/// Reads a tar stream entry by entry; see the module's comment.
pub struct TarStream<R> {
    inner: R,
    hash: Sha256,
    /// Bytes read that are not file contents, since the last `take_raw`.
    raw: Vec<u8>,
    /// Data bytes of the current entry not read yet, then its padding.
    data_left: u64,
    pad_left: u64,
    ended: bool,
}

impl<R: Read> TarStream<R> {
    pub fn new(inner: R) -> Self {
        TarStream {
            inner,
            hash: Sha256::new(),
            raw: Vec::new(),
            data_left: 0,
            pad_left: 0,
            ended: false,
        }
    }

    /// The bytes read since the last call that were not file contents.
    pub fn take_raw(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.raw)
    }

    /// Reads up to `n` bytes into the raw record; fewer only at the end.
    fn read_raw(&mut self, n: usize) -> Result<usize> {
        let start = self.raw.len();
        self.raw.resize(start + n, 0);
        let got = read_full(&mut self.inner, &mut self.raw[start..])?;
        self.raw.truncate(start + got);
        self.hash.update(&self.raw[start..]);
        Ok(got)
    }

    fn read_raw_exact(&mut self, n: usize, what: &str) -> Result<()> {
        if self.read_raw(n)? != n {
            bail!("the layer's tar stream ends inside {what}");
        }
        Ok(())
    }

    /// The next entry, `None` after the end-of-archive blocks (or a stream
    /// that ends between entries). The previous entry's data must have been
    /// read whole.
    pub fn next_entry(&mut self) -> Result<Option<Entry>> {
        if self.ended {
            return Ok(None);
        }
        if self.data_left > 0 {
            bail!("internal error: the previous tar entry's data was not read");
        }
        let pad = self.pad_left as usize;
        self.pad_left = 0;
        self.read_raw_exact(pad, "an entry's padding")?;
        let mut pax: Vec<(String, Vec<u8>)> = Vec::new();
        let (mut long_name, mut long_link) = (None::<Vec<u8>>, None::<Vec<u8>>);
        loop {
            let at = self.raw.len();
            match self.read_raw(BLOCK)? {
                0 => {
                    self.ended = true;
                    return Ok(None);
                }
                BLOCK => {}
                _ => bail!("the layer's tar stream ends inside a header"),
            }
            let block: [u8; BLOCK] = self.raw[at..].try_into().expect("one block");
            if block.iter().all(|&b| b == 0) {
                let second = self.raw.len();
                let got = self.read_raw(BLOCK)?;
                if got == BLOCK && self.raw[second..].iter().any(|&b| b != 0) {
                    bail!("the layer's tar stream has a zero block followed by a header");
                }
                self.ended = true;
                return Ok(None);
            }
            verify_checksum(&block)?;
            let header = Header(&block);
            let flag = block[156];
            let size = header.number(124, 12).context("tar header field `size`")?;
            match flag {
                b'x' | b'L' | b'K' => {
                    let data = self.read_extension(size)?;
                    match flag {
                        b'x' => pax.extend(parse_pax(&data)?),
                        b'L' => long_name = Some(c_string(&data).to_vec()),
                        _ => long_link = Some(c_string(&data).to_vec()),
                    }
                    continue;
                }
                b'S' => {
                    bail!("the layer holds a GNU sparse file, which cannot be unpacked exactly")
                }
                _ => {}
            }
            let mut name = long_name.take().unwrap_or_else(|| header.name());
            let mut entry = Entry {
                kind: Kind::File,
                mode: header.number(100, 8).context("tar header field `mode`")? as u32 & 0o7777,
                uid: header.number(108, 8).context("tar header field `uid`")?,
                gid: header.number(116, 8).context("tar header field `gid`")?,
                mtime: header.number(136, 12).context("tar header field `mtime`")? as i64,
                size,
                link: long_link
                    .take()
                    .unwrap_or_else(|| c_string(&block[157..257]).to_vec()),
                dev_major: header.number(329, 8).unwrap_or(0),
                dev_minor: header.number(337, 8).unwrap_or(0),
                xattrs: Vec::new(),
                name: Vec::new(),
            };
            for (k, v) in pax.drain(..) {
                let text = || String::from_utf8_lossy(&v).into_owned();
                let number = |what: &str| -> Result<u64> {
                    text()
                        .parse()
                        .with_context(|| format!("PAX record `{what}` is not a number: {}", text()))
                };
                match k.as_str() {
                    "path" => name = v,
                    "linkpath" => entry.link = v,
                    "size" => entry.size = number("size")?,
                    "uid" => entry.uid = number("uid")?,
                    "gid" => entry.gid = number("gid")?,
                    "mtime" => {
                        let t = text();
                        let whole = t.split('.').next().unwrap_or_default();
                        entry.mtime = whole
                            .parse()
                            .with_context(|| format!("PAX record `mtime` is not a time: {t}"))?;
                    }
                    k if k.starts_with("GNU.sparse.") => {
                        bail!("the layer holds a GNU sparse file, which cannot be unpacked exactly")
                    }
                    k => {
                        if let Some(attr) = k.strip_prefix("SCHILY.xattr.") {
                            entry.xattrs.push((attr.to_owned(), v));
                        }
                    }
                }
            }
            entry.kind = Kind::from_flag(flag, &name).with_context(|| {
                format!(
                    "tar entry {} has type {:?}, which a container layer cannot hold",
                    String::from_utf8_lossy(&name),
                    flag as char
                )
            })?;
            entry.name = name;
            if entry.kind == Kind::GlobalHeader {
                // Its records are the data: read them as raw bytes.
                self.read_extension(entry.size)?;
                entry.size = 0;
            } else if entry.kind.header_only() && entry.size > 0 {
                bail!(
                    "tar entry {} is a {:?} with {} bytes of data, which cannot be put back together exactly",
                    String::from_utf8_lossy(&entry.name),
                    entry.kind,
                    entry.size
                );
            }
            self.data_left = entry.size;
            self.pad_left = padding(entry.size);
            return Ok(Some(entry));
        }
    }

    /// The data (and padding) of an extension header, kept as raw bytes.
    fn read_extension(&mut self, size: u64) -> Result<Vec<u8>> {
        if size > 1 << 20 {
            bail!("a tar extension header of {size} bytes is larger than any real one");
        }
        let at = self.raw.len();
        self.read_raw_exact(size as usize, "an extension header")?;
        let data = self.raw[at..].to_vec();
        self.read_raw_exact(padding(size) as usize, "an extension header's padding")?;
        Ok(data)
    }

    /// Reads the rest of the stream after the end-of-archive blocks (some
    /// tars are padded to a record size), in chunks of at most 1 MiB as
    /// tar-split keeps them, and returns the stream's sha256.
    pub fn finish(mut self, mut chunk: impl FnMut(&[u8]) -> Result<()>) -> Result<[u8; 32]> {
        if !self.ended {
            bail!("internal error: the tar stream was finished before its end");
        }
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = read_full(&mut self.inner, &mut buf)?;
            if n == 0 {
                break;
            }
            self.hash.update(&buf[..n]);
            chunk(&buf[..n])?;
        }
        Ok(self.hash.finalize().into())
    }
}

impl<R: Read> Read for TarStream<R> {
    /// The current entry's data (not kept as raw bytes).
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = buf
            .len()
            .min(self.data_left.min(usize::MAX as u64) as usize);
        if want == 0 {
            return Ok(0);
        }
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the layer's tar stream ends inside a file's data",
            ));
        }
        self.hash.update(&buf[..n]);
        self.data_left -= n as u64;
        Ok(n)
    }
}

fn padding(size: u64) -> u64 {
    (BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e).context("reading the layer's tar stream"),
        }
    }
    Ok(got)
}

/// Bytes up to the first NUL, as Go's `parseString` takes them.
fn c_string(b: &[u8]) -> &[u8] {
    b.iter().position(|&c| c == 0).map_or(b, |i| &b[..i])
}

struct Header<'a>(&'a [u8; BLOCK]);

impl Header<'_> {
    /// ustar and PAX headers put a prefix before the name (star's is
    /// shorter); GNU and v7 headers have none.
    fn name(&self) -> Vec<u8> {
        let b = self.0;
        let name = c_string(&b[0..100]);
        let ustar = &b[257..263] == b"ustar\0" && &b[263..265] == b"00";
        if !ustar {
            return name.to_vec();
        }
        let star = &b[508..512] == b"tar\0";
        let prefix = c_string(if star { &b[345..476] } else { &b[345..500] });
        match prefix.is_empty() {
            true => name.to_vec(),
            false => [prefix, b"/", name].concat(),
        }
    }

    /// A numeric field: octal text, or base-256 when the top bit is set.
    fn number(&self, at: usize, len: usize) -> Result<u64> {
        let f = &self.0[at..at + len];
        if f[0] & 0x80 != 0 {
            if f[0] & 0x40 != 0 {
                bail!("negative base-256 number");
            }
            let mut v: u64 = (f[0] & 0x3f) as u64;
            for &b in &f[1..] {
                v = v
                    .checked_mul(256)
                    .and_then(|v| v.checked_add(b as u64))
                    .context("base-256 number overflows")?;
            }
            return Ok(v);
        }
        let text: String = String::from_utf8_lossy(f)
            .trim_matches(|c: char| c == ' ' || c == '\0')
            .to_owned();
        if text.is_empty() {
            return Ok(0);
        }
        u64::from_str_radix(&text, 8).with_context(|| format!("{text:?} is not an octal number"))
    }
}

fn verify_checksum(block: &[u8; BLOCK]) -> Result<()> {
    let stated = Header(block)
        .number(148, 8)
        .context("tar header checksum")?;
    let (mut unsigned, mut signed) = (0u64, 0i64);
    for (i, &b) in block.iter().enumerate() {
        let b = if (148..156).contains(&i) { b' ' } else { b };
        unsigned += b as u64;
        signed += b as i8 as i64;
    }
    if stated != unsigned && stated as i64 != signed {
        bail!("a tar header's checksum does not match: the layer is damaged");
    }
    Ok(())
}

/// PAX records: `LEN KEY=VALUE\n`, LEN counting the whole record.
fn parse_pax(data: &[u8]) -> Result<Vec<(String, Vec<u8>)>> {
    let mut out = Vec::new();
    let mut rest = data;
    while !rest.is_empty() && rest[0] != 0 {
        let sp = rest
            .iter()
            .position(|&b| b == b' ')
            .context("a PAX record has no length")?;
        let len: usize = std::str::from_utf8(&rest[..sp])
            .ok()
            .and_then(|s| s.parse().ok())
            .context("a PAX record's length is not a number")?;
        if len <= sp + 1 || len > rest.len() || rest[len - 1] != b'\n' {
            bail!("a PAX record's length does not fit its data");
        }
        let record = &rest[sp + 1..len - 1];
        let eq = record
            .iter()
            .position(|&b| b == b'=')
            .context("a PAX record has no `=`")?;
        let key = String::from_utf8(record[..eq].to_vec()).context("a PAX key is not UTF-8")?;
        out.push((key, record[eq + 1..].to_vec()));
        rest = &rest[len..];
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tar written by the `tar` crate with a long name (GNU), a PAX
    /// xattr, a symlink and a directory reads back as written, and the
    /// raw bytes plus the file contents are the whole stream.
    #[test]
    fn raw_bytes_and_contents_make_the_stream() {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_size(0);
        b.append_data(&mut h, "etc/", &[][..]).unwrap();
        let long = format!("usr/share/{}/file", "x".repeat(120));
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o4755);
        h.set_uid(70000);
        h.set_size(5);
        b.append_data(&mut h, &long, &b"hello"[..]).unwrap();
        b.append_pax_extensions([("SCHILY.xattr.security.capability", &b"\x01\x02"[..])])
            .unwrap();
        let mut h = tar::Header::new_ustar();
        h.set_size(3);
        h.set_mode(0o644);
        b.append_data(&mut h, "bin/ping", &b"abc"[..]).unwrap();
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        b.append_link(&mut h, "lib", "usr/lib").unwrap();
        let stream = b.into_inner().unwrap();

        let mut t = TarStream::new(&stream[..]);
        let mut rebuilt = Vec::new();
        let mut entries = Vec::new();
        while let Some(e) = t.next_entry().unwrap() {
            rebuilt.extend(t.take_raw());
            let mut data = Vec::new();
            t.read_to_end(&mut data).unwrap();
            rebuilt.extend(&data);
            entries.push((e, data));
        }
        rebuilt.extend(t.take_raw());
        let hash = t
            .finish(|c| {
                rebuilt.extend(c);
                Ok(())
            })
            .unwrap();
        assert_eq!(rebuilt, stream);
        assert_eq!(hex::encode(hash), crate::fsutil::sha256_bytes(&stream));

        let names: Vec<String> = entries
            .iter()
            .map(|(e, _)| String::from_utf8_lossy(&e.name).into_owned())
            .collect();
        assert_eq!(names, ["etc/", long.as_str(), "bin/ping", "lib"]);
        let (file, data) = &entries[1];
        assert_eq!(
            (file.kind, file.mode, file.uid),
            (Kind::File, 0o4755, 70000)
        );
        assert_eq!(data, b"hello");
        assert_eq!(entries[0].0.kind, Kind::Directory);
        let (ping, _) = &entries[2];
        assert_eq!(
            ping.xattrs,
            [("security.capability".to_owned(), vec![1, 2])]
        );
        assert_eq!(
            (entries[3].0.kind, &entries[3].0.link[..]),
            (Kind::Symlink, &b"usr/lib"[..])
        );
    }

    #[test]
    fn damage_and_sparse_files_are_refused() {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_ustar();
        h.set_size(1);
        b.append_data(&mut h, "a", &b"x"[..]).unwrap();
        let good = b.into_inner().unwrap();

        let mut bad = good.clone();
        bad[0] = b'b';
        let e = TarStream::new(&bad[..]).next_entry().unwrap_err();
        assert!(
            format!("{e:#}").contains("checksum does not match"),
            "{e:#}"
        );

        let short = &good[..512];
        let mut t = TarStream::new(short);
        t.next_entry().unwrap().unwrap();
        let mut data = Vec::new();
        let e = t.read_to_end(&mut data).unwrap_err();
        assert!(e.to_string().contains("ends inside a file's data"), "{e}");

        let mut sparse = good.clone();
        sparse[156] = b'S';
        let sum: u32 = sparse[..512]
            .iter()
            .enumerate()
            .map(|(i, &b)| {
                if (148..156).contains(&i) {
                    32
                } else {
                    b as u32
                }
            })
            .sum();
        sparse[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        let e = TarStream::new(&sparse[..]).next_entry().unwrap_err();
        assert!(format!("{e:#}").contains("sparse"), "{e:#}");
    }

    #[test]
    fn pax_records_parse_and_bad_ones_are_named() {
        let recs = parse_pax(b"16 path=a/b/c/d\n22 SCHILY.xattr.k=v=1\n").unwrap();
        assert_eq!(recs[0], ("path".to_owned(), b"a/b/c/d".to_vec()));
        assert_eq!(recs[1], ("SCHILY.xattr.k".to_owned(), b"v=1".to_vec()));
        let e = parse_pax(b"99 path=x\n").unwrap_err();
        assert!(e.to_string().contains("length does not fit"), "{e}");
    }
}

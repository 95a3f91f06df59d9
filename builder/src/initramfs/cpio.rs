//! A writer for the "newc" cpio format, the one the kernel unpacks as an
//! initramfs (uncompressed is accepted, so nothing else is needed).

use std::io::{self, Write};

const MAGIC: &str = "070701";
const TRAILER: &str = "TRAILER!!!";

const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;
const S_IFCHR: u32 = 0o020_000;

/// Writes cpio entries, all owned by root with a fixed mtime so the same
/// inputs give the same bytes.
pub struct CpioWriter<W: Write> {
    out: W,
    written: u64,
    next_ino: u32,
    mtime: u32,
}

impl<W: Write> CpioWriter<W> {
    pub fn new(out: W, mtime: u32) -> Self {
        CpioWriter {
            out,
            written: 0,
            next_ino: 1,
            mtime,
        }
    }

    pub fn dir(&mut self, path: &str, mode: u32) -> io::Result<()> {
        self.entry(path, S_IFDIR | mode, 2, (0, 0), &[])
    }

    pub fn file(&mut self, path: &str, mode: u32, data: &[u8]) -> io::Result<()> {
        self.entry(path, S_IFREG | mode, 1, (0, 0), data)
    }

    pub fn symlink(&mut self, path: &str, target: &str) -> io::Result<()> {
        self.entry(path, S_IFLNK | 0o777, 1, (0, 0), target.as_bytes())
    }

    pub fn char_device(&mut self, path: &str, mode: u32, major: u32, minor: u32) -> io::Result<()> {
        self.entry(path, S_IFCHR | mode, 1, (major, minor), &[])
    }

    /// Ends the archive and returns the writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.next_ino = 0;
        self.entry(TRAILER, 0, 1, (0, 0), &[])?;
        self.out.flush()?;
        Ok(self.out)
    }

    fn entry(
        &mut self,
        path: &str,
        mode: u32,
        nlink: u32,
        rdev: (u32, u32),
        data: &[u8],
    ) -> io::Result<()> {
        let name = path.trim_start_matches('/');
        let name = if name.is_empty() { "." } else { name };
        let size = u32::try_from(data.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "file over 4 GiB"))?;
        let ino = self.next_ino;
        self.next_ino += 1;
        let fields = [
            ino,
            mode,
            0,
            0,
            nlink,
            self.mtime,
            size,
            0,
            0,
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0,
        ];
        let mut header = String::with_capacity(110);
        header.push_str(MAGIC);
        for f in fields {
            header.push_str(&format!("{f:08x}"));
        }
        self.put(header.as_bytes())?;
        self.put(name.as_bytes())?;
        self.put(&[0])?;
        self.pad()?;
        self.put(data)?;
        self.pad()
    }

    fn put(&mut self, b: &[u8]) -> io::Result<()> {
        self.out.write_all(b)?;
        self.written += b.len() as u64;
        Ok(())
    }

    /// Header+name and data each end on a 4-byte boundary.
    fn pad(&mut self) -> io::Result<()> {
        let n = (4 - self.written % 4) % 4;
        self.put(&[0u8; 3][..n as usize])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn archive() -> Vec<u8> {
        let mut w = CpioWriter::new(Vec::new(), 0);
        w.dir("/", 0o755).unwrap();
        w.dir("/bin", 0o755).unwrap();
        w.file("/bin/hello", 0o755, b"#!/bin/sh\necho hi\n")
            .unwrap();
        w.symlink("/bin/sh", "hello").unwrap();
        w.char_device("/dev/console", 0o600, 5, 1).unwrap();
        w.finish().unwrap()
    }

    #[test]
    fn header_fields_and_alignment() {
        let a = archive();
        assert_eq!(a.len() % 4, 0);
        assert!(a.starts_with(b"070701"));
        // First entry is the root directory, named ".".
        let namesize = u32::from_str_radix(std::str::from_utf8(&a[94..102]).unwrap(), 16).unwrap();
        assert_eq!(namesize, 2);
        assert_eq!(&a[110..112], b".\0");
        let trailer = a.windows(10).rposition(|w| w == b"TRAILER!!!").unwrap();
        assert!(trailer > 110);
    }

    #[test]
    fn cpio_tool_lists_and_extracts_when_installed() {
        let cpio = crate::testutil::require_program("cpio", "cpio");
        let (dir, file) = crate::testutil::scratch_file("a.cpio", archive());
        let listing = crate::exec::Cmd::new(&cpio)
            .args(["-itv", "-F"])
            .arg(&file)
            .stdout_text()
            .unwrap();
        for want in ["bin/hello", "bin/sh -> hello", "dev/console"] {
            assert!(listing.contains(want), "{want} missing from:\n{listing}");
        }
        let out = dir.path().join("x");
        std::fs::create_dir(&out).unwrap();
        crate::exec::Cmd::new("sh")
            .arg("-c")
            .arg(format!(
                "cd {} && {} -id --no-absolute-filenames -F {} bin/hello",
                out.display(),
                cpio.display(),
                file.display()
            ))
            .run()
            .unwrap();
        assert_eq!(
            std::fs::read(out.join("bin/hello")).unwrap(),
            b"#!/bin/sh\necho hi\n"
        );
    }
}

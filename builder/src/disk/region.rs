//! A byte range of a file seen as a file of its own, so filesystem code
//! (fatfs) writes a partition straight into the disk image.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;

pub struct Region<'a> {
    file: &'a File,
    start: u64,
    len: u64,
    pos: u64,
}

impl<'a> Region<'a> {
    pub fn new(file: &'a File, start: u64, len: u64) -> Self {
        Region {
            file,
            start,
            len,
            pos: 0,
        }
    }

    fn remaining(&self) -> u64 {
        self.len.saturating_sub(self.pos)
    }
}

impl Read for Region<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = buf.len().min(self.remaining() as usize);
        let got = self.file.read_at(&mut buf[..n], self.start + self.pos)?;
        self.pos += got as u64;
        Ok(got)
    }
}

impl Write for Region<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if !buf.is_empty() && self.remaining() == 0 {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "write past the end of the partition",
            ));
        }
        let n = buf.len().min(self.remaining() as usize);
        let put = self.file.write_at(&buf[..n], self.start + self.pos)?;
        self.pos += put as u64;
        Ok(put)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Seek for Region<'_> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let target = match to {
            SeekFrom::Start(n) => Some(n),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        match target {
            Some(t) if t <= self.len => {
                self.pos = t;
                Ok(t)
            }
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek outside the partition",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_land_at_the_offset_and_stop_at_the_end() {
        let f = tempfile::tempfile().unwrap();
        f.set_len(100).unwrap();
        let mut r = Region::new(&f, 10, 5);
        assert_eq!(r.write(b"abcdefg").unwrap(), 5);
        assert_eq!(r.write(b"x").unwrap_err().kind(), io::ErrorKind::WriteZero);
        r.seek(SeekFrom::Start(1)).unwrap();
        let mut b = [0u8; 10];
        assert_eq!(r.read(&mut b).unwrap(), 4);
        assert_eq!(&b[..4], b"bcde");
        let mut whole = vec![0u8; 100];
        f.read_exact_at(&mut whole, 0).unwrap();
        assert_eq!(&whole[10..15], b"abcde");
        assert_eq!(
            r.seek(SeekFrom::Start(6)).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
    }
}

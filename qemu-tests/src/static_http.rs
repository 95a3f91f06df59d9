//! A static file server with byte ranges, for the boot tests: "any static
//! HTTP server" as the updater expects one (nginx, an object store),
//! counting the body bytes it sends.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

pub struct StaticServer {
    sent: Arc<AtomicU64>,
    /// Of those, for files at the top of the served directory (not in a
    /// subdirectory): one offer's bytes when subdirectories hold others.
    sent_at_top: Arc<AtomicU64>,
    dir: Arc<Mutex<Option<PathBuf>>>,
}

impl StaticServer {
    /// Serves nothing (404) on 127.0.0.1:`port` (QEMU's user network
    /// shows it to a guest as 10.0.2.2:`port`) until the process ends or
    /// [`StaticServer::serve`] names a directory.
    pub fn start(port: u16) -> StaticServer {
        let l = TcpListener::bind(("127.0.0.1", port))
            .unwrap_or_else(|e| panic!("listening on 127.0.0.1:{port}: {e}"));
        let sent = Arc::new(AtomicU64::new(0));
        let sent_at_top = Arc::new(AtomicU64::new(0));
        let dir: Arc<Mutex<Option<PathBuf>>> = Arc::default();
        let (counters, served) = ((sent.clone(), sent_at_top.clone()), dir.clone());
        std::thread::spawn(move || {
            for s in l.incoming().flatten() {
                let counters = counters.clone();
                let dir = served.lock().unwrap_or_else(|e| e.into_inner()).clone();
                std::thread::spawn(move || {
                    let _ = answer(s, dir.as_deref(), (&counters.0, &counters.1));
                });
            }
        });
        StaticServer {
            sent,
            sent_at_top,
            dir,
        }
    }

    /// Serves `dir` from now on (None: nothing).
    pub fn serve(&self, dir: Option<&Path>) {
        *self.dir.lock().unwrap_or_else(|e| e.into_inner()) = dir.map(Path::to_path_buf);
    }

    /// Body bytes sent so far.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::SeqCst)
    }

    /// Body bytes sent so far for files at the top of the served directory.
    pub fn sent_at_top(&self) -> u64 {
        self.sent_at_top.load(Ordering::SeqCst)
    }
}

fn answer(
    mut s: std::net::TcpStream,
    dir: Option<&Path>,
    (sent, sent_at_top): (&AtomicU64, &AtomicU64),
) -> std::io::Result<()> {
    let mut r = BufReader::new(s.try_clone()?);
    let mut first = String::new();
    r.read_line(&mut first)?;
    let path = first.split(' ').nth(1).unwrap_or("/").to_owned();
    let mut range = None;
    loop {
        let mut l = String::new();
        if r.read_line(&mut l)? == 0 || l == "\r\n" {
            break;
        }
        if let Some(v) = l
            .to_ascii_lowercase()
            .strip_prefix("range: bytes=")
            .map(str::trim)
        {
            range = v
                .split_once('-')
                .and_then(|(a, b)| Some((a.parse::<u64>().ok()?, b.parse::<u64>().ok()?)));
        }
    }
    let name = path.trim_start_matches('/');
    let file = dir.map(|d| d.join(name));
    let Some(file) = file.filter(|f| !name.contains("..") && f.is_file()) else {
        return s.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");
    };
    let f = std::fs::File::open(&file)?;
    let len = f.metadata()?.len();
    let (status, start, end) = match range {
        Some((a, b)) if a <= b && b < len => ("206 Partial Content", a, b),
        _ => ("200 OK", 0, len.saturating_sub(1)),
    };
    let body_len = if len == 0 { 0 } else { end - start + 1 };
    let mut head =
        format!("HTTP/1.1 {status}\r\nContent-Length: {body_len}\r\nConnection: close\r\n");
    if range.is_some() {
        head.push_str(&format!("Content-Range: bytes {start}-{end}/{len}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes())?;
    let mut buf = vec![0u8; body_len as usize];
    use std::os::unix::fs::FileExt;
    f.read_exact_at(&mut buf, start)?;
    s.write_all(&buf)?;
    sent.fetch_add(body_len, Ordering::SeqCst);
    if !name.contains('/') {
        sent_at_top.fetch_add(body_len, Ordering::SeqCst);
    }
    Ok(())
}

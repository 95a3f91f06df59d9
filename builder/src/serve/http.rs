//! HTTP/1.1 over tokio, just what iPXE, the initramfs's wget and the
//! agent need: GET and HEAD, keep-alive, files streamed with their exact
//! length. Each request is logged with the MAC it belongs to.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

use super::routes::{App, Body, Request, Response};
use super::{Event, Log};

/// Request heads larger than this are refused.
const MAX_HEAD: usize = 16 * 1024;
/// A keep-alive connection idle this long is closed.
const IDLE: Duration = Duration::from_secs(60);
/// Large reads keep a fast client fed.
const FILE_BUF: usize = 256 * 1024;

pub async fn serve(listener: TcpListener, app: Arc<App>, log: Log) -> std::io::Result<()> {
    loop {
        let (sock, peer) = listener.accept().await?;
        let (app, log) = (app.clone(), log.clone());
        tokio::spawn(async move {
            if let Err(e) = connection(sock, peer, &app, &log).await {
                log(&Event::ConnectionError {
                    peer,
                    error: e.to_string(),
                });
            }
        });
    }
}

async fn connection(
    mut sock: TcpStream,
    peer: SocketAddr,
    app: &App,
    log: &Log,
) -> std::io::Result<()> {
    sock.set_nodelay(true)?;
    let mut buf = Vec::new();
    loop {
        let head = match tokio::time::timeout(IDLE, read_head(&mut sock, &mut buf)).await {
            Ok(Ok(Some(h))) => h,
            Ok(Ok(None)) | Err(_) => return Ok(()),
            Ok(Err(e)) => return Err(e),
        };
        let started = Instant::now();
        let (req, keep_alive) = match parse_head(&head) {
            Some(r) => r,
            None => {
                let resp = Response {
                    status: 400,
                    ..bad_request()
                };
                write_response(&mut sock, "GET", &resp, false).await?;
                log(&Event::BadRequest {
                    peer,
                    line: first_line(&head).to_string(),
                });
                return Ok(());
            }
        };
        let resp = app.respond(&req);
        let result = write_response(&mut sock, &req.method, &resp, keep_alive).await;
        log(&Event::Request {
            peer,
            mac: resp.mac.map(|m| m.to_string()),
            node: resp.node.clone(),
            method: req.method.clone(),
            path: req.path.clone(),
            status: resp.status,
            bytes: if req.method == "HEAD" {
                0
            } else {
                resp.body_len()
            },
            ms: started.elapsed().as_millis(),
            aborted: result.as_ref().err().map(|e| e.to_string()),
        });
        result?;
        if !keep_alive {
            return Ok(());
        }
    }
}

fn bad_request() -> Response {
    Response {
        status: 400,
        content_type: "text/plain; charset=utf-8",
        headers: Vec::new(),
        body: Body::Bytes(b"bad request\n".to_vec()),
        mac: None,
        node: None,
    }
}

fn first_line(head: &[u8]) -> String {
    let text = String::from_utf8_lossy(head);
    text.lines()
        .next()
        .unwrap_or("")
        .chars()
        .take(200)
        .collect()
}

/// Reads up to the blank line ending a request head; `buf` keeps bytes of
/// a pipelined next request. None at a clean end of the connection.
async fn read_head(sock: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<Option<Vec<u8>>> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = buf[..end + 4].to_vec();
            buf.drain(..end + 4);
            return Ok(Some(head));
        }
        if buf.len() > MAX_HEAD {
            return Err(std::io::Error::other("request head too large"));
        }
        let mut chunk = [0u8; 4096];
        let n = sock.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// The request and whether the connection stays open after it.
pub fn parse_head(head: &[u8]) -> Option<(Request, bool)> {
    let text = std::str::from_utf8(head).ok()?;
    let mut lines = text.split("\r\n");
    let mut parts = lines.next()?.split(' ');
    let (method, path, version) = (parts.next()?, parts.next()?, parts.next()?);
    if !version.starts_with("HTTP/1.") || !path.starts_with('/') {
        return None;
    }
    let mut req = Request {
        method: method.to_owned(),
        path: path.to_owned(),
        host: None,
        range: None,
    };
    let mut keep_alive = version == "HTTP/1.1";
    for l in lines {
        let Some((name, value)) = l.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "host" => req.host = Some(value.to_owned()),
            "range" => req.range = Some(value.to_owned()),
            "connection" => {
                let v = value.to_ascii_lowercase();
                if v.contains("close") {
                    keep_alive = false;
                } else if v.contains("keep-alive") {
                    keep_alive = true;
                }
            }
            // A body we would not read would be taken for the next request.
            "content-length" if value != "0" => keep_alive = false,
            "transfer-encoding" => keep_alive = false,
            _ => {}
        }
    }
    Some((req, keep_alive))
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        206 => "Partial Content",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        410 => "Gone",
        416 => "Range Not Satisfiable",
        _ => "Internal Server Error",
    }
}

async fn write_response(
    sock: &mut TcpStream,
    method: &str,
    resp: &Response,
    keep_alive: bool,
) -> std::io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {} {}\r\nServer: nodeforge\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: {}\r\n",
        resp.status,
        reason(resp.status),
        resp.content_type,
        resp.body_len(),
        if keep_alive { "keep-alive" } else { "close" },
    );
    for (k, v) in &resp.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    sock.write_all(head.as_bytes()).await?;
    if method == "HEAD" {
        return sock.flush().await;
    }
    match &resp.body {
        Body::Bytes(b) => sock.write_all(b).await?,
        Body::File { path, offset, len } => {
            // io::Error carries no path: the log line would not say which file.
            let named = |e: std::io::Error| {
                std::io::Error::new(e.kind(), format!("reading {}: {e}", path.display()))
            };
            let mut f = tokio::fs::File::open(path).await.map_err(named)?;
            if *offset > 0 {
                use tokio::io::AsyncSeekExt;
                f.seek(std::io::SeekFrom::Start(*offset))
                    .await
                    .map_err(named)?;
            }
            let mut reader = BufReader::with_capacity(FILE_BUF, f.take(*len));
            let copied = tokio::io::copy_buf(&mut reader, sock).await?;
            if copied != *len {
                // The file shrank under us: the client must not take the
                // short body for the whole.
                return Err(std::io::Error::other(format!(
                    "{} ended after {copied} of {len} bytes",
                    path.display()
                )));
            }
        }
    }
    sock.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_parse_with_keep_alive_rules() {
        let (r, ka) = parse_head(
            b"GET /nodes/x/seed.toml HTTP/1.1\r\nHost: 10.0.2.2:8080\r\nRange: bytes=0-1\r\n\r\n",
        )
        .unwrap();
        assert_eq!(r.method, "GET");
        assert_eq!(r.path, "/nodes/x/seed.toml");
        assert_eq!(r.host.as_deref(), Some("10.0.2.2:8080"));
        assert_eq!(r.range.as_deref(), Some("bytes=0-1"));
        assert!(ka);
        let (_, ka) = parse_head(b"GET / HTTP/1.0\r\n\r\n").unwrap();
        assert!(!ka);
        let (_, ka) = parse_head(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n").unwrap();
        assert!(!ka);
        assert!(parse_head(b"GET nohost HTTP/1.1\r\n\r\n").is_none());
        assert!(parse_head(b"hello\r\n\r\n").is_none());
    }
}

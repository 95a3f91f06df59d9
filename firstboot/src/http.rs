//! A tiny HTTP/1.1 GET client over `std::net::TcpStream`, enough to fetch a
//! netboot seed from `nodeforge serve`, and a release and byte ranges of
//! an image for an update, without an async runtime.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use anyhow::{bail, Context, Result};

/// Seeds are a few hundred bytes; refuse anything absurd.
const MAX_BODY: usize = 1 << 20;

/// What to ask for and how much to take.
#[derive(Debug, Clone, Copy)]
pub struct Ask {
    /// `Range: bytes=start-(start+len-1)`; the answer must be a 206 for
    /// exactly those bytes.
    pub range: Option<(u64, u64)>,
    /// A longer body is an error, not a buffer that grows.
    pub max_body: usize,
    pub timeout: Duration,
}

#[derive(Debug, PartialEq, Eq)]
struct Url<'a> {
    host: &'a str,
    port: u16,
    path: &'a str,
}

fn parse_url(url: &str) -> Result<Url<'_>> {
    let rest = url
        .strip_prefix("http://")
        .with_context(|| format!("seed URL {url:?}: only http:// is supported"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    // [v6]:port, host:port or host.
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6
            .split_once(']')
            .with_context(|| format!("seed URL {url:?}: unclosed '['"))?;
        (h, after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    let port = match port {
        Some(p) => p
            .parse()
            .with_context(|| format!("seed URL {url:?}: bad port {p:?}"))?,
        None => 80,
    };
    if host.is_empty() {
        bail!("seed URL {url:?} has no host");
    }
    Ok(Url { host, port, path })
}

/// GETs `url` and returns the body of a 200 response (at most 1 MiB).
pub fn get(url: &str, timeout: Duration) -> Result<Vec<u8>> {
    fetch(
        url,
        Ask {
            range: None,
            max_body: MAX_BODY,
            timeout,
        },
    )
}

/// GETs `url` as `ask` says: the body of a 200, or of a 206 with exactly
/// the range asked for.
pub fn fetch(url: &str, ask: Ask) -> Result<Vec<u8>> {
    let timeout = ask.timeout;
    let u = parse_url(url)?;
    let addrs: Vec<_> = (u.host, u.port)
        .to_socket_addrs()
        .with_context(|| format!("resolving {}", u.host))?
        .collect();
    let mut last_err = None;
    let mut stream = None;
    for a in &addrs {
        match TcpStream::connect_timeout(a, timeout) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last_err = Some(e),
        }
    }
    let mut stream = match (stream, last_err) {
        (Some(s), _) => s,
        (None, Some(e)) => return Err(e).with_context(|| format!("connecting to {url}")),
        (None, None) => bail!("{} resolved to no address", u.host),
    };
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .with_context(|| format!("setting timeouts on the connection to {url}"))?;
    let host_hdr = if u.host.contains(':') {
        format!("[{}]:{}", u.host, u.port)
    } else {
        format!("{}:{}", u.host, u.port)
    };
    let range = match ask.range {
        Some((_, 0)) => bail!("GET {url}: an empty range"),
        Some((start, len)) => format!("Range: bytes={start}-{}\r\n", start + len - 1),
        None => String::new(),
    };
    let req = format!(
        "GET {} HTTP/1.1\r\nHost: {host_hdr}\r\nUser-Agent: nodeforge-firstboot\r\nAccept: */*\r\n{range}Connection: close\r\n\r\n",
        u.path
    );
    stream
        .write_all(req.as_bytes())
        .with_context(|| format!("sending request to {url}"))?;
    // Read until the body is complete rather than until EOF: a server that
    // keeps the connection open must not cost us the read timeout.
    let mut raw = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let n = stream
            .read(&mut chunk)
            .with_context(|| format!("reading response from {url}"))?;
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&chunk[..n]);
        if raw.len() > ask.max_body + 16 * 1024 {
            bail!("GET {url}: response larger than {} bytes", ask.max_body);
        }
        if response_complete(&raw) {
            break;
        }
    }
    parse_response(&raw, ask).with_context(|| format!("GET {url}"))
}

/// True once a response with Content-Length or chunked encoding has all
/// its bytes (a response with neither ends at EOF).
fn response_complete(raw: &[u8]) -> bool {
    let Some(head_end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&raw[..head_end]).to_ascii_lowercase();
    let body = &raw[head_end + 4..];
    for l in head.split("\r\n") {
        if let Some(v) = l.strip_prefix("content-length:") {
            return v.trim().parse::<usize>().is_ok_and(|n| body.len() >= n);
        }
        if l.starts_with("transfer-encoding:") && l.contains("chunked") {
            return dechunk(body, usize::MAX).is_ok();
        }
    }
    false
}

fn parse_response(raw: &[u8], ask: Ask) -> Result<Vec<u8>> {
    let head_end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("response has no end of headers")?;
    let head = std::str::from_utf8(&raw[..head_end]).context("headers are not UTF-8")?;
    let body = &raw[head_end + 4..];
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let mut parts = status_line.splitn(3, ' ');
    let (version, code) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if !version.starts_with("HTTP/1.") {
        bail!("not an HTTP/1.x response: {status_line:?}");
    }
    let want_code = if ask.range.is_some() { "206" } else { "200" };
    if code != want_code {
        bail!("server answered {status_line:?}, not {want_code}");
    }
    let mut length = None;
    let mut chunked = false;
    let mut content_range = None;
    for l in lines {
        let Some((name, value)) = l.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-range") {
            content_range = Some(value.to_owned());
        } else if name.eq_ignore_ascii_case("content-length") {
            length = Some(value.parse::<usize>().context("bad Content-Length")?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.to_ascii_lowercase().contains("chunked");
        }
    }
    if let Some((start, len)) = ask.range {
        // A server that ignores part of the range, or sends another, must
        // not have its bytes written at our offset.
        let want = format!("bytes {start}-{}/", start + len - 1);
        match &content_range {
            Some(cr) if cr.starts_with(&want) => {}
            other => bail!("asked for {want}…, the server sent Content-Range {other:?}"),
        }
    }
    let body = if chunked {
        dechunk(body, ask.max_body)?
    } else if let Some(n) = length {
        if body.len() < n {
            bail!("body truncated: {} of {n} bytes", body.len());
        }
        body[..n].to_vec()
    } else {
        body.to_vec()
    };
    if body.len() > ask.max_body {
        bail!("body larger than {} bytes", ask.max_body);
    }
    if let Some((_, len)) = ask.range {
        if body.len() as u64 != len {
            bail!("asked for {len} bytes, got {}", body.len());
        }
    }
    Ok(body)
}

fn dechunk(mut data: &[u8], max_body: usize) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .context("chunk size line not terminated")?;
        let line = std::str::from_utf8(&data[..eol]).context("chunk size not UTF-8")?;
        let size_hex = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_hex, 16)
            .with_context(|| format!("bad chunk size {size_hex:?}"))?;
        data = &data[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        if size > max_body || data.len() < size + 2 || out.len() + size > max_body {
            bail!("chunk truncated or too large");
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// The whole chain of an error the test expects.
    fn err<T: std::fmt::Debug>(r: Result<T>) -> String {
        format!("{:#}", r.unwrap_err())
    }

    fn serve_once(response: &'static [u8]) -> (String, std::thread::JoinHandle<String>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let h = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut req = vec![0u8; 1024];
            let n = s.read(&mut req).unwrap();
            s.write_all(response).unwrap();
            String::from_utf8_lossy(&req[..n]).into_owned()
        });
        (format!("http://127.0.0.1:{port}/seeds/n1.toml"), h)
    }

    #[test]
    fn parses_urls() {
        assert_eq!(
            parse_url("http://10.0.0.1:8080/s/a.toml").unwrap(),
            Url {
                host: "10.0.0.1",
                port: 8080,
                path: "/s/a.toml"
            }
        );
        assert_eq!(parse_url("http://h").unwrap().path, "/");
        assert_eq!(parse_url("http://[fe80::1]:81/x").unwrap().host, "fe80::1");
        assert!(err(parse_url("https://h/")).contains("only http:// is supported"));
        assert!(err(parse_url("http://h:x/")).contains("bad port \"x\""));
    }

    #[test]
    fn fetches_content_length_body() {
        let (url, h) =
            serve_once(b"HTTP/1.1 200 OK\r\nContent-Length: 15\r\n\r\nhostname = 'a'\nEXTRA");
        let body = get(&url, Duration::from_secs(5)).unwrap();
        assert_eq!(body, b"hostname = 'a'\n");
        let req = h.join().unwrap();
        assert!(
            req.starts_with("GET /seeds/n1.toml HTTP/1.1\r\nHost: 127.0.0.1:"),
            "{req}"
        );
    }

    #[test]
    fn fetches_chunked_body() {
        let (url, _h) = serve_once(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nhost\r\n6;x=y\r\nname =\r\n0\r\n\r\n",
        );
        assert_eq!(get(&url, Duration::from_secs(5)).unwrap(), b"hostname =");
    }

    #[test]
    fn does_not_wait_for_eof_when_the_length_is_known() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        // Detached: it outlives the assertion on purpose.
        std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut req = vec![0u8; 1024];
            let _ = s.read(&mut req).unwrap();
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                .unwrap();
            // Keep the connection open well past the client's read timeout.
            std::thread::sleep(Duration::from_secs(3));
        });
        let t = std::time::Instant::now();
        let url = format!("http://127.0.0.1:{port}/");
        assert_eq!(get(&url, Duration::from_secs(2)).unwrap(), b"ok");
        assert!(t.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn absurd_chunk_sizes_are_errors_not_panics() {
        let e = err(dechunk(b"ffffffffffffffff\r\nx\r\n0\r\n\r\n", MAX_BODY));
        assert_eq!(e, "chunk truncated or too large");
        assert_eq!(
            err(dechunk(b"zz\r\n", MAX_BODY)),
            "bad chunk size \"zz\": invalid digit found in string"
        );
        let whole = Ask {
            range: None,
            max_body: MAX_BODY,
            timeout: Duration::from_secs(1),
        };
        let e = err(parse_response(
            b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\nshort",
            whole,
        ));
        assert_eq!(e, "body truncated: 5 of 99 bytes");
        assert_eq!(
            err(parse_response(b"garbage", whole)),
            "response has no end of headers"
        );
    }

    #[test]
    fn a_range_is_asked_for_and_only_exactly_that_range_is_taken() {
        let ask = Ask {
            range: Some((10, 4)),
            max_body: 16,
            timeout: Duration::from_secs(5),
        };
        let (url, h) = serve_once(
            b"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 10-13/99\r\nContent-Length: 4\r\n\r\nabcd",
        );
        assert_eq!(fetch(&url, ask).unwrap(), b"abcd");
        assert!(h.join().unwrap().contains("\r\nRange: bytes=10-13\r\n"));
        // A server that ignores Range answers 200 with the whole file.
        let (url, _h) = serve_once(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nabcd");
        assert!(err(fetch(&url, ask)).contains("not 206"));
        let (url, _h) = serve_once(
            b"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 0-3/99\r\nContent-Length: 4\r\n\r\nabcd",
        );
        assert!(err(fetch(&url, ask)).contains("asked for bytes 10-13/"));
    }

    #[test]
    fn non_200_is_an_error() {
        let (url, _h) = serve_once(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");
        let e = err(get(&url, Duration::from_secs(5)));
        assert!(e.contains("404"), "{e}");
    }
}

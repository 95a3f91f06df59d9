//! A STAND-IN webhook receiver (for Slack, a paging service, a chat
//! bridge): an HTTP listener on this machine that answers every POST with
//! 200 and keeps its body, so a boot test sees what a node's Alertmanager
//! notified. A guest reaches it at 10.0.2.2:`port` (QEMU's user network
//! maps that address to this machine's loopback).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One POST that reached the receiver: its path and body.
#[derive(Clone, Debug)]
pub struct Delivery {
    pub path: String,
    pub body: String,
}

/// The running receiver; it stops with the test process.
pub struct WebhookSink {
    pub port: u16,
    received: Arc<Mutex<Vec<Delivery>>>,
}

impl WebhookSink {
    pub fn start() -> WebhookSink {
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .unwrap_or_else(|e| panic!("webhook sink: binding 127.0.0.1: {e}"));
        let port = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("webhook sink: its address: {e}"))
            .port();
        let received = Arc::new(Mutex::new(Vec::new()));
        let kept = Arc::clone(&received);
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                match read_post(stream) {
                    Ok(Some(d)) => kept.lock().unwrap_or_else(|e| e.into_inner()).push(d),
                    Ok(None) => {}
                    Err(e) => eprintln!("webhook sink: a request failed: {e}"),
                }
            }
        });
        WebhookSink { port, received }
    }

    /// The URL a guest posts to.
    pub fn guest_url(&self, path: &str) -> String {
        format!("http://10.0.2.2:{}{path}", self.port)
    }

    pub fn deliveries(&self) -> Vec<Delivery> {
        self.received
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Waits until a delivery satisfies `wanted`, or panics after `limit`
    /// with everything that did arrive.
    pub fn wait_for(&self, limit: Duration, wanted: impl Fn(&Delivery) -> bool) -> Delivery {
        let until = Instant::now() + limit;
        loop {
            if let Some(d) = self.deliveries().into_iter().find(|d| wanted(d)) {
                return d;
            }
            assert!(
                Instant::now() < until,
                "no wanted delivery reached the webhook in {} s; it got: {:#?}",
                limit.as_secs(),
                self.deliveries()
            );
            std::thread::sleep(Duration::from_secs(2));
        }
    }
}

/// Reads one HTTP/1.x request and answers it: a POST's path and body, or
/// `None` for any other method (answered 405).
fn read_post(mut stream: TcpStream) -> std::io::Result<Option<Delivery>> {
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut parts = request_line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.trim().eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().unwrap_or(0);
            }
        }
    }
    if method != "POST" {
        stream.write_all(
            b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        )?;
        return Ok(None);
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")?;
    Ok(Some(Delivery {
        path: path.to_owned(),
        body: String::from_utf8_lossy(&body).into_owned(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_post_is_kept_with_its_path_and_other_methods_are_refused() {
        let sink = WebhookSink::start();
        let send = |request: &str| {
            let mut s = TcpStream::connect(("127.0.0.1", sink.port)).unwrap();
            s.write_all(request.as_bytes()).unwrap();
            let mut answer = String::new();
            s.read_to_string(&mut answer).unwrap();
            answer
        };
        let body = r#"{"status":"firing"}"#;
        let answer = send(&format!(
            "POST /alerts HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ));
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(send("GET / HTTP/1.1\r\nHost: x\r\n\r\n").starts_with("HTTP/1.1 405"));
        let got = sink.wait_for(Duration::from_secs(5), |d| d.path == "/alerts");
        assert_eq!(got.body, body);
        assert_eq!(sink.deliveries().len(), 1);
        assert_eq!(
            sink.guest_url("/a"),
            format!("http://10.0.2.2:{}/a", sink.port)
        );
    }
}

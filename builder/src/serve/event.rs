//! What the server reports: one event per request, transfer or failure,
//! a text line for people (stderr) or a JSON line for programs
//! (`nodeforge serve --json`, stdout).

use std::fmt;
use std::net::SocketAddr;

use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// The sockets are bound; machines may boot.
    Listening {
        http: SocketAddr,
        tftp: Option<SocketAddr>,
        tftp_root: Option<String>,
    },
    /// One HTTP request answered (or cut short: `aborted`).
    Request {
        peer: SocketAddr,
        /// The machine's MAC when the request named one the fleet knows.
        mac: Option<String>,
        node: Option<String>,
        method: String,
        path: String,
        status: u16,
        bytes: u64,
        ms: u128,
        aborted: Option<String>,
    },
    BadRequest {
        peer: SocketAddr,
        line: String,
    },
    ConnectionError {
        peer: SocketAddr,
        error: String,
    },
    /// One TFTP read: the bytes sent, or why it failed.
    Tftp {
        peer: SocketAddr,
        file: String,
        bytes: Option<u64>,
        error: Option<String>,
    },
    TftpWriteRefused {
        peer: SocketAddr,
    },
    /// A server task ended (`http` or `tftp`).
    Stopped {
        server: String,
        error: String,
    },
}

impl Event {
    /// The event as one JSON line.
    pub fn json_line(&self) -> String {
        serde_json::to_string(self).expect("an event serialises")
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Event::Listening {
                http,
                tftp,
                tftp_root,
            } => {
                write!(
                    f,
                    "nodeforge serve: HTTP on {http} (machines chain http://ADDRESS:{}/boot.ipxe)",
                    http.port()
                )?;
                if let Some(t) = tftp {
                    write!(
                        f,
                        ", TFTP on {t} from {}",
                        tftp_root.as_deref().unwrap_or("?")
                    )?;
                }
                Ok(())
            }
            Event::Request {
                peer,
                mac,
                node,
                method,
                path,
                status,
                bytes,
                ms,
                aborted,
            } => {
                write!(
                    f,
                    "{peer} mac={} node={} \"{method} {path}\" {status} {bytes} bytes {ms} ms",
                    mac.as_deref().unwrap_or("-"),
                    node.as_deref().unwrap_or("-"),
                )?;
                if let Some(e) = aborted {
                    write!(f, " (aborted: {e})")?;
                }
                Ok(())
            }
            Event::BadRequest { peer, line } => write!(f, "{peer} mac=- bad request: {line:?}"),
            Event::ConnectionError { peer, error } => {
                write!(f, "{peer} connection error: {error}")
            }
            Event::Tftp {
                peer,
                file,
                bytes,
                error,
            } => match (bytes, error) {
                (_, Some(e)) => write!(f, "{peer} tftp \"{file}\" failed: {e}"),
                (b, None) => write!(f, "{peer} tftp \"{file}\" sent {} bytes", b.unwrap_or(0)),
            },
            Event::TftpWriteRefused { peer } => write!(f, "{peer} tftp write refused"),
            Event::Stopped { server, error } => {
                write!(f, "{} server stopped: {error}", server.to_uppercase())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> SocketAddr {
        "10.0.2.15:49152".parse().unwrap()
    }

    #[test]
    fn a_request_reads_the_same_as_before_and_as_json() {
        let e = Event::Request {
            peer: peer(),
            mac: Some("52:54:00:12:34:56".into()),
            node: Some("web-1".into()),
            method: "GET".into(),
            path: "/boot.ipxe".into(),
            status: 200,
            bytes: 321,
            ms: 4,
            aborted: None,
        };
        assert_eq!(
            e.to_string(),
            "10.0.2.15:49152 mac=52:54:00:12:34:56 node=web-1 \"GET /boot.ipxe\" 200 321 bytes 4 ms"
        );
        let v: serde_json::Value = serde_json::from_str(&e.json_line()).unwrap();
        assert_eq!(v["event"], "request");
        assert_eq!(v["status"], 200);
        assert_eq!(v["peer"], "10.0.2.15:49152");
        assert_eq!(v["node"], "web-1");
    }

    #[test]
    fn every_event_is_one_line() {
        let events = [
            Event::BadRequest {
                peer: peer(),
                line: "GARBAGE\n".into(),
            },
            Event::Tftp {
                peer: peer(),
                file: "ipxe.efi".into(),
                bytes: None,
                error: Some("not found".into()),
            },
            Event::Stopped {
                server: "http".into(),
                error: "address in use".into(),
            },
        ];
        for e in events {
            assert!(!e.to_string().contains('\n'), "{e}");
            assert!(!e.json_line().contains('\n'), "{e}");
        }
    }
}

//! sd_notify without libsystemd: one datagram to `$NOTIFY_SOCKET`.

use std::os::unix::net::UnixDatagram;

/// Sends state lines (`READY=1`, `STATUS=…`) to systemd when the agent runs
/// as a `Type=notify` service; a no-op otherwise.
#[derive(Debug, Clone, Default)]
pub struct Notifier {
    socket: Option<String>,
}

impl Notifier {
    /// The socket systemd names in `$NOTIFY_SOCKET`, if any.
    pub fn from_env() -> Self {
        match std::env::var("NOTIFY_SOCKET") {
            Ok(path) if !path.is_empty() => Notifier::to_socket(&path),
            _ => Notifier::disabled(),
        }
    }

    pub fn to_socket(path: &str) -> Self {
        Notifier {
            socket: Some(path.to_string()),
        }
    }

    pub fn disabled() -> Self {
        Notifier { socket: None }
    }

    /// Best effort: a status channel must never fail the agent.
    pub fn send(&self, state: &str) {
        let Some(path) = &self.socket else { return };
        let Ok(sock) = UnixDatagram::unbound() else {
            return;
        };
        let msg = state;
        let _ = if let Some(name) = path.strip_prefix('@') {
            // Abstract-namespace socket (systemd uses these in containers).
            use std::os::linux::net::SocketAddrExt;
            std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
                .and_then(|addr| sock.send_to_addr(msg.as_bytes(), &addr))
        } else {
            sock.send_to(msg.as_bytes(), path)
        };
    }

    // Newlines would split one STATUS into several assignments.
    pub fn status(&self, text: &str) {
        self.send(&format!("STATUS={}", text.replace('\n', " ")));
    }

    pub fn ready(&self, text: &str) {
        self.send(&format!("READY=1\nSTATUS={}", text.replace('\n', " ")));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_datagrams() {
        let (_dir, path) = crate::testutil::scratch_path("notify");
        let server = UnixDatagram::bind(&path).unwrap();
        let n = Notifier::to_socket(path.to_str().unwrap());
        n.status("step 1/8: hostname");
        let mut buf = [0u8; 256];
        let len = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"STATUS=step 1/8: hostname");
        Notifier::disabled().status("nothing happens");
    }
}

//! A virtual LAN for several guests: an Ethernet hub in this process that
//! QEMU guests join through `-netdev dgram` over Unix datagram sockets.
//!
//! Nothing on the host's network stack is involved (no bridge, no tap, no
//! IP address, no root): the frames exist only between the guests' QEMU
//! processes and this hub, so a fleet booted together is isolated from the
//! host's networks by construction.

use std::collections::BTreeSet;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result};

/// A guest's port on a [`Lan`]: what its `-netdev dgram` connects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LanPort {
    /// The hub's socket (QEMU's `remote.path`).
    pub hub: PathBuf,
    /// The guest's own socket, bound by QEMU (`local.path`).
    pub guest: PathBuf,
    /// The guest NIC's MAC address on this LAN.
    pub mac: String,
}

/// A running hub; stops when dropped.
pub struct Lan {
    dir: tempfile::TempDir,
    ports: Arc<Mutex<BTreeSet<PathBuf>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// The largest frame a guest sends (jumbo frames are not used).
const FRAME: usize = 65536;

impl Lan {
    /// Starts a hub with its sockets in a new temporary directory.
    pub fn start() -> Result<Lan> {
        let dir = tempfile::Builder::new()
            .prefix("nodeforge-lan")
            .tempdir()
            .context("creating the virtual LAN's socket directory")?;
        let hub_path = dir.path().join("hub.sock");
        let socket = UnixDatagram::bind(&hub_path)
            .with_context(|| format!("binding the LAN hub socket {}", hub_path.display()))?;
        // A timeout, so the thread sees `stop` without a frame arriving.
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .context("setting the LAN hub's read timeout")?;
        // A guest that does not read (still in its firmware, NIC down)
        // fills its socket's queue; a hub drops frames for such a port
        // instead of waiting on it, or the whole LAN would stall.
        socket
            .set_write_timeout(Some(Duration::from_millis(5)))
            .context("setting the LAN hub's write timeout")?;
        let ports: Arc<Mutex<BTreeSet<PathBuf>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let ports = Arc::clone(&ports);
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || forward(&socket, &ports, &stop))
        };
        Ok(Lan {
            dir,
            ports,
            stop,
            thread: Some(thread),
        })
    }

    /// A new port for a guest whose NIC has `mac`; the hub sends it every
    /// frame the other ports send (a hub, not a switch: a handful of test
    /// guests do not need learning).
    pub fn port(&self, name: &str, mac: &str) -> LanPort {
        let guest = self.dir.path().join(format!("{name}.sock"));
        self.ports
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(guest.clone());
        LanPort {
            hub: self.hub_path(),
            guest,
            mac: mac.to_owned(),
        }
    }

    pub fn hub_path(&self) -> PathBuf {
        self.dir.path().join("hub.sock")
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Sends each frame received from one port to every other port. A port
/// whose guest is not running (yet, or any more) has no socket, and one
/// that does not read keeps a full queue: the frame is lost for it, as on
/// a cable that is not plugged in.
fn forward(socket: &UnixDatagram, ports: &Mutex<BTreeSet<PathBuf>>, stop: &AtomicBool) {
    let mut buf = vec![0u8; FRAME];
    while !stop.load(Ordering::Relaxed) {
        let Ok((n, from)) = socket.recv_from(&mut buf) else {
            continue;
        };
        let from = from.as_pathname().map(Path::to_path_buf);
        let targets: Vec<PathBuf> = ports
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|p| Some(*p) != from.as_ref())
            .cloned()
            .collect();
        for t in targets {
            let _ = socket.send_to(&buf[..n], &t);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A frame one port sends reaches every other port and not itself.
    #[test]
    fn the_hub_repeats_a_frame_to_every_other_port() {
        let lan = Lan::start().unwrap();
        let ports: Vec<LanPort> = ["a", "b", "c"]
            .iter()
            .enumerate()
            .map(|(i, n)| lan.port(n, &format!("52:54:00:ff:00:0{i}")))
            .collect();
        let socks: Vec<UnixDatagram> = ports
            .iter()
            .map(|p| {
                let s = UnixDatagram::bind(&p.guest).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                s
            })
            .collect();
        socks[0].send_to(b"frame from a", &ports[0].hub).unwrap();
        let mut buf = [0u8; 64];
        for s in &socks[1..] {
            let n = s.recv(&mut buf).unwrap();
            assert_eq!(&buf[..n], b"frame from a");
        }
        socks[0].set_nonblocking(true).unwrap();
        let own = socks[0].recv(&mut buf).map(|n| buf[..n].to_vec());
        assert_eq!(
            own.map_err(|e| e.kind()),
            Err(std::io::ErrorKind::WouldBlock),
            "the sender got its own frame"
        );
    }
}

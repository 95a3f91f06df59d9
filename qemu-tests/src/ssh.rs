//! SSH into a test guest through QEMU's forward of its port 22, with the
//! test's key: commands, files over stdin, tunnels to its loopback; and
//! what a forward into its LAN interface answers.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::free_port;

/// An `ssh -L` forward ([`Ssh::tunnel`]); ended when dropped.
pub struct Tunnel {
    child: std::process::Child,
    /// This machine's loopback port.
    pub port: u16,
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Asserts that nothing answers on the guest's LAN at `host_port` (a
/// QEMU user-network forward to `what`): `probe` is what the service
/// answers at once when reachable (PostgreSQL's SSLRequest, Redis's PING,
/// an HTTP GET), so silence or a reset means the connection never
/// reached it. `control` (the guest's SSH forward) shows the same way
/// in does work.
pub fn assert_closed_from_lan(control: u16, host_port: u16, what: &str, probe: &[u8]) {
    use std::io::{Read, Write};
    let answer = |port: u16, probe: &[u8]| -> Vec<u8> {
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
            return Vec::new();
        };
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("setting a read timeout");
        let _ = s.write_all(probe);
        let mut buf = [0u8; 64];
        match s.read(&mut buf) {
            Ok(n) => buf[..n].to_vec(),
            Err(_) => Vec::new(),
        }
    };
    let banner = answer(control, b"");
    assert!(
        banner.starts_with(b"SSH-"),
        "the control (SSH through the LAN forward) did not answer: {:?}",
        String::from_utf8_lossy(&banner)
    );
    let got = answer(host_port, probe);
    assert!(
        got.is_empty(),
        "{what} answered from the LAN: {:?}",
        String::from_utf8_lossy(&got)
    );
}

/// SSH to a guest's admin user through QEMU's forward, with the test's key.
pub struct Ssh {
    port: u16,
    key: PathBuf,
}

impl Ssh {
    /// SSH to the guest whose port 22 QEMU forwards to `port`.
    pub fn new(port: u16, key: PathBuf) -> Ssh {
        Ssh { port, key }
    }

    /// This machine's port forwarded to the guest's SSH (through its LAN).
    pub fn port(&self) -> u16 {
        self.port
    }

    fn command(&self, cmd: &str) -> Command {
        self.command_with(&[], cmd)
    }

    fn command_with(&self, extra: &[&str], cmd: &str) -> Command {
        let mut c = Command::new("ssh");
        c.args(extra)
            .args([
                "-q",
                "-o",
                "BatchMode=yes",
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "ConnectTimeout=20",
                "-i",
            ])
            .arg(&self.key)
            .args(["-p", &self.port.to_string(), "admin@127.0.0.1", cmd]);
        c
    }

    /// Runs `cmd` on the guest; panics with its output unless it succeeds.
    /// Retries the connection for a while: sshd may still be starting.
    pub fn run(&self, cmd: &str) -> String {
        let start = Instant::now();
        loop {
            let out = self
                .command(cmd)
                .output()
                .unwrap_or_else(|e| panic!("running ssh: {e}"));
            // 255: ssh itself failed (connection refused, reset, timeout).
            if out.status.code() == Some(255) && start.elapsed() < Duration::from_secs(180) {
                std::thread::sleep(Duration::from_secs(3));
                continue;
            }
            return succeeded(cmd, &out);
        }
    }

    /// [`run`](Self::run) with the guest's `127.0.0.1:guest_port` forwarded
    /// to `host_addr` on this machine while `cmd` runs (`ssh -R`): how a
    /// guest reaches a registry on the host's loopback, which the engine
    /// trusts over plain HTTP as it trusts every loopback registry.
    pub fn run_with_tunnel(&self, guest_port: u16, host_addr: &str, cmd: &str) -> String {
        let forward = format!("127.0.0.1:{guest_port}:{host_addr}");
        let out = self
            .command_with(&["-o", "ExitOnForwardFailure=yes", "-R", &forward], cmd)
            .output()
            .unwrap_or_else(|e| panic!("running ssh: {e}"));
        succeeded(cmd, &out)
    }

    /// The guest's `127.0.0.1:guest_port` on a port of this machine's
    /// loopback while the tunnel lives (`ssh -L`): how the test reaches a
    /// service the node's firewall keeps off the LAN, as an admin would.
    pub fn tunnel(&self, guest_port: u16) -> Tunnel {
        let port = free_port();
        let forward = format!("127.0.0.1:{port}:127.0.0.1:{guest_port}");
        let child = self
            .command_with(
                &["-N", "-o", "ExitOnForwardFailure=yes", "-L", &forward],
                "",
            )
            .stdin(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("running ssh -L {forward}: {e}"));
        let mut tunnel = Tunnel { child, port };
        let limit = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = tunnel.child.try_wait() {
                panic!("ssh -L {forward} ended ({status}) before it listened");
            }
            assert!(
                Instant::now() < limit,
                "ssh -L {forward} did not listen within 60 s"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        tunnel
    }

    /// Writes `contents` to `path` on the guest (as root, mode 0600),
    /// through stdin: secrets never go on a command line.
    pub fn write(&self, path: &str, contents: &[u8]) {
        self.run_with_input(
            &format!(
                "sudo install -m 0600 /dev/stdin {path}.tmp && sudo mv {path}.tmp {path} && sync"
            ),
            contents,
        );
    }

    /// Runs `cmd` on the guest with `input` on its stdin (how a secret
    /// reaches a command there); panics with its output unless it succeeds.
    pub fn run_with_input(&self, cmd: &str, input: &[u8]) -> String {
        succeeded(cmd, &self.output_with_input(cmd, input))
    }

    /// Runs `cmd` on the guest and returns what happened, success or not.
    pub fn output_with_input(&self, cmd: &str, input: &[u8]) -> std::process::Output {
        use std::io::Write;
        let mut child = self
            .command(cmd)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("running ssh: {e}"));
        child.stdin.take().unwrap().write_all(input).unwrap();
        child.wait_with_output().unwrap()
    }
}

/// The stdout of a command run on a guest; panics with all it said unless
/// it succeeded.
fn succeeded(cmd: &str, out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "on the guest: {cmd}\nexit: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

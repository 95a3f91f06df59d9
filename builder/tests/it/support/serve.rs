//! `nodeforge serve --json` run in the background for a test: the fleet
//! file `fleet.toml` of a project, a free loopback port, its event lines
//! read one by one, the process ended when dropped.

use std::io::{BufRead, BufReader, Lines, Read, Write};
use std::process::{Child, ChildStdout};

use super::Project;

/// The one node of the test fleet files.
pub const MAC: &str = "52:54:00:12:34:56";

/// Writes `fleet.toml` with node `web-1` (MAC [`MAC`]) on the build `web`.
pub fn write_fleet(p: &Project) {
    p.write(
        "fleet.toml",
        &format!("[nodes.web-1]\nmac = \"{MAC}\"\nartifacts = \"web\"\n"),
    );
}

pub struct ServeRun {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
    pub port: u16,
}

impl ServeRun {
    /// `nodeforge serve --json --nodes fleet.toml --artifacts ARTIFACTS`
    /// on a free port, with `envs`; waits for its `listening` line.
    pub fn start(p: &Project, artifacts: &str, envs: &[(&str, std::path::PathBuf)]) -> ServeRun {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let listen = format!("127.0.0.1:{port}");
        let mut cmd = p.cmd(&[
            "serve",
            "--json",
            "--nodes",
            "fleet.toml",
            "--artifacts",
            artifacts,
            "--listen",
            &listen,
        ]);
        for (k, v) in envs {
            cmd = cmd.env(k, v);
        }
        let mut child = cmd.spawn_reading_stdout();
        let lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        let mut run = ServeRun { child, lines, port };
        let first = run.next_event();
        assert_eq!(first["event"], "listening", "{first}");
        assert_eq!(first["http"], listen.as_str(), "{first}");
        run
    }

    /// The next event line, as JSON.
    pub fn next_event(&mut self) -> serde_json::Value {
        let line = self
            .lines
            .next()
            .expect("serve ended early")
            .expect("reading serve's stdout");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
    }

    /// GET `path`: the whole raw answer (head and body).
    pub fn get(&self, path: &str) -> Vec<u8> {
        let mut s =
            std::net::TcpStream::connect(("127.0.0.1", self.port)).expect("connecting to serve");
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).unwrap();
        raw
    }
}

impl Drop for ServeRun {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

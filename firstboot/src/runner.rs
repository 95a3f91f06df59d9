//! The one door to external programs. Everything the agent runs goes
//! through [`CommandRunner`], so tests swap in a fake that records calls and
//! returns scripted results, and failures always name the full command line.
//!
//! Secrets never go into a [`Cmd`]: its `Display` form is logged and put in
//! errors. Pass secrets as files (`--auth-key=file:/run/...`).

use std::borrow::Cow;
use std::fmt;
use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Result;

/// A command to run: program, arguments, optional stdin and a time bound.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cmd {
    pub program: String,
    pub args: Vec<String>,
    pub stdin: Option<String>,
    pub timeout: Option<Duration>,
}

impl Cmd {
    pub fn new(program: &str) -> Self {
        Cmd {
            program: program.to_string(),
            args: Vec::new(),
            stdin: None,
            timeout: None,
        }
    }

    pub fn arg(mut self, a: impl Into<String>) -> Self {
        self.args.push(a.into());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    pub fn stdin(mut self, s: impl Into<String>) -> Self {
        self.stdin = Some(s.into());
        self
    }

    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = Some(t);
        self
    }

    /// The command line as one string, for logs and errors.
    pub fn line(&self) -> String {
        self.to_string()
    }
}

/// The command line as a shell would take it back.
impl fmt::Display for Cmd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&shell_quote(&self.program))?;
        for a in &self.args {
            write!(f, " {}", shell_quote(a))?;
        }
        Ok(())
    }
}

/// One word for a POSIX shell, quoted for logs; the builder's command
/// lines use it too, so both read alike: bare only when non-empty and
/// made of ASCII letters, digits and `-_./=:,+@%`; otherwise in single
/// quotes, a `'` written as `'\''`.
pub fn shell_quote(s: &str) -> Cow<'_, str> {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
    if plain {
        Cow::Borrowed(s)
    } else {
        Cow::Owned(format!("'{}'", s.replace('\'', r"'\''")))
    }
}

/// What a finished command produced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CmdOutput {
    /// Exit code; `None` when killed by a signal or by our time bound.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    /// True when the command was killed because it exceeded `Cmd::timeout`.
    pub timed_out: bool,
}

impl CmdOutput {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

/// Why a command could not produce a result at all.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("`{0}` not found")]
    NotFound(String),
    #[error("running `{line}`: {source}")]
    Io {
        line: String,
        source: std::io::Error,
    },
}

pub trait CommandRunner {
    /// Runs the command and returns its output whatever the exit status.
    fn output(&self, cmd: &Cmd) -> Result<CmdOutput, SpawnError>;

    /// Runs the command and fails unless it exits 0; the error carries the
    /// full command line and its stderr.
    fn run(&self, cmd: &Cmd) -> Result<CmdOutput> {
        let out = self.output(cmd)?;
        if out.success() {
            return Ok(out);
        }
        let status = match (out.code, out.timed_out) {
            (_, true) => format!("timed out after {:?}", cmd.timeout.unwrap_or_default()),
            (Some(c), false) => format!("exited with status {c}"),
            (None, false) => "was killed by a signal".to_string(),
        };
        anyhow::bail!("`{cmd}` {status}: {}", out.stderr.trim())
    }
}

/// Runs real programs with `std::process`.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemRunner;

impl CommandRunner for SystemRunner {
    fn output(&self, cmd: &Cmd) -> Result<CmdOutput, SpawnError> {
        let io_err = |source| SpawnError::Io {
            line: cmd.line(),
            source,
        };
        let mut child = Command::new(&cmd.program)
            .args(&cmd.args)
            .stdin(if cmd.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => SpawnError::NotFound(cmd.program.clone()),
                _ => io_err(e),
            })?;
        if let (Some(input), Some(mut w)) = (&cmd.stdin, child.stdin.take()) {
            w.write_all(input.as_bytes()).map_err(io_err)?;
        }
        // Drain both pipes on threads so a chatty child cannot block on a
        // full pipe while we wait for it.
        let mut so = child.stdout.take();
        let mut se = child.stderr.take();
        let t_out = std::thread::spawn(move || read_all(so.as_mut()));
        let t_err = std::thread::spawn(move || read_all(se.as_mut()));
        let start = Instant::now();
        let mut timed_out = false;
        let mut polls = 0u32;
        let status = loop {
            if let Some(s) = child.try_wait().map_err(io_err)? {
                break s;
            }
            if cmd.timeout.is_some_and(|t| start.elapsed() > t) {
                let _ = child.kill();
                timed_out = true;
                break child.wait().map_err(io_err)?;
            }
            // Most commands finish within milliseconds: poll fast first.
            polls += 1;
            std::thread::sleep(Duration::from_millis(if polls < 20 { 1 } else { 10 }));
        };
        Ok(CmdOutput {
            code: status.code(),
            stdout: t_out.join().unwrap_or_default(),
            stderr: t_err.join().unwrap_or_default(),
            timed_out,
        })
    }
}

fn read_all<R: Read>(r: Option<&mut R>) -> String {
    let mut buf = Vec::new();
    if let Some(r) = r {
        let _ = r.read_to_end(&mut buf);
    }
    String::from_utf8_lossy(&buf).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_quotes_awkward_arguments() {
        let c = Cmd::new("sfdisk").args(["-N", "2", "a b", ""]);
        assert_eq!(c.to_string(), "sfdisk -N 2 'a b' ''");
        // Left bare: letters, digits and -_./=:,+@%.
        let bare = "--auth-key=file:/run/k_1,x+y@h%2";
        assert_eq!(
            Cmd::new("tailscale").arg(bare).to_string(),
            format!("tailscale {bare}")
        );
        for (arg, shown) in [
            ("it's", r"'it'\''s'"),
            ("'", r"''\'''"),
            ("$HOME", "'$HOME'"),
            ("a*", "'a*'"),
            ("{{.ID}}", "'{{.ID}}'"),
            ("a;b", "'a;b'"),
            ("~", "'~'"),
            ("tab\there", "'tab\there'"),
            ("caf\u{e9}", "'caf\u{e9}'"),
        ] {
            let line = Cmd::new("echo").arg(arg).to_string();
            assert_eq!(line, format!("echo {shown}"), "{arg:?}");
        }
        // The program follows the same rule.
        let c = Cmd::new("/opt/my tools/run").arg("x");
        assert_eq!(c.to_string(), "'/opt/my tools/run' x");
        assert_eq!(Cmd::new("").to_string(), "''");
    }

    #[test]
    fn system_runner_reports_command_line_and_stderr() {
        let c = Cmd::new("sh").args(["-c", "echo oops >&2; exit 3"]);
        let err = SystemRunner.run(&c).unwrap_err().to_string();
        assert!(err.contains("sh -c 'echo oops >&2; exit 3'"), "{err}");
        assert!(err.contains("status 3") && err.contains("oops"), "{err}");
    }

    #[test]
    fn system_runner_feeds_stdin_and_times_out() {
        let out = SystemRunner.run(&Cmd::new("cat").stdin(", +\n")).unwrap();
        assert_eq!(out.stdout, ", +\n");
        let slow = Cmd::new("sleep")
            .arg("5")
            .timeout(Duration::from_millis(100));
        let out = SystemRunner.output(&slow).unwrap();
        assert!(out.timed_out && !out.success());
        assert!(matches!(
            SystemRunner.output(&Cmd::new("/nonexistent/prog")),
            Err(SpawnError::NotFound(_))
        ));
    }
}

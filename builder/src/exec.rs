//! The one way nodeforge runs an external program: the whole command line
//! and the program's stderr end up in the error when it fails.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

use anyhow::{bail, Context, Result};

/// A command about to run, kept printable for error messages.
pub struct Cmd {
    program: OsString,
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
    /// Working directory; the caller's when unset.
    dir: Option<std::path::PathBuf>,
    /// Output is passed through to our stderr instead of captured.
    inherit_output: bool,
    /// Fed to the program's stdin (a secret never goes on its command
    /// line); none: stdin is /dev/null.
    input: Option<Vec<u8>>,
}

impl Cmd {
    pub fn new(program: impl AsRef<OsStr>) -> Self {
        Cmd {
            program: program.as_ref().to_owned(),
            args: Vec::new(),
            envs: Vec::new(),
            dir: None,
            inherit_output: false,
            input: None,
        }
    }

    /// Feeds `data` to the program's stdin.
    pub fn stdin(mut self, data: impl Into<Vec<u8>>) -> Self {
        self.input = Some(data.into());
        self
    }

    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.envs
            .push((key.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    /// Runs the program in `dir`.
    pub fn current_dir(mut self, dir: impl AsRef<Path>) -> Self {
        self.dir = Some(dir.as_ref().to_owned());
        self
    }

    /// Let the program write to our terminal (long-running tools whose
    /// progress the user wants to see).
    pub fn inherit_output(mut self) -> Self {
        self.inherit_output = true;
        self
    }

    fn command(&self) -> Command {
        let mut c = Command::new(&self.program);
        c.args(&self.args);
        for (k, v) in &self.envs {
            c.env(k, v);
        }
        if let Some(dir) = &self.dir {
            c.current_dir(dir);
        }
        c.stdin(if self.input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
        if self.inherit_output {
            c.stdout(Stdio::inherit()).stderr(Stdio::inherit());
        } else {
            c.stdout(Stdio::piped()).stderr(Stdio::piped());
        }
        c
    }

    /// Runs to completion; fails with the command line and stderr unless it
    /// exits 0. Returns the captured output.
    pub fn run(&self) -> Result<Output> {
        let output = self.output_with_input().map_err(|e| {
            let hint = if e.kind() == std::io::ErrorKind::NotFound {
                " (not installed? `nodeforge doctor --install` installs the host tools)"
            } else {
                ""
            };
            anyhow::anyhow!("running `{self}`: {e}{hint}")
        })?;
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            let tail = tail_lines(&stderr, 40);
            bail!(
                "`{self}` failed ({}){}",
                output.status,
                if tail.is_empty() {
                    String::new()
                } else {
                    format!(":\n{tail}")
                }
            );
        }
        Ok(output)
    }

    fn output_with_input(&self) -> std::io::Result<Output> {
        let Some(input) = &self.input else {
            return self.command().output();
        };
        let mut child = self.command().spawn()?;
        let mut stdin = child.stdin.take().expect("stdin is piped");
        let data = input.clone();
        // On a thread: a program that writes much before reading all its
        // input would otherwise block on a full pipe.
        let writer = std::thread::spawn(move || {
            use std::io::Write;
            stdin.write_all(&data)
        });
        let out = child.wait_with_output()?;
        writer
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("writing stdin panicked")))?;
        Ok(out)
    }

    /// Starts a long-running program (a server a test talks to) with its
    /// output going to `log`; the caller owns the child and must end it.
    pub fn spawn_logged(&self, log: &Path) -> Result<Child> {
        let out =
            std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        let mut c = self.command();
        c.stdout(out).stderr(err);
        c.spawn().map_err(|e| {
            let hint = if e.kind() == std::io::ErrorKind::NotFound {
                " (not installed? `nodeforge doctor --install` installs the host tools)"
            } else {
                ""
            };
            anyhow::anyhow!("starting `{self}`: {e}{hint}")
        })
    }

    /// Runs and returns stdout as UTF-8 text.
    pub fn stdout_text(&self) -> Result<String> {
        let out = self.run()?;
        String::from_utf8(out.stdout).with_context(|| format!("output of `{self}` is not UTF-8"))
    }
}

impl fmt::Display for Cmd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (k, v) in &self.envs {
            write!(f, "{}={} ", k.to_string_lossy(), v.to_string_lossy())?;
        }
        write!(f, "{}", shell_quote(&self.program))?;
        for a in &self.args {
            write!(f, " {}", shell_quote(a))?;
        }
        Ok(())
    }
}

/// One quoting rule for the builder's and the agent's command lines.
pub(crate) fn shell_quote(s: &OsStr) -> String {
    nodeforge_firstboot::runner::shell_quote(&s.to_string_lossy()).into_owned()
}

/// The last `n` lines of `text`.
pub fn tail_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.trim_end().lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Finds `program` on PATH (and the sbin directories, which a non-root
/// PATH often lacks).
pub fn find_program(program: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(Into::into))
        .map(|dir| dir.join(program))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::assert_says;

    #[test]
    fn failure_names_command_and_stderr() {
        let err = Cmd::new("sh")
            .args(["-c", "echo boom >&2; exit 3"])
            .run()
            .unwrap_err();
        assert_says(
            err,
            &["sh -c 'echo boom >&2; exit 3'", "boom", "exit status: 3"],
        );
    }

    #[test]
    fn missing_program_points_at_doctor() {
        let err = Cmd::new("nodeforge-no-such-tool").run().unwrap_err();
        assert_says(err, &["nodeforge-no-such-tool", "doctor --install"]);
    }

    #[test]
    fn stdout_is_returned() {
        assert_eq!(Cmd::new("echo").arg("hi").stdout_text().unwrap(), "hi\n");
    }
}

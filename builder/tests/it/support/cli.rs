//! A throwaway project tree and the `nodeforge` binary run in it, in the
//! style of ripgrep's test harness: [`Project::ok`] and
//! [`Project::fails`] state the outcome a test expects and, on any other,
//! panic with the command line, its directory, the exit status, stdout
//! and stderr, so a failure needs no second run to understand.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use super::{copy_tree, read_text, write_file};

/// `hardware/pc.toml` of every [`Project::new`]: the smallest amd64 UEFI class.
pub const HARDWARE: &str =
    "arch = \"amd64\"\nfirmware = \"uefi\"\npackages = [\"linux-image-amd64\"]\n";

/// A project directory: a temp dir removed on drop, or (for
/// [`Project::repo`]) the repository itself, only read.
pub struct Project {
    root: PathBuf,
    _tmp: Option<tempfile::TempDir>,
}

impl Project {
    /// A temp project with `hardware/pc.toml` and an overlay `base`
    /// holding the template `etc/role.tera`.
    pub fn new() -> Project {
        let p = Project::empty();
        p.write("hardware/pc.toml", HARDWARE);
        p.write("overlays/base/etc/role.tera", "{{ role }}\n");
        p
    }

    /// A temp project with nothing in it.
    pub fn empty() -> Project {
        let tmp = tempfile::tempdir().expect("creating a temp project directory");
        Project {
            root: tmp.path().to_path_buf(),
            _tmp: Some(tmp),
        }
    }

    /// The repository itself (its profiles/, stacks/, …); tests only read it.
    pub fn repo() -> Project {
        Project {
            root: super::repo_root(),
            _tmp: None,
        }
    }

    /// A temp project seeded with copies of the repository's top-level
    /// folders `dirs` (e.g. profiles/ and stacks/), to change freely.
    pub fn copy_of_repo(dirs: &[&str]) -> Project {
        let p = Project::empty();
        for d in dirs {
            copy_tree(&super::repo_root().join(d), &p.path(d));
        }
        p
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    /// Writes `rel`, creating its directory; returns its path.
    pub fn write(&self, rel: &str, text: &str) -> PathBuf {
        let p = self.path(rel);
        write_file(&p, text);
        p
    }

    pub fn read(&self, rel: &str) -> String {
        read_text(&self.path(rel))
    }

    /// Rewrites `rel` with `f` applied to its text.
    pub fn edit(&self, rel: &str, f: impl FnOnce(String) -> String) {
        let text = f(self.read(rel));
        self.write(rel, &text);
    }

    /// Copies the repository's file `rel` to the same place here.
    pub fn copy_from_repo(&self, rel: &str) -> String {
        let text = read_text(&super::repo_root().join(rel));
        self.write(rel, &text);
        text
    }

    /// `nodeforge ARGS` in this directory, to adjust before it runs.
    pub fn cmd<S: AsRef<OsStr>>(&self, args: &[S]) -> Cli {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_nodeforge"));
        cmd.args(args).current_dir(&self.root);
        let line = std::iter::once("nodeforge".to_owned())
            .chain(
                args.iter()
                    .map(|a| a.as_ref().to_string_lossy().into_owned()),
            )
            .collect::<Vec<_>>()
            .join(" ");
        Cli {
            cmd,
            line,
            dir: self.root.clone(),
        }
    }

    /// Runs `nodeforge ARGS`; panics with the whole run unless it succeeds.
    pub fn ok<S: AsRef<OsStr>>(&self, args: &[S]) -> Run {
        self.cmd(args).ok()
    }

    /// Runs `nodeforge ARGS`; panics with the whole run if it succeeds.
    pub fn fails<S: AsRef<OsStr>>(&self, args: &[S]) -> Run {
        self.cmd(args).fails()
    }
}

/// `WORDS… FILES…` as arguments.
pub fn args_with_files(words: &[&str], files: &[PathBuf]) -> Vec<String> {
    words
        .iter()
        .map(|w| w.to_string())
        .chain(files.iter().map(|f| f.display().to_string()))
        .collect()
}

/// A `nodeforge` command line not yet run.
pub struct Cli {
    cmd: Command,
    line: String,
    dir: PathBuf,
}

impl Cli {
    pub fn env(mut self, key: &str, value: impl AsRef<OsStr>) -> Cli {
        self.line = format!("{key}={} {}", value.as_ref().to_string_lossy(), self.line);
        self.cmd.env(key, value);
        self
    }

    pub fn env_remove(mut self, key: &str) -> Cli {
        self.cmd.env_remove(key);
        self
    }

    /// Puts `dir` (fake tools) in front of PATH.
    pub fn path_prepend(self, dir: &Path) -> Cli {
        let path = std::env::var_os("PATH").unwrap_or_default();
        let mut paths = vec![dir.to_path_buf()];
        paths.extend(std::env::split_paths(&path));
        let joined = std::env::join_paths(paths).expect("PATH entries without ':'");
        self.env("PATH", joined)
    }

    /// Runs it, whatever the outcome.
    pub fn run(mut self) -> Run {
        let output = self
            .cmd
            .output()
            .unwrap_or_else(|e| panic!("running `{}` in {}: {e}", self.line, self.dir.display()));
        Run {
            line: self.line,
            dir: self.dir,
            output,
        }
    }

    pub fn ok(self) -> Run {
        let run = self.run();
        if !run.output.status.success() {
            panic!("expected success\n{}", run.report());
        }
        run
    }

    pub fn fails(self) -> Run {
        let run = self.run();
        if run.output.status.success() {
            panic!("expected a failure\n{}", run.report());
        }
        run
    }

    /// Starts it in the background, its stdout to read, stderr discarded.
    pub fn spawn_reading_stdout(mut self) -> Child {
        self.cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting `{}`: {e}", self.line))
    }

    /// Starts it in the background, its output discarded.
    pub fn spawn(mut self) -> Child {
        self.cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting `{}`: {e}", self.line))
    }
}

/// A finished run of the CLI.
pub struct Run {
    line: String,
    dir: PathBuf,
    pub output: Output,
}

impl Run {
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.output.stdout).into_owned()
    }

    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }

    pub fn success(&self) -> bool {
        self.output.status.success()
    }

    /// stdout parsed as one JSON document (`plan --json`).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.output.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e})\n{}", self.report()))
    }

    /// Panics with the whole run unless stderr contains each of `wants`.
    pub fn stderr_has(&self, wants: &[&str]) -> &Run {
        self.has("stderr", &self.stderr(), wants)
    }

    /// Panics with the whole run unless stdout contains each of `wants`.
    pub fn stdout_has(&self, wants: &[&str]) -> &Run {
        self.has("stdout", &self.stdout(), wants)
    }

    fn has(&self, stream: &str, text: &str, wants: &[&str]) -> &Run {
        let missing: Vec<&&str> = wants.iter().filter(|w| !text.contains(**w)).collect();
        if !missing.is_empty() {
            panic!("{missing:?} missing from {stream}\n{}", self.report());
        }
        self
    }

    /// The command line, its directory, exit status, stdout and stderr.
    pub fn report(&self) -> String {
        format!(
            "command: {}\nin: {}\nstatus: {}\n--- stdout\n{}\n--- stderr\n{}",
            self.line,
            self.dir.display(),
            self.output.status,
            self.stdout(),
            self.stderr()
        )
    }
}

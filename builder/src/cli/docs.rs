//! Shell completions and man pages, generated from the clap types the
//! parser itself uses, so they list exactly the commands and flags there
//! are (clap_complete, clap_mangen).

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::CommandFactory;

use super::args::Cli;
use crate::fsutil;

/// Writes `shell`'s completion script for `nodeforge` to `out`.
pub fn completions(shell: clap_complete::Shell, out: &mut dyn Write) {
    clap_complete::generate(shell, &mut Cli::command(), "nodeforge", out);
}

/// Writes `nodeforge.1` and one page per command users see
/// (`nodeforge-build.1`, `nodeforge-cache-prune.1` …) into `dir`, made if
/// missing; each page is written whole or not at all. The pages written.
pub fn man_pages(dir: &Path) -> Result<Vec<PathBuf>> {
    if dir.exists() && !dir.is_dir() {
        bail!(
            "{} is not a directory: give `nodeforge man` the directory to write the pages \
             into (e.g. /usr/local/share/man/man1)",
            dir.display()
        );
    }
    fsutil::create_dir_all(dir)?;
    let mut written = Vec::new();
    page(Cli::command(), dir, &mut written)?;
    Ok(written)
}

fn page(cmd: clap::Command, dir: &Path, written: &mut Vec<PathBuf>) -> Result<()> {
    let name = cmd.get_name().to_owned();
    let mut roff = Vec::new();
    clap_mangen::Man::new(cmd.clone())
        .render(&mut roff)
        .with_context(|| format!("rendering the man page of {name}"))?;
    let path = dir.join(format!("{name}.1"));
    fsutil::atomic_write(&path, &roff)?;
    written.push(path);
    // Hidden commands (netinstall runs on netbooted machines) get no page.
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let full = format!("{name}-{}", sub.get_name());
        page(sub.clone().name(full), dir, written)?;
    }
    Ok(())
}

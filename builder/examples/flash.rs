//! `nodeforge flash` until the CLI wires it in: same arguments, same code.
//! Also `flash make-bmap IMAGE OUT` to write an image's .bmap as a build does.

use clap::{Parser, Subcommand};
use nodeforge::flash::FlashArgs;
use std::path::PathBuf;

#[derive(Parser)]
#[command(args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    #[command(flatten)]
    flash: Option<FlashArgs>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Write IMAGE's block map to OUT.
    MakeBmap { image: PathBuf, out: PathBuf },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match (cli.cmd, cli.flash) {
        (Some(Cmd::MakeBmap { image, out }), _) => {
            let bmap = nodeforge::bmap::write_bmap(&image, &out)?;
            eprintln!(
                "{}: {} of {} bytes mapped",
                out.display(),
                bmap.mapped_bytes(),
                bmap.image_size
            );
            Ok(())
        }
        (None, Some(args)) => nodeforge::flash::run(&args),
        (None, None) => {
            anyhow::bail!("usage: flash IMAGE DEVICE [options] | flash make-bmap IMAGE OUT")
        }
    }
}

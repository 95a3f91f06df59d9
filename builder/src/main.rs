use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = nodeforge::cli::Cli::parse();
    match nodeforge::cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

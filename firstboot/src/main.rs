//! `nodeforge-firstboot [run] [--root DIR]` runs or resumes first boot;
//! `nodeforge-firstboot status [--json] [--root DIR]` shows how it went;
//! `nodeforge-firstboot identity-check [--root DIR]` runs before tailscaled
//! (see identity.rs).

use std::path::PathBuf;
use std::process::ExitCode;

use nodeforge_firstboot::agent::{Agent, Console};
use nodeforge_firstboot::notify::Notifier;
use nodeforge_firstboot::runner::SystemRunner;
use nodeforge_firstboot::status::Status;

const USAGE: &str = "usage: nodeforge-firstboot [run] [--root DIR]\n       nodeforge-firstboot status [--json] [--root DIR]\n       nodeforge-firstboot identity-check [--root DIR]";

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let mut cmd = None;
    let mut root = PathBuf::from("/");
    let mut json = false;
    while let Some(a) = args.next() {
        match a.as_str() {
            "run" | "status" | "identity-check" if cmd.is_none() => cmd = Some(a),
            "--json" => json = true,
            "--root" => match args.next() {
                Some(r) => root = PathBuf::from(r),
                None => return usage("--root needs a directory"),
            },
            "-h" | "--help" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            other => return usage(&format!("unexpected argument {other:?}")),
        }
    }
    match cmd.as_deref() {
        Some("status") => status(&root, json),
        Some("identity-check") if !json => identity_check(&root),
        _ if json => usage("--json goes with status"),
        _ => run(root),
    }
}

fn usage(msg: &str) -> ExitCode {
    eprintln!("nodeforge-firstboot: {msg}\n{USAGE}");
    ExitCode::from(2)
}

fn run(root: PathBuf) -> ExitCode {
    let mut agent = Agent::new(root, &SystemRunner, &Console);
    agent.notifier = Notifier::from_env();
    // Lets boot tests point at a stand-in without touching PATH.
    if let Ok(bin) = std::env::var("NODEFORGE_TAILSCALE") {
        agent.tailscale_bin = bin;
    }
    match agent.run() {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nodeforge-firstboot: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// Exits non-zero only when the tailnet state could not be moved aside:
/// tailscaled then does not start with another machine's identity.
fn identity_check(root: &std::path::Path) -> ExitCode {
    match nodeforge_firstboot::identity::check(root) {
        Ok(Some(c)) => {
            println!(
                "nodeforge-firstboot: this disk joined the tailnet on {} but runs on {}: its tailnet \
                 state is moved to {}; tailscaled starts logged out and the node joins anew with a \
                 new seed",
                c.joined_on.describe(),
                c.now_on.describe(),
                c.state_moved_to
            );
            ExitCode::SUCCESS
        }
        Ok(None) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nodeforge-firstboot: identity check: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn status(root: &std::path::Path, json: bool) -> ExitCode {
    match Status::read(root) {
        Ok(Some(s)) => {
            let backup = nodeforge_firstboot::backup::read(root);
            print!("{}", nodeforge_firstboot::backup::report(&s, &backup, json));
            ExitCode::SUCCESS
        }
        Ok(None) => {
            eprintln!("nodeforge-firstboot: no status yet (the agent has not run)");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("nodeforge-firstboot: {e:#}");
            ExitCode::from(1)
        }
    }
}
